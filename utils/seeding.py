"""Seeds and random streams: the run's seed, one seeding of the global generators at start-up, private
generators and seeds derived from (seed, purpose, ...) so that no draw depends on RNG history."""

from __future__ import annotations

import hashlib
import random
import time

import numpy as np
import torch


def resolve_seed(seed: int | None) -> int:
    """The paper code seeds from the clock; we do too when no seed is given, but log and save it."""
    if seed is None:
        seed = int(time.time() * 1000) % (2**31 - 1)
    return int(seed)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch once, at the start of a script (never inside library code)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A private random stream: batches and augmentations draw from these, never from the global RNG."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def derive_seed(seed: int, *parts) -> int:
    """A 63-bit seed that depends only on (seed, *parts): independent streams per use, no RNG history."""
    digest = hashlib.blake2b(repr((int(seed), *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
