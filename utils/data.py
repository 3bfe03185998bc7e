"""The data sets of SPEC §7, read from their real on-disk formats into tensors resident on the device.

Each split becomes ONE tensor on the device plus a class-major index, so a batch or a class sample is an
index draw with a seeded ``torch.Generator``: no DataLoader, no PIL, no host round trip in a training loop.
Small splits are stored as float32, normalized once at load time; splits that would exceed
``FLOAT_STORAGE_LIMIT_BYTES`` as float (tinyimagenet, ImageNet-32, ImageNette, ImageFruit) stay uint8 and
are converted (and normalized) per batch by ``ImageSet.images``.

Fixed choices worth knowing:
- ImageNette / ImageFruit / tinyimagenet images are decoded once at load time: converted to RGB, the
  shorter side resized to the target size (bilinear), then center-cropped to a square (224 for the
  ImageFolder sets, 64 for tinyimagenet, whose images already are 64x64 and are left untouched).
- Digits is scikit-learn's bundled 8x8 digits (pixels 0..16 scaled to [0, 1]) split once, stratified,
  ``train_test_split(test_size=1/3, random_state=0)``; its mean/std are those of the train split's pixels
  (population std). It needs no files and ignores ``data_path``.
- SVHN label 10 means digit 0; ImageNet-32 labels are 1-based on disk. Both are mapped to 0..K-1.
- For a split whose file layout a user supplies (ImageFolder, tinyimagenet), the class order is sorted
  folder names (or ``wnids.txt``), and the number of classes must match the table.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import pickle
import re
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import numpy as np
import torch

from networks.foundation import IMAGENET_MEAN, IMAGENET_STD
from utils.misc import UserError, get_logger, one_line

# A split larger than this as float32 is kept as uint8 on the device (4x smaller) and normalized per batch.
FLOAT_STORAGE_LIMIT_BYTES = 1 << 30
# Host-to-device copies go in slices of about this many bytes, so loading never holds a second full copy.
_COPY_SLICE_BYTES = 64 << 20
# torchvision's downloader sets no timeout; a firewalled network would otherwise hang forever.
DOWNLOAD_SOCKET_TIMEOUT_S = 60.0

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    channel: int
    im_size: tuple[int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]  # Digits: computed from its train split
    expected_files: str  # human text for error messages
    downloadable: bool  # torchvision can download it


@dataclass
class _RawSplit:
    """One split on the host: uint8 (or float in [0,1]) chunks of shape (n_i, C, H, W) and all labels."""

    chunks: list[np.ndarray]
    labels: np.ndarray


@dataclass
class _RawDataset:
    train: _RawSplit
    test: _RawSplit
    class_names: list[str]


@dataclass(frozen=True)
class _Format:
    """How one data set sits on disk. `find` returns the folder holding its files, or None when absent."""

    find: Callable[[Path], Path | None] | None  # None: needs no files (Digits)
    read: Callable[[Path, DatasetSpec], _RawDataset]
    torchvision_class: str | None = None  # the torchvision.datasets class that can download it
    download_calls: tuple[dict, ...] = ({},)  # constructor kwargs, one call per download
    stats_from_data: Callable[[], dict] | None = None  # fills mean/std when the table cannot


class _FormatError(ValueError):
    """A file is there but cannot be read as the format says; becomes a one-line UserError."""


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn any failure while parsing `path` into a _FormatError naming it. User files can be damaged in
    countless ways (truncated gzip, garbage pickle, wrong .mat version...), so anything but running out
    of memory counts as a bad file here; it wraps only code that lists, opens or parses files."""
    try:
        yield
    except (_FormatError, MemoryError):
        raise
    except Exception as err:
        raise _FormatError(f"cannot read {path}: {one_line(err)}") from err


# --------------------------------------------------------------------------------------------------
# Readers, one per on-disk format
# --------------------------------------------------------------------------------------------------


def _first_folder(path: Path, holds: Callable[[Path], bool]) -> Path | None:
    """`path` itself or one of its immediate sub-folders (archives often unpack into one) that `holds`."""
    if not path.is_dir():
        return None
    if holds(path):
        return path
    for child in sorted(path.iterdir()):
        if child.is_dir() and holds(child):
            return child
    return None


def _has_files(*names: str) -> Callable[[Path], bool]:
    return lambda folder: all((folder / name).is_file() for name in names)


# ---- MNIST, FashionMNIST: idx files -------------------------------------------------------------

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_idx_folder(torchvision_folder: str) -> Callable[[Path], Path | None]:
    """The files directly in data_path, in data_path/raw, or in torchvision's data_path/<Name>/raw."""

    def find(path: Path) -> Path | None:
        for folder in (path, path / "raw", path / torchvision_folder / "raw"):
            if all(_idx_file(folder, name) for pair in _IDX_FILES.values() for name in pair):
                return folder
        return None

    return find


def _read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes: 0, 0, 0x08, ndim, then ndim big-endian uint32 sizes, then the data."""
    with _reading(path):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
        if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
            raise _FormatError(f"{path} is not an idx file of unsigned bytes")
        ndim = raw[3]
        header_end = 4 + 4 * ndim
        dims = struct.unpack(f">{ndim}I", raw[4:header_end])
        values = np.frombuffer(raw, dtype=np.uint8, offset=header_end)
        if values.size != math.prod(dims):
            raise _FormatError(f"{path} holds {values.size} values but its header says {dims} (truncated?)")
        return values.reshape(dims)


def _idx_reader(class_names: Sequence[str]) -> Callable[[Path, DatasetSpec], _RawDataset]:
    def read(folder: Path, spec: DatasetSpec) -> _RawDataset:
        splits = {}
        for split, (images_name, labels_name) in _IDX_FILES.items():
            images = _read_idx(_idx_file(folder, images_name))
            labels = _read_idx(_idx_file(folder, labels_name))
            splits[split] = _RawSplit([images[:, None]], labels)  # (N, 28, 28) -> (N, 1, 28, 28)
        return _RawDataset(splits["train"], splits["test"], list(class_names))

    return read


# ---- SVHN: MATLAB files ---------------------------------------------------------------------------


def _read_svhn_split(path: Path) -> _RawSplit:
    import scipy.io

    with _reading(path):
        mat = scipy.io.loadmat(path)
        images = np.transpose(mat["X"], (3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
        labels = mat["y"].reshape(-1).astype(np.int64)
    return _RawSplit([images], np.where(labels == 10, 0, labels))  # SVHN writes digit 0 as 10


def _read_svhn(folder: Path, spec: DatasetSpec) -> _RawDataset:
    train = _read_svhn_split(folder / "train_32x32.mat")
    test = _read_svhn_split(folder / "test_32x32.mat")
    return _RawDataset(train, test, [str(d) for d in range(10)])


# ---- CIFAR10, CIFAR100, ImageNet-32: pickled dicts of numpy arrays --------------------------------


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
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict:
    with _reading(path), open(path, "rb") as f:
        # encoding="bytes": the CIFAR batches were written by python 2.
        loaded = _ArrayUnpickler(f, encoding="bytes").load()
        if not isinstance(loaded, dict):
            raise _FormatError(f"{path} holds a {type(loaded).__name__}, expected a dict")
        return {_text(key): value for key, value in loaded.items()}


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _field(batch: dict, key: str, path: Path):
    if key not in batch:
        raise _FormatError(f"{path} has no '{key}' entry (keys: {sorted(batch)})")
    return batch[key]


def _read_pickled_split(paths: Sequence[Path], label_key: str, label_offset: int = 0) -> _RawSplit:
    chunks, labels = [], []
    for path in paths:
        batch = _load_pickle(path)
        with _reading(path):
            pixels = np.asarray(_field(batch, "data", path), dtype=np.uint8)
            if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32:
                raise _FormatError(f"{path}: 'data' is {pixels.shape}, expected (N, 3072) rows of 3x32x32")
            chunks.append(pixels.reshape(-1, 3, 32, 32))
            labels.append(
                np.asarray(_field(batch, label_key, path), dtype=np.int64).reshape(-1) - label_offset
            )
    return _RawSplit(chunks, np.concatenate(labels))


def _class_names_from_meta(path: Path, key: str, fallback: Sequence[str]) -> list[str]:
    """Class names from a meta pickle when it is there; the names are cosmetic, so a missing one is fine."""
    if not path.is_file():
        return list(fallback)
    return [_text(name) for name in _field(_load_pickle(path), key, path)]


_CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _read_cifar10(folder: Path, spec: DatasetSpec) -> _RawDataset:
    train = _read_pickled_split([folder / name for name in _CIFAR10_BATCHES], "labels")
    test = _read_pickled_split([folder / "test_batch"], "labels")
    names = _class_names_from_meta(folder / "batches.meta", "label_names", _CIFAR10_NAMES)
    return _RawDataset(train, test, names)


def _read_cifar100(folder: Path, spec: DatasetSpec) -> _RawDataset:
    train = _read_pickled_split([folder / "train"], "fine_labels")
    test = _read_pickled_split([folder / "test"], "fine_labels")
    names = _class_names_from_meta(folder / "meta", "fine_label_names", [str(c) for c in range(100)])
    return _RawDataset(train, test, names)


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


def _find_imagenet32(path: Path) -> Path | None:
    train, val = _imagenet32_files(path)
    return path if train and val is not None else None


def _read_imagenet32(folder: Path, spec: DatasetSpec) -> _RawDataset:
    train_files, val_file = _imagenet32_files(folder)
    train = _read_pickled_split(train_files, "labels", label_offset=1)  # labels are 1-based on disk
    test = _read_pickled_split([val_file], "labels", label_offset=1)
    return _RawDataset(train, test, [str(c) for c in range(spec.num_classes)])


# ---- pathmnist: MedMNIST npz ------------------------------------------------------------------------

_PATHMNIST_NAMES = (
    "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
    "normal colon mucosa", "cancer-associated stroma", "colorectal adenocarcinoma epithelium",
)  # fmt: skip


def _read_pathmnist(folder: Path, spec: DatasetSpec) -> _RawDataset:
    path = folder / "pathmnist.npz"
    with _reading(path), np.load(path, allow_pickle=False) as npz:
        # (N, 28, 28, 3) -> (N, 3, 28, 28); labels (N, 1). MedMNIST's val split is not used.
        splits = {
            split: _RawSplit(
                [np.transpose(npz[f"{split}_images"], (0, 3, 1, 2))],
                npz[f"{split}_labels"].reshape(-1).astype(np.int64),
            )
            for split in ("train", "test")
        }
    return _RawDataset(splits["train"], splits["test"], list(_PATHMNIST_NAMES))


# ---- Image files: tinyimagenet, ImageNette, ImageFruit --------------------------------------------


def _resize_and_center_crop(image, size: int):
    """Shorter side to `size` (bilinear), then the central size x size square (torchvision's
    Resize(size) + CenterCrop(size) arithmetic)."""
    from PIL import Image

    width, height = image.size
    if (width, height) == (size, size):
        return image
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    image = image.resize(new_size, Image.BILINEAR)
    left = int(round((new_size[0] - size) / 2.0))
    top = int(round((new_size[1] - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _decode_images(files: Sequence[Path], size: int) -> np.ndarray:
    """All files decoded once into one (N, 3, size, size) uint8 array (PIL releases the GIL: threads help)."""
    from PIL import Image

    out = np.empty((len(files), 3, size, size), dtype=np.uint8)

    def decode(i: int) -> None:
        with _reading(files[i]), Image.open(files[i]) as image:
            square = _resize_and_center_crop(image.convert("RGB"), size)
            out[i] = np.asarray(square).transpose(2, 0, 1)

    pool = ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1))
    try:
        list(pool.map(decode, range(len(files))))
    finally:
        pool.shutdown(cancel_futures=True)  # on a bad file, stop instead of decoding the rest first
    return out


def _image_files(folder: Path) -> list[Path]:
    files = sorted(
        file
        for file in folder.iterdir()
        if file.suffix.lower() in _IMAGE_EXTENSIONS and not file.name.startswith(".") and file.is_file()
    )
    if not files:
        raise _FormatError(f"no images in {folder}")
    return files


def _visible_subfolders(folder: Path) -> list[str]:
    return sorted(
        child.name for child in folder.iterdir() if child.is_dir() and not child.name.startswith(".")
    )


def _labelled_files(
    root: Path,
    classes: Sequence[str],
    class_folder: Callable[[Path], Path] = lambda d: d,
) -> tuple[list[Path], list[int]]:
    """Image files of root/<class>/ for every class, with the class's position in `classes` as label."""
    files, labels = [], []
    for label, name in enumerate(classes):
        found = _image_files(class_folder(root / name))
        files += found
        labels += [label] * len(found)
    return files, labels


def _decoded_split(files: Sequence[Path], labels: Sequence[int], size: int) -> _RawSplit:
    return _RawSplit([_decode_images(files, size)], np.asarray(labels, dtype=np.int64))


def _is_image_folder_root(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "val").is_dir()


def _read_image_folder(folder: Path, spec: DatasetSpec) -> _RawDataset:
    """ImageFolder tree: train/<class>/*, val/<class>/*, classes in sorted folder order."""
    with _reading(folder):
        classes = _visible_subfolders(folder / "train")
        val_classes = _visible_subfolders(folder / "val")
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise _FormatError(f"{folder / 'val'} has classes missing from train/: {unknown[:5]}")
        train = _decoded_split(*_labelled_files(folder / "train", classes), spec.im_size[0])
        val_files, val_positions = _labelled_files(folder / "val", val_classes)
        val_labels = [classes.index(val_classes[position]) for position in val_positions]
        test = _decoded_split(val_files, val_labels, spec.im_size[0])
    return _RawDataset(train, test, classes)


def _is_tinyimagenet_root(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "val" / "val_annotations.txt").is_file()


def _tiny_class_folder(class_root: Path) -> Path:
    # The archive keeps each class's images in train/<wnid>/images/; accept them one level up too.
    return class_root / "images" if (class_root / "images").is_dir() else class_root


def _tiny_val_files(folder: Path, label_of: dict[str, int]) -> tuple[list[Path], list[int]]:
    """val/val_annotations.txt: one tab-separated '<file> <wnid> <box...>' line per image in val/images/."""
    annotations = folder / "val" / "val_annotations.txt"
    files, labels = [], []
    for line_number, line in enumerate(annotations.read_text().splitlines(), 1):
        parts = line.split("\t")
        if not line.strip():
            continue
        if len(parts) < 2 or parts[1] not in label_of:
            raise _FormatError(f"{annotations} line {line_number}: expected '<file>\\t<known wnid>\\t...'")
        files.append(folder / "val" / "images" / parts[0])
        labels.append(label_of[parts[1]])
    return files, labels


def _read_tinyimagenet(folder: Path, spec: DatasetSpec) -> _RawDataset:
    with _reading(folder):
        wnids_file = folder / "wnids.txt"
        if wnids_file.is_file():
            wnids = [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
        else:
            wnids = _visible_subfolders(folder / "train")
        size = spec.im_size[0]
        train = _decoded_split(*_labelled_files(folder / "train", wnids, _tiny_class_folder), size)
        test = _decoded_split(*_tiny_val_files(folder, {wnid: i for i, wnid in enumerate(wnids)}), size)
    return _RawDataset(train, test, wnids)


# ---- Digits: scikit-learn's bundled 8x8 digits -----------------------------------------------------


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


def _digits_stats() -> dict:
    train_x = _digits_arrays()[0]
    return {"mean": (float(train_x.mean()),), "std": (float(train_x.std()),)}


def _read_digits(_folder: Path, spec: DatasetSpec) -> _RawDataset:
    train_x, train_y, test_x, test_y = _digits_arrays()
    names = [str(d) for d in range(10)]
    return _RawDataset(_RawSplit([train_x], train_y.copy()), _RawSplit([test_x], test_y.copy()), names)


# --------------------------------------------------------------------------------------------------
# The table: spec + on-disk format, one row per data set
# --------------------------------------------------------------------------------------------------

_DIGIT_NAMES = [str(d) for d in range(10)]
_FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_EXPECTED = (
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte (or .gz), directly, in raw/ or in {name}/raw/"
)
_IMAGE_FOLDER_EXPECTED = "an ImageFolder tree train/<class>/*.JPEG and val/<class>/*.JPEG"


def _row(name, channel, size, classes, mean, std, expected, fmt: _Format) -> tuple[DatasetSpec, _Format]:
    spec = DatasetSpec(
        name,
        channel,
        (size, size),
        classes,
        tuple(mean),
        tuple(std),
        expected,
        downloadable=fmt.torchvision_class is not None,
    )
    return spec, fmt


_TABLE: dict[str, tuple[DatasetSpec, _Format]] = {
    row[0].name: row
    for row in (
        _row("MNIST", 1, 28, 10, (0.1307,), (0.3081,), _IDX_EXPECTED.format(name="MNIST"),
             _Format(_find_idx_folder("MNIST"), _idx_reader(_DIGIT_NAMES), "MNIST")),
        _row("FashionMNIST", 1, 28, 10, (0.2861,), (0.3530,), _IDX_EXPECTED.format(name="FashionMNIST"),
             _Format(_find_idx_folder("FashionMNIST"), _idx_reader(_FASHION_NAMES), "FashionMNIST")),
        _row("SVHN", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
             "train_32x32.mat and test_32x32.mat",
             _Format(lambda p: _first_folder(p, _has_files("train_32x32.mat", "test_32x32.mat")), _read_svhn,
                     "SVHN", ({"split": "train"}, {"split": "test"}))),
        _row("CIFAR10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
             "cifar-10-batches-py/data_batch_1..5 and test_batch",
             _Format(lambda p: _first_folder(p, _has_files(*_CIFAR10_BATCHES, "test_batch")), _read_cifar10,
                     "CIFAR10")),
        _row("CIFAR100", 3, 32, 100, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762),
             "cifar-100-python/train and test",
             _Format(lambda p: _first_folder(p, _has_files("train", "test")), _read_cifar100, "CIFAR100")),
        _row("tinyimagenet", 3, 64, 200, IMAGENET_MEAN, IMAGENET_STD,
             "train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt (wnids.txt optional)",
             _Format(lambda p: _first_folder(p, _is_tinyimagenet_root), _read_tinyimagenet)),
        _row("ImageNet-32", 3, 32, 1000, IMAGENET_MEAN, IMAGENET_STD,
             "downsampled-ImageNet pickles train_data_batch_1..10 (at least one) and val_data",
             _Format(_find_imagenet32, _read_imagenet32)),
        _row("pathmnist", 3, 28, 9, (0.7406, 0.5330, 0.7059), (0.1237, 0.1767, 0.1244),
             "pathmnist.npz (MedMNIST)",
             _Format(lambda p: _first_folder(p, _has_files("pathmnist.npz")), _read_pathmnist)),
        _row("ImageNette", 3, 224, 10, IMAGENET_MEAN, IMAGENET_STD, _IMAGE_FOLDER_EXPECTED,
             _Format(lambda p: _first_folder(p, _is_image_folder_root), _read_image_folder)),
        _row("ImageFruit", 3, 224, 10, IMAGENET_MEAN, IMAGENET_STD, _IMAGE_FOLDER_EXPECTED,
             _Format(lambda p: _first_folder(p, _is_image_folder_root), _read_image_folder)),
        _row("Digits", 1, 8, 10, (), (), "nothing (bundled with scikit-learn)",
             _Format(None, _read_digits, stats_from_data=_digits_stats)),
    )
}  # fmt: skip


def dataset_names() -> list[str]:
    return list(_TABLE)


def _table_row(name: str) -> tuple[DatasetSpec, _Format]:
    if name in _TABLE:
        return _TABLE[name]
    by_lower = {known.lower(): known for known in _TABLE}
    if str(name).lower() in by_lower:
        return _TABLE[by_lower[str(name).lower()]]
    raise UserError(f"unknown data set {name!r}: choose one of {', '.join(_TABLE)}")


def get_dataset_spec(name: str) -> DatasetSpec:
    """The table's row for `name` (case-insensitive); UserError listing the known names when unknown."""
    spec, fmt = _table_row(name)
    if fmt.stats_from_data is not None:
        spec = replace(spec, **fmt.stats_from_data())
    return spec


def default_data_path(name: str) -> str:
    return os.path.join("data", _table_row(name)[0].name)


# --------------------------------------------------------------------------------------------------
# Device-resident split
# --------------------------------------------------------------------------------------------------


def _random_keys(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Uniform keys drawn on the generator's own device (torch requires it), then moved to the data."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _random_permutation(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if generator is None:
        return torch.randperm(n, device=device)
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


class ImageSet:
    """One split, resident on one device.

    Stored either as float32 (already normalized when `normalized`) or, for large sets, as uint8 pixels
    converted per batch; `images()` hides the difference and always returns float32 (n, C, H, W) ready
    for a network. A class-major index is built once, so class samples are gathers, never scans.
    """

    def __init__(
        self,
        data: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        normalized: bool,
    ):
        if data.dtype not in (torch.float32, torch.uint8):
            raise ValueError(f"ImageSet stores float32 or uint8 images, got {data.dtype}")
        self._data = data
        self.labels = labels.to(device=data.device, dtype=torch.long)
        self.num_classes = int(num_classes)
        self.mean = mean.to(device=data.device, dtype=torch.float32)
        self.std = std.to(device=data.device, dtype=torch.float32)
        self.normalized = bool(normalized)
        self._build_class_index()

    def _build_class_index(self) -> None:
        labels, device = self.labels, self.labels.device
        counts = torch.bincount(labels, minlength=self.num_classes)
        starts = torch.cumsum(counts, 0) - counts
        self._counts = counts
        self._count_list = counts.tolist()  # python copies, so per-class calls never sync with the device
        self._start_list = starts.tolist()
        self._class_major = torch.argsort(labels, stable=True)  # class 0's indices, then class 1's, ...
        # Padded (num_classes, max_count) index matrix: row c = class c's indices, then filler; `_valid`
        # marks the real entries. It lets sample_per_class draw for every class in one call.
        max_count = max(self._count_list, default=0)
        sorted_labels = labels[self._class_major]
        position = torch.arange(len(labels), device=device) - starts[sorted_labels]
        self._padded = torch.zeros((self.num_classes, max_count), dtype=torch.long, device=device)
        self._padded[sorted_labels, position] = self._class_major
        self._valid = torch.arange(max_count, device=device) < counts[:, None]

    # ---- basic facts ----

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def device(self) -> torch.device:
        return self._data.device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self._data.shape[1:])

    @property
    def stored_as_uint8(self) -> bool:
        return self._data.dtype == torch.uint8

    def class_counts(self) -> torch.Tensor:
        return self._counts

    def class_indices(self, c: int) -> torch.Tensor:
        """Indices of class c's images (ascending), on the device. A view: do not modify it."""
        c = int(c)
        if not 0 <= c < self.num_classes:
            raise IndexError(f"class {c} out of range 0..{self.num_classes - 1}")
        start = self._start_list[c]
        return self._class_major[start : start + self._count_list[c]]

    # ---- images ----

    def images(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """float32 (n, C, H, W) ready for a network; `idx` None = all. For float storage and idx None this
        is the stored tensor itself: do not modify it in place."""
        if idx is None:
            return self._as_network_input(self._data)
        return self._as_network_input(self._data[torch.as_tensor(idx, device=self.device)])

    def _as_network_input(self, stored: torch.Tensor) -> torch.Tensor:
        if stored.dtype == torch.float32:
            return stored
        pixels = stored.float().div_(255)
        return self._normalize_in_place(pixels) if self.normalized else pixels

    def _normalize_in_place(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.sub_(self.mean.view(-1, 1, 1)).div_(self.std.view(-1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """From [0,1] pixel space to what images() returns (identity when not normalized)."""
        if not self.normalized:
            return x
        return (x - self.mean.view(-1, 1, 1).to(x)) / self.std.view(-1, 1, 1).to(x)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Back to [0,1] pixel space (identity when not normalized)."""
        if not self.normalized:
            return x
        return x * self.std.view(-1, 1, 1).to(x) + self.mean.view(-1, 1, 1).to(x)

    # ---- sampling ----

    def sample_class_indices(self, c: int, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """n random indices of class c without replacement (all of them, shuffled, when n >= count)."""
        indices = self.class_indices(c)
        return indices[_random_permutation(len(indices), generator, self.device)[:n]]

    def sample_class(self, c: int, n: int, generator: torch.Generator | None) -> torch.Tensor:
        return self.images(self.sample_class_indices(c, n, generator))

    def sample_per_class_indices(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """(num_classes, n') indices, n' = min(n, smallest class count), without replacement within a class.
        One random key per padded slot, filler keyed last, the n' smallest keys per row: a uniform draw
        for every class at once."""
        n_take = max(0, min([n, *self._count_list]))
        if n_take == 0:
            return self._padded[:, :0]
        keys = _random_keys(tuple(self._padded.shape), generator, self.device)
        keys.masked_fill_(~self._valid, 2.0)  # keys are < 1, so filler is never among the smallest
        columns = keys.topk(n_take, dim=1, largest=False).indices
        return self._padded.gather(1, columns)

    def sample_per_class(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """(num_classes, n', C, H, W) images; see sample_per_class_indices."""
        indices = self.sample_per_class_indices(n, generator)
        return self.images(indices.reshape(-1)).view(*indices.shape, *self.image_shape)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields (images, labels) covering every index once: shuffled with `generator`, in order without."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        total = len(self)
        stop = total - total % batch_size if drop_last else total
        order = None if generator is None else _random_permutation(total, generator, self.device)
        for start in range(0, stop, batch_size):
            if order is None:  # in order: slices, no gather
                window = slice(start, start + batch_size)
                yield self._as_network_input(self._data[window]), self.labels[window]
            else:
                idx = order[start : start + batch_size]
                yield self.images(idx), self.labels[idx]


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


@dataclass
class LoadedDataset:
    spec: DatasetSpec
    train: ImageSet
    test: ImageSet
    normalized: bool
    class_names: list[str] = field(default_factory=list)
    data_path: str = ""


def load_dataset(
    name: str,
    data_path: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    normalize: bool = True,
    download: bool = True,
) -> LoadedDataset:
    """Read data set `name` from `data_path` (default data/<name>) onto `device`.

    normalize=True: images() are (x - mean) / std with the table's stats; False: x in [0, 1].
    Downloads (via torchvision) only when the files are absent, the set is downloadable and download=True.
    Any missing, misplaced or damaged file raises a one-line UserError naming the path and the files expected.
    """
    spec = get_dataset_spec(name)
    fmt = _table_row(spec.name)[1]
    path = Path(data_path) if data_path is not None else Path(default_data_path(spec.name))
    raw = _read_raw(spec, fmt, path, download)
    device = torch.device(device)
    splits = {
        split_name: _to_image_set(split, spec, device, normalize, path, split_name)
        for split_name, split in (("train", raw.train), ("test", raw.test))
    }
    return LoadedDataset(spec, splits["train"], splits["test"], normalize, raw.class_names, str(path))


def _read_raw(spec: DatasetSpec, fmt: _Format, path: Path, download: bool) -> _RawDataset:
    if fmt.find is None:
        return fmt.read(path, spec)
    if path.exists() and not path.is_dir():
        raise UserError(
            f"{spec.name}: {path} is a file, expected a folder holding {spec.expected_files} "
            "(pass --data_path)"
        )
    try:
        with _reading(path):
            folder = fmt.find(path)
        if folder is None and download and spec.downloadable:
            folder = _download(spec, fmt, path)
        if folder is None:
            raise UserError(
                f"{spec.name} not found in {path}: expected {spec.expected_files} "
                "(download it, or pass --data_path)"
            )
        raw = fmt.read(folder, spec)
    except _FormatError as err:
        raise UserError(
            f"{spec.name} in {path} is malformed or truncated: {err} "
            f"(expected {spec.expected_files}; replace the damaged files, or pass --data_path)"
        ) from err
    if len(raw.class_names) != spec.num_classes:
        raise UserError(
            f"{spec.name} in {path}: found {len(raw.class_names)} classes, expected {spec.num_classes} "
            f"({spec.expected_files})"
        )
    return raw


def _download(spec: DatasetSpec, fmt: _Format, path: Path) -> Path | None:
    """Fetch the files with torchvision (then our own readers parse them). Every failure is the user's to
    fix (network, disk, checksum), so all become the same one-line error."""
    get_logger().info("%s not found in %s; downloading it with torchvision", spec.name, path)
    previous_timeout = socket.getdefaulttimeout()
    created = not path.exists()
    try:
        import torchvision

        dataset_class = getattr(torchvision.datasets, fmt.torchvision_class)
        path.mkdir(parents=True, exist_ok=True)
        socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
        for kwargs in fmt.download_calls:
            dataset_class(root=str(path), download=True, **kwargs)
        with _reading(path):
            return fmt.find(path)
    except Exception as err:
        if created:  # leave no empty data/<name> folder behind a failed download
            with contextlib.suppress(OSError):
                path.rmdir()
        raise UserError(
            f"{spec.name} not found in {path} and downloading it failed ({one_line(err)}): expected "
            f"{spec.expected_files} (download it yourself, or pass --data_path)"
        ) from err
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _check_split(split: _RawSplit, spec: DatasetSpec, path: Path, split_name: str) -> None:
    where = f"{spec.name} in {path} ({split_name} split)"
    shape = (spec.channel, *spec.im_size)
    for chunk in split.chunks:
        if chunk.ndim != 4 or tuple(chunk.shape[1:]) != shape:
            raise UserError(f"{where}: images have shape {tuple(chunk.shape[1:])}, expected {shape}")
    count = sum(len(chunk) for chunk in split.chunks)
    if split.labels.ndim != 1 or len(split.labels) != count:
        raise UserError(f"{where}: {count} images but {split.labels.size} labels")
    if count and (split.labels.min() < 0 or split.labels.max() >= spec.num_classes):
        low, high = int(split.labels.min()), int(split.labels.max())
        raise UserError(f"{where}: labels span {low}..{high}, expected 0..{spec.num_classes - 1}")


def _to_image_set(
    split: _RawSplit, spec: DatasetSpec, device: torch.device, normalize: bool, path: Path, split_name: str
) -> ImageSet:
    """Copy the host chunks into one preallocated device tensor, slice by slice, freeing each chunk once
    copied: the only float copy ever made is the stored one."""
    _check_split(split, spec, path, split_name)
    shape = (spec.channel, *spec.im_size)
    count = len(split.labels)
    all_uint8 = all(chunk.dtype == np.uint8 for chunk in split.chunks)
    keep_uint8 = all_uint8 and count * math.prod(shape) * 4 > FLOAT_STORAGE_LIMIT_BYTES
    data = torch.empty((count, *shape), dtype=torch.uint8 if keep_uint8 else torch.float32, device=device)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device)
    slice_len = max(1, _COPY_SLICE_BYTES // (math.prod(shape) * 4))
    offset = 0
    while split.chunks:
        chunk = split.chunks.pop(0)
        for start in range(0, len(chunk), slice_len):
            host = torch.from_numpy(np.array(chunk[start : start + slice_len]))  # private writable copy
            target = data[offset + start : offset + start + len(host)]
            target.copy_(host)  # converts dtype and device in one step
            if not keep_uint8:
                _pixels_to_stored_floats(
                    target, from_uint8=host.dtype == torch.uint8, mean=mean, std=std, normalize=normalize
                )
        offset += len(chunk)
        del chunk
    labels = torch.from_numpy(split.labels.astype(np.int64)).to(device)
    return ImageSet(data, labels, spec.num_classes, mean, std, normalized=normalize)


def _pixels_to_stored_floats(
    target: torch.Tensor, from_uint8: bool, mean: torch.Tensor, std: torch.Tensor, normalize: bool
) -> None:
    if from_uint8:
        target.div_(255)
    if normalize:
        target.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))
