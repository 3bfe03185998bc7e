"""SVHN: the MATLAB files train_32x32.mat and test_32x32.mat. SVHN writes digit 0 as label 10; it is
mapped back to 0."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from utils.data.raw import RawDataset, RawSplit, first_folder, has_files, reading

if TYPE_CHECKING:
    from utils.data.table import DatasetSpec


def find_svhn(path: Path) -> Path | None:
    return first_folder(path, has_files("train_32x32.mat", "test_32x32.mat"))


def _read_svhn_split(path: Path) -> RawSplit:
    import scipy.io

    with reading(path):
        mat = scipy.io.loadmat(path)
        images = np.transpose(mat["X"], (3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
        labels = mat["y"].reshape(-1).astype(np.int64)
    return RawSplit([images], np.where(labels == 10, 0, labels))  # SVHN writes digit 0 as 10


def read_svhn(folder: Path, spec: DatasetSpec) -> RawDataset:
    train = _read_svhn_split(folder / "train_32x32.mat")
    test = _read_svhn_split(folder / "test_32x32.mat")
    return RawDataset(train, test, [str(d) for d in range(10)])
