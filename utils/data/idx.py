"""MNIST and FashionMNIST: idx files (optionally gzipped), directly in data_path, in raw/ or in
torchvision's <Name>/raw/."""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from utils.data.raw import FormatError, RawDataset, RawSplit, reading
from utils.data.spec import DatasetSpec

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_idx_folder(torchvision_folder: str) -> Callable[[Path], Path | None]:
    """The files directly in data_path, in data_path/raw, or in torchvision's data_path/<Name>/raw."""

    def find(path: Path) -> Path | None:
        for folder in (path, path / "raw", path / torchvision_folder / "raw"):
            if all(_idx_file(folder, name) for pair in IDX_FILES.values() for name in pair):
                return folder
        return None

    return find


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes: 0, 0, 0x08, ndim, then ndim big-endian uint32 sizes, then the data.
    The sizes in the header are checked against the file before anything that large is read or allocated
    (gzip: the data is read in slices, so a header cannot make it allocate more than the file holds)."""
    with reading(path):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:3] != b"\x00\x00\x08":
                raise FormatError(f"{path} is not an idx file of unsigned bytes")
            ndim = head[3]
            header = f.read(4 * ndim)
            if len(header) != 4 * ndim:
                raise FormatError(f"{path} is truncated inside its header")
            dims = struct.unpack(f">{ndim}I", header)
            count = math.prod(dims)
            if path.suffix != ".gz" and path.stat().st_size != 4 + 4 * ndim + count:
                raise FormatError(f"{path} holds {path.stat().st_size - 4 - 4 * ndim} values but its header says "
                                  f"{dims} (truncated?)")
            raw = _read_at_most(f, count + 1)
        if len(raw) != count:
            raise FormatError(f"{path} holds {len(raw)}{'+' if len(raw) > count else ''} values but its header says "
                              f"{dims} (truncated?)")
        return np.frombuffer(raw, dtype=np.uint8).reshape(dims)


def _read_at_most(f, limit: int, slice_bytes: int = 64 << 20) -> bytes:
    """Up to `limit` bytes, read in slices: memory grows with what the file really holds."""
    parts, total = [], 0
    while total < limit:
        part = f.read(min(slice_bytes, limit - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def idx_reader(class_names: Sequence[str]) -> Callable[[Path, DatasetSpec], RawDataset]:
    def read(folder: Path, spec: DatasetSpec) -> RawDataset:
        splits = {}
        for split, (images_name, labels_name) in IDX_FILES.items():
            images = read_idx(_idx_file(folder, images_name))
            labels = read_idx(_idx_file(folder, labels_name))
            splits[split] = RawSplit([images[:, None]], labels)  # (N, 28, 28) -> (N, 1, 28, 28)
        return RawDataset(splits["train"], splits["test"], list(class_names))

    return read


_FASHION_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

read_mnist = idx_reader([str(d) for d in range(10)])
read_fashion_mnist = idx_reader(_FASHION_NAMES)
