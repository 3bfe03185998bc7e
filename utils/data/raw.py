"""What every format reader returns (host arrays, before they go to the device), and what readers share:
finding the folder that holds the files, and turning any parse failure into a FormatError naming the file."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.errors import one_line


@dataclass
class RawSplit:
    """One split on the host: uint8 (or float in [0,1]) chunks of shape (n_i, C, H, W) and all labels."""

    chunks: list[np.ndarray]
    labels: np.ndarray


@dataclass
class RawDataset:
    train: RawSplit
    test: RawSplit
    class_names: list[str]


class FormatError(ValueError):
    """A file is there but cannot be read as the format says; becomes a one-line UserError."""


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn any failure while parsing `path` into a FormatError naming it. User files can be damaged in
    countless ways (truncated gzip, garbage pickle, wrong .mat version...); it wraps only code that lists,
    opens or parses files. The readers bound what they allocate by what a file holds, so running out of
    memory here means a header asked for more than the machine has: reported the same way."""
    try:
        yield
    except FormatError:
        raise
    except MemoryError:
        raise FormatError(f"cannot read {path}: it asks for more memory than this machine has (a damaged "
                          "header, or a file too large to load here)") from None
    except Exception as err:
        raise FormatError(f"cannot read {path}: {one_line(err)}") from err


def first_folder(path: Path, holds: Callable[[Path], bool]) -> Path | None:
    """`path` itself or one of its immediate sub-folders (archives often unpack into one) that `holds`."""
    if not path.is_dir():
        return None
    if holds(path):
        return path
    for child in sorted(path.iterdir()):
        if child.is_dir() and holds(child):
            return child
    return None


def has_files(*names: str) -> Callable[[Path], bool]:
    return lambda folder: all((folder / name).is_file() for name in names)
