"""pathmnist: MedMNIST's pathmnist.npz (HWC uint8 images, (N, 1) labels). Its val split is not used."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from utils.data.raw import RawDataset, RawSplit, first_folder, has_files, reading

if TYPE_CHECKING:
    from utils.data.table import DatasetSpec

_PATHMNIST_NAMES = (
    "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
    "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium",
)  # fmt: skip


def find_pathmnist(path: Path) -> Path | None:
    return first_folder(path, has_files("pathmnist.npz"))


def read_pathmnist(folder: Path, spec: DatasetSpec) -> RawDataset:
    path = folder / "pathmnist.npz"
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
