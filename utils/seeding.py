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


_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def randint_on_host(high: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, list[int]]:
    """torch.randint(high, (size,), generator=generator) on the generator's device, and its values on the host.

    A random choice that decides which ops run must be read by the host. On CUDA that read must not wait for
    the work queued before the draw: a CUDA draw is a function of the generator's seed and offset alone, so a
    copy of the generator makes the very same draw on a side stream, the host waits for that one kernel, and
    the generator is moved past it. The values, and every later draw, are those of the plain call."""
    device = generator.device
    if device.type != "cuda":
        values = torch.randint(high, (size,), generator=generator, device=device)
        return values, values.tolist()
    twin = torch.Generator(device=device)
    twin.set_state(generator.get_state())
    side = _SIDE_STREAMS.setdefault(device, torch.cuda.Stream(device))
    host = torch.empty(size, dtype=torch.long, pin_memory=True)
    with torch.cuda.stream(side):
        values = torch.randint(high, (size,), generator=twin, device=device)
        host.copy_(values, non_blocking=True)
        done = torch.cuda.Event()
        done.record(side)
    generator.set_state(twin.get_state())
    main = torch.cuda.current_stream(device)
    main.wait_stream(side)  # the device-side values are used on the main stream
    values.record_stream(main)
    done.synchronize()  # this draw only, not the main stream's queue
    return values, host.tolist()
