"""Digits: scikit-learn's bundled 8x8 digits (pixels 0..16 scaled to [0, 1]). It needs no files and ignores
data_path. The split is fixed: stratified, train_test_split(test_size=1/3, random_state=0); its mean/std
are those of the train split's pixels (population std).

Importing scikit-learn costs about 2 s, at the start of every command on Digits (sweeps run hundreds), so the
split is kept in the user's cache folder once made, one file per scikit-learn version; a cache that cannot be
read or written is skipped."""

from __future__ import annotations

import importlib.metadata
import io
import os
from functools import cache
from pathlib import Path

import numpy as np

from utils.data.raw import RawDataset, RawSplit
from utils.data.spec import DatasetSpec
from utils.errors import UserError
from utils.io import atomic_bytes_save

SPLIT_NAMES = ("train_x", "train_y", "test_x", "test_y")


def split_cache_file() -> Path | None:
    """Where the split is kept: $XDG_CACHE_HOME (else ~/.cache)/clom-distill/, named by scikit-learn's version."""
    try:
        version = importlib.metadata.version("scikit-learn")
    except importlib.metadata.PackageNotFoundError:
        return None
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "clom-distill" / f"digits_split_sklearn-{version}.npz"


def _read_cached(path: Path | None) -> tuple[np.ndarray, ...] | None:
    if path is None:
        return None
    try:
        with np.load(path) as saved:
            arrays = tuple(saved[name] for name in SPLIT_NAMES)
    except (OSError, ValueError, KeyError):  # none yet, unreadable, or not our file
        return None
    shapes = [(1198, 1, 8, 8), (1198,), (599, 1, 8, 8), (599,)]
    dtypes = [np.float32, np.int64, np.float32, np.int64]
    ours = all(a.shape == s and a.dtype == d for a, s, d in zip(arrays, shapes, dtypes))
    return arrays if ours else None


def _write_cached(path: Path | None, arrays: tuple[np.ndarray, ...]) -> None:
    if path is None:
        return
    buffer = io.BytesIO()
    np.savez(buffer, **dict(zip(SPLIT_NAMES, arrays)))
    try:
        atomic_bytes_save(buffer.getvalue(), path, overwrite=True)
    except (OSError, UserError):  # a read-only home or a full disk: the next run splits again
        pass


@cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed split: stratified, random_state=0, 1/3 test. Returns train_x, train_y, test_x, test_y."""
    cache_file = split_cache_file()
    arrays = _read_cached(cache_file)
    if arrays is None:
        arrays = _split_with_sklearn()
        _write_cached(cache_file, arrays)
    for array in arrays:
        array.setflags(write=False)  # cached: nobody may change it
    return arrays


def _split_with_sklearn() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # pixels 0..16 -> [0, 1], (N, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=1 / 3, stratify=labels, random_state=0
    )
    return train_x, train_y, test_x, test_y


def digits_stats() -> dict:
    """The table's mean/std for Digits, from its train split."""
    train_x = _digits_arrays()[0]
    return {"mean": (float(train_x.mean()),), "std": (float(train_x.std()),)}


def read_digits(_folder: Path, spec: DatasetSpec) -> RawDataset:
    train_x, train_y, test_x, test_y = _digits_arrays()
    names = [str(d) for d in range(10)]
    return RawDataset(RawSplit([train_x], train_y.copy()), RawSplit([test_x], test_y.copy()), names)
