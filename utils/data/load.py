"""Loading a data set onto the device: find its files (downloading them with torchvision when allowed),
read them with the format's reader, check the arrays against the table, and copy them into one ImageSet
per split.

Small splits are stored as float32, normalized once here; splits that would exceed
FLOAT_STORAGE_LIMIT_BYTES as float (tinyimagenet, ImageNet-32, ImageNette, ImageFruit) stay uint8 and are
converted (and normalized) per batch by ImageSet.images. Every missing, misplaced or damaged file becomes
a one-line UserError naming the path and the files expected.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from utils.data.imageset import ImageSet
from utils.data.raw import FormatError, RawDataset, RawSplit, reading
from utils.data.spec import DatasetSpec
from utils.data.table import DiskFormat, default_data_path, get_dataset_spec, table_row
from utils.errors import UserError, one_line

# A split larger than this as float32 is kept as uint8 on the device (4x smaller) and normalized per batch.
from utils.log import get_logger

# A split larger than this as float32 is kept as uint8 on the device (4x smaller) and normalized per batch.
FLOAT_STORAGE_LIMIT_BYTES = 1 << 30
# Host-to-device copies go in slices of about this many bytes, so loading never holds a second full copy.
_COPY_SLICE_BYTES = 64 << 20
# torchvision's downloader sets no timeout; a firewalled network would otherwise hang forever.
DOWNLOAD_SOCKET_TIMEOUT_S = 60.0


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
    fmt = table_row(spec.name)[1]
    path = Path(data_path) if data_path is not None else Path(default_data_path(spec.name))
    raw = _read_raw(spec, fmt, path, download)
    device = torch.device(device)
    splits = {
        split_name: _to_image_set(split, spec, device, normalize, path, split_name)
        for split_name, split in (("train", raw.train), ("test", raw.test))
    }
    return LoadedDataset(spec, splits["train"], splits["test"], normalize, raw.class_names, str(path))


def _read_raw(spec: DatasetSpec, fmt: DiskFormat, path: Path, download: bool) -> RawDataset:
    if fmt.find is None:
        return fmt.read(path, spec)
    if path.exists() and not path.is_dir():
        raise UserError(
            f"{spec.name}: {path} is a file, expected a folder holding {spec.expected_files} "
            "(pass --data_path)"
        )
    try:
        with reading(path):
            folder = fmt.find(path)
        if folder is None and download and spec.downloadable:
            folder = _download(spec, fmt, path)
        if folder is None:
            raise UserError(
                f"{spec.name} not found in {path}: expected {spec.expected_files} "
                "(download it, or pass --data_path)"
            )
        raw = fmt.read(folder, spec)
    except FormatError as err:
        raise UserError(
            f"{spec.name} in {path} is damaged (malformed or truncated): {err} "
            f"(expected {spec.expected_files}; replace the damaged files, or pass --data_path)"
        ) from err
    if len(raw.class_names) != spec.num_classes:
        raise UserError(
            f"{spec.name} in {path}: found {len(raw.class_names)} classes, expected {spec.num_classes} "
            f"({spec.expected_files})"
        )
    return raw


def _download(spec: DatasetSpec, fmt: DiskFormat, path: Path) -> Path | None:
    """Fetch the files with torchvision (then our own readers parse them). Every failure is the user's to
    fix (network, disk, checksum), so all become the same one-line error."""
    get_logger().info("%s not found in %s; downloading it with torchvision", spec.name, path)
    previous_timeout = socket.getdefaulttimeout()
    made = [folder for folder in [path, *path.parents] if not folder.exists()]  # mkdir -p creates these
    before = _folders_under(path)
    try:
        import torchvision

        dataset_class = getattr(torchvision.datasets, fmt.torchvision_class)
        path.mkdir(parents=True, exist_ok=True)
        socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
        for kwargs in fmt.download_calls:
            dataset_class(root=str(path), download=True, **kwargs)
        with reading(path):
            return fmt.find(path)
    except Exception as err:
        # leave no empty folder behind a failed download: neither data/<name> (and data/) nor the
        # <Name>/raw/ that torchvision makes inside an existing folder
        for folder in sorted(_folders_under(path) - before, key=lambda f: len(f.parts), reverse=True) + made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise UserError(
            f"{spec.name} not found in {path} and downloading it failed ({one_line(err)}): expected "
            f"{spec.expected_files} (download it yourself, or pass --data_path)"
        ) from err
    finally:
        socket.setdefaulttimeout(previous_timeout)


def _folders_under(path: Path) -> set[Path]:
    """The folders below `path` (a data folder without the data set's files: small)."""
    if not path.is_dir():
        return set()
    return {Path(root) / name for root, names, _ in os.walk(path) for name in names}


def _check_split(split: RawSplit, spec: DatasetSpec, path: Path, split_name: str) -> None:
    where = f"{spec.name} in {path} ({split_name} split)"
    shape = (spec.channel, *spec.im_size)
    for chunk in split.chunks:
        if chunk.ndim != 4 or tuple(chunk.shape[1:]) != shape:
            raise UserError(f"{where}: images have shape {tuple(chunk.shape[1:])}, expected {shape}")
        if chunk.dtype != np.uint8 and not np.isfinite(chunk).all():
            raise UserError(f"{where}: images hold NaN or infinite values (a damaged or wrongly converted file)")
    count = sum(len(chunk) for chunk in split.chunks)
    if split.labels.ndim != 1 or len(split.labels) != count:
        raise UserError(f"{where}: {count} images but {split.labels.size} labels")
    if count and (split.labels.min() < 0 or split.labels.max() >= spec.num_classes):
        low, high = int(split.labels.min()), int(split.labels.max())
        raise UserError(f"{where}: labels span {low}..{high}, expected 0..{spec.num_classes - 1}")


def _to_image_set(
    split: RawSplit, spec: DatasetSpec, device: torch.device, normalize: bool, path: Path, split_name: str
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
