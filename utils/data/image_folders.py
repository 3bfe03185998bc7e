"""ImageNette, ImageFruit (ImageFolder trees train/<class>/, val/<class>/) and tinyimagenet (its archive's
train/<wnid>/images/ and val/val_annotations.txt): image files decoded once at load time.

Each image is converted to RGB, its shorter side resized to the target size (bilinear), then center-cropped
to a square: 224 for the ImageFolder sets, 64 for tinyimagenet (whose 64x64 images are left untouched).
The class order is sorted folder names (or tinyimagenet's wnids.txt when present).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from utils.data.raw import FormatError, RawDataset, RawSplit, first_folder, reading
from utils.data.spec import DatasetSpec

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def resize_and_center_crop(image, size: int):
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
        with reading(files[i]), Image.open(files[i]) as image:
            square = resize_and_center_crop(image.convert("RGB"), size)
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
        raise FormatError(f"no images in {folder}")
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


def _decoded_split(files: Sequence[Path], labels: Sequence[int], size: int) -> RawSplit:
    return RawSplit([_decode_images(files, size)], np.asarray(labels, dtype=np.int64))


def _is_image_folder_root(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "val").is_dir()


def find_image_folder(path: Path) -> Path | None:
    return first_folder(path, _is_image_folder_root)


def read_image_folder(folder: Path, spec: DatasetSpec) -> RawDataset:
    """ImageFolder tree: train/<class>/*, val/<class>/*, classes in sorted folder order."""
    with reading(folder):
        classes = _visible_subfolders(folder / "train")
        val_classes = _visible_subfolders(folder / "val")
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise FormatError(f"{folder / 'val'} has classes missing from train/: {unknown[:5]}")
        train = _decoded_split(*_labelled_files(folder / "train", classes), spec.im_size[0])
        val_files, val_positions = _labelled_files(folder / "val", val_classes)
        val_labels = [classes.index(val_classes[position]) for position in val_positions]
        test = _decoded_split(val_files, val_labels, spec.im_size[0])
    return RawDataset(train, test, classes)


def _is_tinyimagenet_root(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "val" / "val_annotations.txt").is_file()


def find_tinyimagenet(path: Path) -> Path | None:
    return first_folder(path, _is_tinyimagenet_root)


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
            raise FormatError(f"{annotations} line {line_number}: expected '<file>\\t<known wnid>\\t...'")
        files.append(folder / "val" / "images" / parts[0])
        labels.append(label_of[parts[1]])
    return files, labels


def read_tinyimagenet(folder: Path, spec: DatasetSpec) -> RawDataset:
    with reading(folder):
        wnids_file = folder / "wnids.txt"
        if wnids_file.is_file():
            wnids = [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
        else:
            wnids = _visible_subfolders(folder / "train")
        size = spec.im_size[0]
        train = _decoded_split(*_labelled_files(folder / "train", wnids, _tiny_class_folder), size)
        test = _decoded_split(*_tiny_val_files(folder, {wnid: i for i, wnid in enumerate(wnids)}), size)
    return RawDataset(train, test, wnids)

