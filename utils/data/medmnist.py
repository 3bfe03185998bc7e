"""pathmnist: MedMNIST's pathmnist.npz (HWC uint8 images, (N, 1) labels). Its val split is not used."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from utils.data.raw import FormatError, RawDataset, RawSplit, first_folder, has_files, reading
from utils.data.spec import DatasetSpec

_PATHMNIST_NAMES = (
    "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
    "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium",
)  # fmt: skip


def find_pathmnist(path: Path) -> Path | None:
    return first_folder(path, has_files("pathmnist.npz"))


def _check_npz_headers(path: Path, names: list[str]) -> None:
    """numpy allocates an array from its .npy header before reading the data: check every header's size
    against the bytes the archive says it holds first, so a damaged header is an error, not a huge
    allocation."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: info for info in archive.infolist()}
        for name in names:
            info = members.get(f"{name}.npy")
            if info is None:
                raise FormatError(f"{path} has no '{name}' array (arrays: {sorted(members)})")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(member)
                if dtype.hasobject:
                    raise FormatError(f"{path}: '{name}' is an array of Python objects, not images or labels")
                if math.prod(shape) * dtype.itemsize > info.file_size:
                    raise FormatError(f"{path}: the header of '{name}' says {shape} {dtype}, more than the "
                                      f"{info.file_size} bytes stored (damaged or truncated)")


def read_pathmnist(folder: Path, spec: DatasetSpec) -> RawDataset:
    path = folder / "pathmnist.npz"
    with reading(path):
        _check_npz_headers(path, [f"{split}_{kind}" for split in ("train", "test") for kind in ("images", "labels")])
    with reading(path), np.load(path, allow_pickle=False) as npz:
        # (N, 28, 28, 3) -> (N, 3, 28, 28); labels (N, 1). MedMNIST's val split is not used.
        splits = {
            split: RawSplit(
                [np.transpose(npz[f"{split}_images"], (0, 3, 1, 2))],
                npz[f"{split}_labels"].reshape(-1).astype(np.int64),
            )
            for split in ("train", "test")
        }
    return RawDataset(splits["train"], splits["test"], list(_PATHMNIST_NAMES))
