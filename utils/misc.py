"""Small shared helpers: the user-facing error types and their one-line messages, seeding, device choice,
logging."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import sys
import time

import numpy as np
import torch


class UserError(Exception):
    """Bad input from the user. Scripts print its message as one line and exit non-zero."""


class SettingError(UserError):
    """A bad value of one named setting. Library code names the setting (e.g. 'ipc'); a script that knows
    which command-line flag sets it re-raises the message with the flag's name."""

    def __init__(self, setting: str, problem: str):
        super().__init__(f"{setting} {problem}")
        self.setting, self.problem = setting, problem


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one line for a user-facing message: `TypeName: message`, every run of whitespace
    (newlines included) collapsed to one space, cut to `limit` characters."""
    text = " ".join(str(err).split())
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def resolve_device(gpu: str | int | None = 0) -> torch.device:
    """CUDA card `gpu` when CUDA is present, else the CPU. `gpu` may be an int, '0', 'cpu' or 'cuda:1'."""
    text = str(gpu if gpu is not None else 0).strip().lower()
    if text == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if text.startswith("cuda"):
        text = text.split(":", 1)[1] if ":" in text else "0"
    first = text.split(",")[0]
    if not first.isdigit():
        raise UserError(f"--gpu must be a card number such as 0 (or 'cpu'), got {gpu!r}")
    index = int(first)
    if index >= torch.cuda.device_count():
        raise UserError(f"--gpu {index}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device("cuda", index)


def setup_logging(log_file: str | os.PathLike | None = None, quiet: bool = False) -> logging.Logger:
    """Log to stderr and, when given, to a file beside the outputs (appending, so reruns are kept)."""
    logger = logging.getLogger("clom")
    logger.setLevel(logging.INFO)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    if not quiet:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(fmt)
        logger.addHandler(stream)
    if log_file is not None:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            file_handler = _LogFile(log_file)
        except OSError as err:
            raise UserError(f"cannot write the log file {log_file}: {err.strerror or err}") from None
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    logger.propagate = False
    return logger


class _LogFile(logging.FileHandler):
    """A log file that, when the disk refuses a line (full, file-size limit), says so once on stderr and
    stops writing to it, instead of logging's traceback per line; the run itself goes on (or stops with its
    own one-line error)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        err = sys.exc_info()[1]
        sys.stderr.write(f"warning: cannot write the log file {self.baseFilename} "
                         f"({getattr(err, 'strerror', None) or err}); logging to the terminal only\n")
        logging.getLogger("clom").removeHandler(self)
        self.close()


def get_logger() -> logging.Logger:
    return logging.getLogger("clom")


def progress_disabled() -> bool:
    """tqdm bars only on a terminal, so logs of sweeps stay grep-able."""
    return not sys.stderr.isatty()


def parse_int_list(text: str, what: str) -> list[int]:
    """'50,100' -> [50, 100]; '' -> []."""
    try:
        return [int(part) for part in str(text).replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise UserError(f"{what} must be comma-separated whole numbers such as '50,100', got {text!r}") from None
