"""The table of data sets: shape, classes, normalization stats and where each one's files come from.

A row pairs the user-facing DatasetSpec with the private DiskFormat that finds, reads and (through
torchvision) downloads its files; load.py turns a row into tensors on the device.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from networks.foundation import IMAGENET_MEAN, IMAGENET_STD
from utils.data.digits import digits_stats, read_digits
from utils.data.idx import find_idx_folder, read_fashion_mnist, read_mnist
from utils.data.image_folders import find_image_folder, find_tinyimagenet, read_image_folder, read_tinyimagenet
from utils.data.medmnist import find_pathmnist, read_pathmnist
from utils.data.pickles import (
    find_cifar10,
    find_cifar100,
    find_imagenet32,
    read_cifar10,
    read_cifar100,
    read_imagenet32,
)
from utils.data.raw import RawDataset
from utils.data.spec import DatasetSpec
from utils.data.svhn import find_svhn, read_svhn
from utils.errors import UserError


@dataclass(frozen=True)
class DiskFormat:
    """How one data set sits on disk. `find` returns the folder holding its files, or None when absent."""

    find: Callable[[Path], Path | None] | None  # None: needs no files (Digits)
    read: Callable[[Path, DatasetSpec], RawDataset]
    torchvision_class: str | None = None  # the torchvision.datasets class that can download it
    download_calls: tuple[dict, ...] = ({},)  # constructor kwargs, one call per download
    stats_from_data: Callable[[], dict] | None = None  # fills mean/std when the table cannot


_IDX_EXPECTED = (
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte (or .gz), directly, in raw/ or in {name}/raw/"
)
_IMAGE_FOLDER_EXPECTED = "an ImageFolder tree train/<class>/*.JPEG and val/<class>/*.JPEG"


def _row(name, channel, size, classes, mean, std, expected, fmt: DiskFormat) -> tuple[DatasetSpec, DiskFormat]:
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


_TABLE: dict[str, tuple[DatasetSpec, DiskFormat]] = {
    row[0].name: row
    for row in (
        _row("MNIST", 1, 28, 10, (0.1307,), (0.3081,), _IDX_EXPECTED.format(name="MNIST"),
             DiskFormat(find_idx_folder("MNIST"), read_mnist, "MNIST")),
        _row("FashionMNIST", 1, 28, 10, (0.2861,), (0.3530,), _IDX_EXPECTED.format(name="FashionMNIST"),
             DiskFormat(find_idx_folder("FashionMNIST"), read_fashion_mnist, "FashionMNIST")),
        _row("SVHN", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
             "train_32x32.mat and test_32x32.mat",
             DiskFormat(find_svhn, read_svhn, "SVHN", ({"split": "train"}, {"split": "test"}))),
        _row("CIFAR10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
             "cifar-10-batches-py/data_batch_1..5 and test_batch",
             DiskFormat(find_cifar10, read_cifar10, "CIFAR10")),
        _row("CIFAR100", 3, 32, 100, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762),
             "cifar-100-python/train and test",
             DiskFormat(find_cifar100, read_cifar100, "CIFAR100")),
        _row("tinyimagenet", 3, 64, 200, IMAGENET_MEAN, IMAGENET_STD,
             "train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt (wnids.txt optional)",
             DiskFormat(find_tinyimagenet, read_tinyimagenet)),
        _row("ImageNet-32", 3, 32, 1000, IMAGENET_MEAN, IMAGENET_STD,
             "downsampled-ImageNet pickles train_data_batch_1..10 (at least one) and val_data",
             DiskFormat(find_imagenet32, read_imagenet32)),
        _row("pathmnist", 3, 28, 9, (0.7406, 0.5330, 0.7059), (0.1237, 0.1767, 0.1244),
             "pathmnist.npz (MedMNIST)",
             DiskFormat(find_pathmnist, read_pathmnist)),
        _row("ImageNette", 3, 224, 10, IMAGENET_MEAN, IMAGENET_STD, _IMAGE_FOLDER_EXPECTED,
             DiskFormat(find_image_folder, read_image_folder)),
        _row("ImageFruit", 3, 224, 10, IMAGENET_MEAN, IMAGENET_STD, _IMAGE_FOLDER_EXPECTED,
             DiskFormat(find_image_folder, read_image_folder)),
        _row("Digits", 1, 8, 10, (), (), "nothing (bundled with scikit-learn)",
             DiskFormat(None, read_digits, stats_from_data=digits_stats)),
    )
}  # fmt: skip


def dataset_names() -> list[str]:
    return list(_TABLE)


def table_row(name: str) -> tuple[DatasetSpec, DiskFormat]:
    """The row for `name` (case-insensitive), spec as written in the table; UserError when unknown."""
    if name in _TABLE:
        return _TABLE[name]
    by_lower = {known.lower(): known for known in _TABLE}
    if str(name).lower() in by_lower:
        return _TABLE[by_lower[str(name).lower()]]
    raise UserError(f"unknown data set {name!r}: choose one of {', '.join(_TABLE)}")


def get_dataset_spec(name: str) -> DatasetSpec:
    """The table's row for `name` (case-insensitive); UserError listing the known names when unknown."""
    spec, fmt = table_row(name)
    if fmt.stats_from_data is not None:
        spec = replace(spec, **fmt.stats_from_data())
    return spec


def default_data_path(name: str) -> str:
    return os.path.join("data", table_row(name)[0].name)
