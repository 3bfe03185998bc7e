"""Shared test helpers, importable as `from conftest import ...` (pytest puts tests/ on sys.path):
writers of tiny data sets in their real on-disk formats, and ImageSet helpers only tests need."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image

from utils.data import ImageSet

# pytest-xdist runs one worker per core: torch's default of a thread per core in each worker would put two
# threads on every core, and OpenMP threads that wait on a busy core spin away the other worker's time.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))

# --------------------------------------------------------------------------------------------------
# Writers of tiny data sets in their real formats
# --------------------------------------------------------------------------------------------------


def random_split(num_classes: int, per_class: int, shape: tuple[int, ...], seed: int):
    """uint8 images (N, *shape) and shuffled labels with `per_class` images of every class."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    images = rng.integers(0, 256, (len(labels), *shape), dtype=np.uint8)
    return images, labels


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    payload = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist(folder: Path, gz: bool = False) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for split, prefix, per_class in (("train", "train", 3), ("test", "t10k", 2)):
        images, labels = random_split(10, per_class, (28, 28), seed=per_class)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8), gz)
        expected[split] = (images[:, None], labels)
    return expected


def write_svhn(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for split, per_class in (("train", 3), ("test", 2)):
        images, labels = random_split(10, per_class, (3, 32, 32), seed=per_class)
        on_disk_labels = np.where(labels == 0, 10, labels)  # SVHN writes digit 0 as 10
        scipy.io.savemat(
            folder / f"{split}_32x32.mat",
            {"X": images.transpose(2, 3, 1, 0), "y": on_disk_labels.reshape(-1, 1).astype(np.uint8)},
        )
        expected[split] = (images, labels)
    return expected


def write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def cifar_batch(images: np.ndarray, labels: np.ndarray, label_key: bytes) -> dict:
    # bytes keys, as python 2 wrote the real batches
    return {b"batch_label": b"tiny", b"data": images.reshape(len(images), -1), label_key: labels.tolist()}


def write_cifar10(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = random_split(10, 5, (3, 32, 32), seed=1)
    for i in range(5):  # one image of every class per batch
        part = slice(10 * i, 10 * (i + 1))
        write_pickle(
            folder / f"data_batch_{i + 1}", cifar_batch(train_images[part], train_labels[part], b"labels")
        )
    test_images, test_labels = random_split(10, 2, (3, 32, 32), seed=2)
    write_pickle(folder / "test_batch", cifar_batch(test_images, test_labels, b"labels"))
    write_pickle(folder / "batches.meta", {b"label_names": [f"name{c}".encode() for c in range(10)]})
    return {"train": (train_images, train_labels), "test": (test_images, test_labels)}


def write_cifar100(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for split, per_class in (("train", 2), ("test", 1)):
        images, labels = random_split(100, per_class, (3, 32, 32), seed=per_class)
        write_pickle(folder / split, cifar_batch(images, labels, b"fine_labels"))
        expected[split] = (images, labels)
    write_pickle(folder / "meta", {b"fine_label_names": [f"fine{c}".encode() for c in range(100)]})
    return expected


def write_imagenet32(folder: Path) -> dict:
    """Two train batches (numbers 1 and 3: whatever exists is used) and val_data, 1-based labels."""
    (folder / "Imagenet32_train").mkdir(parents=True)
    (folder / "Imagenet32_val").mkdir()
    batches = [random_split(1000, 1, (3, 32, 32), seed=s) for s in (1, 3)]
    for number, (images, labels) in zip((1, 3), batches):
        batch = {
            "data": images.reshape(len(images), -1),
            "labels": (labels + 1).tolist(),
            "mean": np.zeros(3),
        }
        write_pickle(folder / "Imagenet32_train" / f"train_data_batch_{number}", batch)
    val_images, val_labels = random_split(1000, 1, (3, 32, 32), seed=5)
    val = {"data": val_images.reshape(1000, -1), "labels": (val_labels + 1).tolist()}
    write_pickle(folder / "Imagenet32_val" / "val_data", val)
    train = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
    return {"train": train, "test": (val_images, val_labels)}


def write_pathmnist(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    arrays, expected = {}, {}
    for split, per_class in (("train", 3), ("val", 1), ("test", 2)):
        images, labels = random_split(9, per_class, (28, 28, 3), seed=per_class)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
        expected[split] = (images.transpose(0, 3, 1, 2), labels)
    np.savez(folder / "pathmnist.npz", **arrays)
    return expected


def class_color(label: int) -> tuple[int, int, int]:
    return (label * 37 % 256, label * 91 % 256, 255 - label * 53 % 256)


def write_image(path: Path, label: int, size: tuple[int, int], mode: str = "RGB") -> None:
    """A flat image of the class's colour: survives JPEG, resizing and cropping (almost) unchanged."""
    Image.new("RGB", size, class_color(label)).convert(mode).save(path, quality=95)


def expected_color(label: int, mode: str = "RGB") -> np.ndarray:
    pixel = np.asarray(Image.new("RGB", (1, 1), class_color(label)).convert(mode).convert("RGB"))
    return pixel.reshape(3).astype(np.float32) / 255


def write_tinyimagenet(folder: Path, with_wnids: bool) -> list[str]:
    wnids = [f"n{9000000 - i:08d}" for i in range(200)]  # listed in reverse-sorted order
    for label, wnid in enumerate(wnids):
        (folder / "train" / wnid / "images").mkdir(parents=True)
        write_image(folder / "train" / wnid / "images" / f"{wnid}_0.JPEG", label, (64, 64))
        write_image(folder / "train" / wnid / "images" / f"{wnid}_1.JPEG", label, (64, 64), mode="L")
    (folder / "val" / "images").mkdir(parents=True)
    lines = []
    for label, wnid in enumerate(wnids):
        write_image(folder / "val" / "images" / f"val_{label}.JPEG", label, (64, 64))
        lines.append(f"val_{label}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    if with_wnids:
        (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
        return wnids
    return sorted(wnids)


def write_image_folder(folder: Path, num_classes: int = 10) -> list[str]:
    classes = [f"n0{c}_class" for c in range(num_classes)]
    for label, name in enumerate(classes):
        (folder / "train" / name).mkdir(parents=True)
        (folder / "val" / name).mkdir(parents=True)
        write_image(folder / "train" / name / "a.JPEG", label, (300, 250))
        write_image(folder / "train" / name / "b.png", label, (120, 90))  # upsampled
        write_image(folder / "val" / name / "c.JPEG", label, (250, 333))
    return classes


# --------------------------------------------------------------------------------------------------
# ImageSet helpers
# --------------------------------------------------------------------------------------------------


def stored_as_uint8(split: ImageSet) -> bool:
    """Whether the split keeps uint8 pixels on the device (large sets) rather than float32."""
    return split._data.dtype == torch.uint8


def sample_class(split: ImageSet, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """n random images of class c, without replacement (all of them, shuffled, when n >= its count)."""
    indices = torch.nonzero(split.labels == c).flatten()
    order = torch.randperm(len(indices), generator=generator, device=generator.device).to(split.device)
    return split.images(indices[order[:n]])


def table_rows(text: str, header: bool = True) -> list[list[str]]:
    """The cells of every Markdown table row in `text`, without the rules (and without the header row when
    `header` is False: a benchmark's single table then gives its data rows only)."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]
    rows = [row for row in rows if not all(set(cell) <= set("-:") for cell in row)]
    return rows if header else rows[1:]
