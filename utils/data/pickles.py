"""CIFAR10, CIFAR100 and downsampled ImageNet-32: pickled dicts of numpy arrays (rows of 3x32x32 bytes).

Unpickling is restricted to numpy arrays (not of objects) and plain containers, so a hostile file cannot
run code; and every length in the pickle stream is checked against the file's size before the unpickler
allocates it, so a damaged file is a one-line error, never a MemoryError.
ImageNet-32 labels are 1-based on disk and mapped to 0..999; whatever train_data_batch_<k> files exist
are used, in batch-number order.
"""

from __future__ import annotations

import mmap
import pickle
import pickletools
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utils.data.raw import FormatError, RawDataset, RawSplit, first_folder, has_files, reading
from utils.data.spec import DatasetSpec


class _ArrayUnpickler(pickle.Unpickler):
    """These batches hold only numpy arrays, lists, dicts and strings; any other global means a damaged
    or hostile file, and refusing it keeps a pickle from running arbitrary code."""

    _NUMPY_NAMES = frozenset({"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"})

    def find_class(self, module: str, name: str):
        allowed = (module.split(".")[0] == "numpy" and name in self._NUMPY_NAMES) or (
            module == "_codecs" and name == "encode"  # how protocol 2 writes bytes from python 3
        )
        if not allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not a data batch)")
        found = super().find_class(module, name)
        return _plain_dtype if name == "dtype" else found


def _plain_dtype(*args, **kwargs) -> np.dtype:
    """np.dtype, refusing object dtypes: an object array's size comes from the pickle's header alone (it
    would be allocated before its items are read), and these batches never hold one."""
    dtype = np.dtype(*args, **kwargs)
    if dtype.hasobject:
        raise pickle.UnpicklingError("refusing an array of Python objects (not a data batch)")
    return dtype


def _check_stream(stream, path: Path) -> None:
    """Walk the pickle's opcodes without building anything: each length-prefixed argument is read from the
    mapped file, so a length larger than what remains raises here instead of allocating it in the
    unpickler. (protocol 4's FRAME only announces a size: checked against the file's.)"""
    size = len(stream)
    for opcode, arg, position in pickletools.genops(stream):
        if opcode.name == "FRAME" and arg > size - position:
            raise FormatError(f"{path}: a pickle frame of {arg} bytes at byte {position} runs past the end of the "
                              "file")
        if opcode.name == "STOP":
            return


def _load_pickle(path: Path) -> dict:
    with reading(path), open(path, "rb") as f:
        if path.stat().st_size == 0:
            raise FormatError(f"{path} is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as stream:
            _check_stream(stream, path)
            stream.seek(0)
            # encoding="bytes": the CIFAR batches were written by python 2.
            loaded = _ArrayUnpickler(stream, encoding="bytes").load()
        if not isinstance(loaded, dict):
            raise FormatError(f"{path} holds a {type(loaded).__name__}, expected a dict")
        return {_text(key): value for key, value in loaded.items()}


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _field(batch: dict, key: str, path: Path):
    if key not in batch:
        raise FormatError(f"{path} has no '{key}' entry (keys: {sorted(batch)})")
    return batch[key]


def _read_pickled_split(paths: Sequence[Path], label_key: str, label_offset: int = 0) -> RawSplit:
    chunks, labels = [], []
    for path in paths:
        batch = _load_pickle(path)
        with reading(path):
            pixels = np.asarray(_field(batch, "data", path), dtype=np.uint8)
            if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32:
                raise FormatError(f"{path}: 'data' is {pixels.shape}, expected (N, 3072) rows of 3x32x32")
            chunks.append(pixels.reshape(-1, 3, 32, 32))
            labels.append(
                np.asarray(_field(batch, label_key, path), dtype=np.int64).reshape(-1) - label_offset
            )
    return RawSplit(chunks, np.concatenate(labels))


def _class_names_from_meta(path: Path, key: str, fallback: Sequence[str]) -> list[str]:
    """Class names from a meta pickle when it is there; the names are cosmetic, so a missing one is fine."""
    if not path.is_file():
        return list(fallback)
    return [_text(name) for name in _field(_load_pickle(path), key, path)]


# ---- CIFAR10, CIFAR100 ---------------------------------------------------------------------------

_CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def find_cifar10(path: Path) -> Path | None:
    return first_folder(path, has_files(*_CIFAR10_BATCHES, "test_batch"))


def read_cifar10(folder: Path, spec: DatasetSpec) -> RawDataset:
    train = _read_pickled_split([folder / name for name in _CIFAR10_BATCHES], "labels")
    test = _read_pickled_split([folder / "test_batch"], "labels")
    names = _class_names_from_meta(folder / "batches.meta", "label_names", _CIFAR10_NAMES)
    return RawDataset(train, test, names)


def find_cifar100(path: Path) -> Path | None:
    return first_folder(path, has_files("train", "test"))


def read_cifar100(folder: Path, spec: DatasetSpec) -> RawDataset:
    train = _read_pickled_split([folder / "train"], "fine_labels")
    test = _read_pickled_split([folder / "test"], "fine_labels")
    names = _class_names_from_meta(folder / "meta", "fine_label_names", [str(c) for c in range(100)])
    return RawDataset(train, test, names)


# ---- ImageNet-32 ---------------------------------------------------------------------------------

_IMAGENET32_TRAIN = re.compile(r"train_data_batch_(\d+)")


def _imagenet32_files(path: Path) -> tuple[list[Path], Path | None]:
    """Train batches and val_data in data_path or its sub-folders (Imagenet32_train/, Imagenet32_val/)."""
    if not path.is_dir():
        return [], None
    folders = [path, *sorted(child for child in path.iterdir() if child.is_dir())]
    train = [
        file for folder in folders for file in folder.iterdir() if _IMAGENET32_TRAIN.fullmatch(file.name)
    ]
    train = sorted((file for file in train if file.is_file()), key=lambda f: int(f.name.rsplit("_", 1)[1]))
    val = next((folder / "val_data" for folder in folders if (folder / "val_data").is_file()), None)
    return train, val


def find_imagenet32(path: Path) -> Path | None:
    train, val = _imagenet32_files(path)
    return path if train and val is not None else None


def read_imagenet32(folder: Path, spec: DatasetSpec) -> RawDataset:
    train_files, val_file = _imagenet32_files(folder)
    train = _read_pickled_split(train_files, "labels", label_offset=1)  # labels are 1-based on disk
    test = _read_pickled_split([val_file], "labels", label_offset=1)
    return RawDataset(train, test, [str(c) for c in range(spec.num_classes)])
