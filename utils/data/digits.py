"""Digits: scikit-learn's bundled 8x8 digits (pixels 0..16 scaled to [0, 1]). It needs no files and ignores
data_path. The split is fixed: stratified, train_test_split(test_size=1/3, random_state=0); its mean/std
are those of the train split's pixels (population std)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from utils.data.raw import RawDataset, RawSplit
from utils.data.spec import DatasetSpec


@cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed split: stratified, random_state=0, 1/3 test. Returns train_x, train_y, test_x, test_y."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # pixels 0..16 -> [0, 1], (N, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=1 / 3, stratify=labels, random_state=0
    )
    for array in (train_x, train_y, test_x, test_y):
        array.setflags(write=False)  # cached: nobody may change it
    return train_x, train_y, test_x, test_y


def digits_stats() -> dict:
    """The table's mean/std for Digits, from its train split."""
    train_x = _digits_arrays()[0]
    return {"mean": (float(train_x.mean()),), "std": (float(train_x.std()),)}


def read_digits(_folder: Path, spec: DatasetSpec) -> RawDataset:
    train_x, train_y, test_x, test_y = _digits_arrays()
    names = [str(d) for d in range(10)]
    return RawDataset(RawSplit([train_x], train_y.copy()), RawSplit([test_x], test_y.copy()), names)
