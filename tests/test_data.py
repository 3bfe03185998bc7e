"""utils/data/: every loader on tiny files written in the data set's real on-disk format, the
device-resident ImageSet (sampling, normalization, uint8 storage), and the one-line errors."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    expected_color,
    stored_as_uint8,
    write_cifar10,
    write_cifar100,
    write_image_folder,
    write_imagenet32,
    write_mnist,
    write_pathmnist,
    write_pickle,
    write_svhn,
    write_tinyimagenet,
)
from PIL import Image

import utils.data.digits as digits
import utils.data.load as load_module
from utils.data import ImageSet, dataset_names, default_data_path, get_dataset_spec, load_dataset
from utils.data.image_folders import resize_and_center_crop
from utils.errors import UserError
from utils.seeding import make_generator

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def assert_split_matches(split: ImageSet, images_uint8: np.ndarray, labels: np.ndarray) -> None:
    """For a set loaded with normalize=False: pixels are the file's bytes / 255, labels as given."""
    assert split.labels.dtype == torch.long
    torch.testing.assert_close(split.labels.cpu(), torch.as_tensor(labels, dtype=torch.long))
    got = split.images()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), torch.from_numpy(images_uint8).float() / 255)


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------


def test_table_lists_every_data_set_with_consistent_stats():
    assert dataset_names() == [
        "MNIST", "FashionMNIST", "SVHN", "CIFAR10", "CIFAR100", "tinyimagenet", "ImageNet-32", "pathmnist",
        "ImageNette", "ImageFruit", "Digits",
    ]  # fmt: skip
    for name in dataset_names():
        spec = get_dataset_spec(name)
        assert len(spec.mean) == len(spec.std) == spec.channel
        assert spec.im_size[0] == spec.im_size[1]
        assert default_data_path(name) == os.path.join("data", name)
    downloadable = {name for name in dataset_names() if get_dataset_spec(name).downloadable}
    assert downloadable == {"MNIST", "FashionMNIST", "SVHN", "CIFAR10", "CIFAR100"}
    assert get_dataset_spec("cifar10").name == "CIFAR10"  # case-insensitive lookup
    assert get_dataset_spec("ImageNette").im_size == (224, 224)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UserError) as info:
        get_dataset_spec("CIFAR11")
    assert "CIFAR11" in str(info.value) and "CIFAR10" in str(info.value) and "Digits" in str(info.value)
    with pytest.raises(UserError):
        load_dataset("nope", download=False)


# --------------------------------------------------------------------------------------------------
# Every loader on its real format
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, layout, gz",
    [
        ("MNIST", "", False),
        ("MNIST", "raw", True),
        ("MNIST", "MNIST/raw", False),
        ("FashionMNIST", "FashionMNIST/raw", True),
    ],
)
def test_idx_loaders(tmp_path, name, layout, gz):
    expected = write_mnist(tmp_path / layout, gz)
    ds = load_dataset(name, tmp_path, normalize=False, download=False)
    assert ds.train.images().shape == (30, 1, 28, 28) and len(ds.test) == 20
    assert_split_matches(ds.train, *expected["train"])
    assert_split_matches(ds.test, *expected["test"])
    assert len(ds.class_names) == 10 and ds.data_path == str(tmp_path)


def test_svhn_maps_label_10_to_digit_0(tmp_path):
    expected = write_svhn(tmp_path)
    ds = load_dataset("SVHN", tmp_path, normalize=False, download=False)
    assert_split_matches(ds.train, *expected["train"])
    assert_split_matches(ds.test, *expected["test"])
    assert int(ds.train.class_counts()[0]) == 3


@pytest.mark.parametrize("subfolder", ["cifar-10-batches-py", ""])
def test_cifar10(tmp_path, subfolder):
    expected = write_cifar10(tmp_path / subfolder)
    ds = load_dataset("CIFAR10", tmp_path, normalize=False, download=False)
    assert_split_matches(ds.train, *expected["train"])
    assert_split_matches(ds.test, *expected["test"])
    assert ds.class_names == [f"name{c}" for c in range(10)]


def test_cifar100(tmp_path):
    expected = write_cifar100(tmp_path / "cifar-100-python")
    ds = load_dataset("CIFAR100", tmp_path, normalize=False, download=False)
    assert_split_matches(ds.train, *expected["train"])
    assert_split_matches(ds.test, *expected["test"])
    assert ds.train.num_classes == 100 and ds.class_names[99] == "fine99"


def test_imagenet32_uses_existing_batches_and_shifts_labels(tmp_path):
    expected = write_imagenet32(tmp_path)
    ds = load_dataset("ImageNet-32", tmp_path, normalize=False, download=False)
    assert_split_matches(ds.train, *expected["train"])
    assert_split_matches(ds.test, *expected["test"])
    assert int(ds.train.labels.min()) == 0 and int(ds.train.labels.max()) == 999


def test_pathmnist_uses_train_and_test(tmp_path):
    expected = write_pathmnist(tmp_path)
    ds = load_dataset("pathmnist", tmp_path, normalize=False, download=False)
    assert_split_matches(ds.train, *expected["train"])
    assert_split_matches(ds.test, *expected["test"])
    assert len(ds.class_names) == 9


@pytest.mark.parametrize("with_wnids", [True, False])
def test_tinyimagenet(tmp_path, with_wnids):
    class_order = write_tinyimagenet(tmp_path / "tiny-imagenet-200", with_wnids)
    ds = load_dataset("tinyimagenet", tmp_path, normalize=False, download=False)
    assert ds.class_names == class_order
    assert ds.train.images().shape == (400, 3, 64, 64) and ds.test.images().shape == (200, 3, 64, 64)
    assert ds.train.class_counts().tolist() == [2] * 200
    wnids_on_disk = [f"n{9000000 - i:08d}" for i in range(200)]  # the colour follows the folder
    for split in (ds.train, ds.test):
        for index in (0, len(split) - 1):
            label = int(split.labels[index])
            disk_label = wnids_on_disk.index(class_order[label])
            pixel = split.images()[index, :, 10, 10].cpu().numpy()
            gray = index % 2 == 1 and split is ds.train
            np.testing.assert_allclose(
                pixel, expected_color(disk_label, "L" if gray else "RGB"), atol=3 / 255
            )


@pytest.mark.parametrize("name", ["ImageNette", "ImageFruit"])
def test_image_folder_sets_resize_and_crop_to_224(tmp_path, name):
    classes = write_image_folder(tmp_path)
    ds = load_dataset(name, tmp_path, normalize=False, download=False)
    assert ds.class_names == classes
    assert ds.train.images().shape == (20, 3, 224, 224) and ds.test.images().shape == (10, 3, 224, 224)
    assert stored_as_uint8(ds.train) is False  # tiny here; the real set is over the limit and stays uint8
    images = ds.train.images()
    for index in range(len(ds.train)):
        color = torch.from_numpy(expected_color(int(ds.train.labels[index])))
        torch.testing.assert_close(images[index].mean(dim=(1, 2)).cpu(), color, atol=3 / 255, rtol=0)


def test_resize_and_center_crop_keeps_the_center():
    wide = np.zeros((224, 448, 3), dtype=np.uint8)
    wide[:, :112] = (255, 0, 0)
    wide[:, 112:336] = (0, 255, 0)
    wide[:, 336:] = (0, 0, 255)
    out = np.asarray(resize_and_center_crop(Image.fromarray(wide), 224))
    assert out.shape == (224, 224, 3) and (out == (0, 255, 0)).all()
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))
    out = np.asarray(resize_and_center_crop(Image.fromarray(tall), 112))  # downscale by 2
    assert out.shape == (112, 112, 3) and (np.abs(out[4:-4].astype(int) - (0, 255, 0)) <= 2).all()


def test_digits_fixed_stratified_split(tmp_path):
    ds = load_dataset("Digits", tmp_path / "ignored", normalize=True, download=False)
    assert ds.train.images().shape == (1198, 1, 8, 8) and len(ds.test) == 599
    counts = ds.train.class_counts().float() / len(ds.train)
    torch.testing.assert_close(counts, ds.test.class_counts().float() / len(ds.test), atol=0.01, rtol=0)
    train = ds.train.images()
    assert abs(float(train.mean())) < 1e-4 and abs(float(train.std(unbiased=False)) - 1) < 1e-4
    raw = load_dataset("Digits", normalize=False).train.images()
    assert float(raw.min()) == 0 and float(raw.max()) == 1
    torch.testing.assert_close(ds.train.denormalize(train), raw)
    again = load_dataset("Digits", normalize=False)
    torch.testing.assert_close(again.test.images(), load_dataset("Digits", normalize=False).test.images())


def test_digits_split_is_cached_per_sklearn_version_and_a_bad_cache_is_remade(tmp_path, monkeypatch):
    """The cached split is scikit-learn's split exactly; a damaged cache file or an unwritable cache folder
    falls back to scikit-learn (and a damaged file is replaced)."""

    def fresh_split():
        digits._digits_arrays.cache_clear()  # a new process: only the cache file carries over
        return digits._digits_arrays()

    def assert_split(arrays):
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(arrays, expected))

    expected = digits._split_with_sklearn()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache_file = digits.split_cache_file()
    assert cache_file.parent == tmp_path / "cache/clom-distill" and "sklearn-" in cache_file.name
    for damage in (None, b"not an npz"):
        if damage is not None:
            cache_file.write_bytes(damage)
        assert_split(fresh_split())  # from scikit-learn, then kept
        with monkeypatch.context() as patched:
            patched.setattr(digits, "_split_with_sklearn", lambda: pytest.fail("the cache was not read"))
            assert_split(fresh_split())
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert_split(fresh_split())
    digits._digits_arrays.cache_clear()


# --------------------------------------------------------------------------------------------------
# Normalization and storage
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_normalization_on_off_and_denormalize_round_trip(tmp_path, device):
    expected = write_cifar10(tmp_path)
    plain = load_dataset("CIFAR10", tmp_path, device=device, normalize=False, download=False)
    normed = load_dataset("CIFAR10", tmp_path, device=device, normalize=True, download=False)
    assert normed.normalized and not plain.normalized and normed.train.normalized
    assert normed.train.images().device.type == device and normed.train.labels.device.type == device
    mean = torch.tensor(normed.spec.mean, device=device).view(3, 1, 1)
    std = torch.tensor(normed.spec.std, device=device).view(3, 1, 1)
    torch.testing.assert_close(normed.train.images(), (plain.train.images() - mean) / std)
    torch.testing.assert_close(normed.train.denormalize(normed.train.images()), plain.train.images())
    assert plain.train.denormalize(plain.train.images()) is plain.train.images()
    assert_split_matches(plain.test, *expected["test"])


@pytest.mark.parametrize("normalize", [True, False])
def test_uint8_storage_gives_the_same_images(tmp_path, monkeypatch, normalize):
    write_cifar10(tmp_path)
    as_float = load_dataset("CIFAR10", tmp_path, normalize=normalize, download=False)
    monkeypatch.setattr(load_module, "FLOAT_STORAGE_LIMIT_BYTES", 0)
    as_uint8 = load_dataset("CIFAR10", tmp_path, normalize=normalize, download=False)
    assert stored_as_uint8(as_uint8.train) and not stored_as_uint8(as_float.train)
    torch.testing.assert_close(as_uint8.train.images(), as_float.train.images())
    idx = torch.tensor([3, 0, 7])
    torch.testing.assert_close(as_uint8.train.images(idx), as_float.train.images(idx))
    draw = [s.train.sample_per_class(2, make_generator(4)) for s in (as_uint8, as_float)]
    torch.testing.assert_close(draw[0], draw[1])
    torch.testing.assert_close(as_uint8.test.images(), as_float.test.images())


# --------------------------------------------------------------------------------------------------
# Sampling on a set whose pixel values name their index
# --------------------------------------------------------------------------------------------------

CLASS_COUNTS = [3, 5, 4, 6]


def indexed_set(device: str) -> ImageSet:
    """Image i is filled with the value i, so drawn images can be traced back to their indices."""
    labels = torch.tensor([c for c, count in enumerate(CLASS_COUNTS) for _ in range(count)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    data = torch.arange(len(labels), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, 3, 3).contiguous()
    zeros, ones = torch.zeros(2), torch.ones(2)
    return ImageSet(data.to(device), labels.to(device), len(CLASS_COUNTS), zeros, ones, normalized=False)


def index_of(images: torch.Tensor) -> torch.Tensor:
    return images[..., 0, 0, 0].long().cpu()


@pytest.mark.parametrize("device", DEVICES)
def test_class_counts(device):
    counts = indexed_set(device).class_counts()
    assert counts.device.type == device and counts.tolist() == CLASS_COUNTS


@pytest.mark.parametrize("device", DEVICES)
def test_sample_per_class_vectorized_draw(device):
    data = indexed_set(device)
    labels = data.labels.cpu()
    images = data.sample_per_class(10, make_generator(3))
    assert images.shape == (4, min(CLASS_COUNTS), 2, 3, 3) and images.device.type == device
    drawn = index_of(images)
    for c in range(4):
        assert (labels[drawn[c]] == c).all() and len(set(drawn[c].tolist())) == min(CLASS_COUNTS)
    again = index_of(data.sample_per_class(10, make_generator(3)))
    assert torch.equal(drawn, again)
    other = index_of(data.sample_per_class(2, make_generator(4)))
    assert other.shape == (4, 2)
    # Uniform over the class, filler never drawn: 600 single draws from class 3 (6 images).
    hits = torch.stack([data.sample_per_class_indices(1, gen)[3, 0] for gen in [make_generator(5)] * 600])
    frequency = torch.bincount(hits.cpu(), minlength=len(labels))[torch.nonzero(labels == 3).flatten()]
    assert frequency.sum() == 600 and frequency.min() > 60


def test_generator_on_another_device_than_the_data():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    drawn = indexed_set("cuda").sample_per_class(2, make_generator(0, "cpu"))
    assert drawn.device.type == "cuda"
    drawn = indexed_set("cpu").sample_per_class(2, make_generator(0, "cuda"))
    assert drawn.device.type == "cpu"


# --------------------------------------------------------------------------------------------------
# Errors: one line, naming the path and what is expected
# --------------------------------------------------------------------------------------------------


def user_error(name: str, path, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        load_dataset(name, path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", ["MNIST", "SVHN", "CIFAR10", "tinyimagenet", "ImageNet-32", "ImageNette"])
def test_missing_data_set(tmp_path, name):
    missing = tmp_path / "nowhere"
    message = user_error(name, missing, download=False)
    assert (
        str(missing) in message and "expected" in message and get_dataset_spec(name).expected_files in message
    )
    (tmp_path / "empty").mkdir()
    assert str(tmp_path / "empty") in user_error(
        name, tmp_path / "empty", download=True if name == "tinyimagenet" else False
    )


def test_file_where_a_folder_is_expected(tmp_path):
    not_a_folder = tmp_path / "cifar.tar.gz"
    not_a_folder.write_bytes(b"x")
    message = user_error("CIFAR10", not_a_folder, download=True)
    assert str(not_a_folder) in message and "is a file" in message


def test_malformed_pickle_names_the_file(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(b"\x80\x02this is not a pickle")
    message = user_error("CIFAR10", tmp_path, download=False)
    assert str(tmp_path / "data_batch_2") in message and "malformed" in message


def test_pickle_with_foreign_code_is_refused(tmp_path):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / "test_batch", {b"data": os.getcwd, b"labels": []})  # a global that is not numpy
    message = user_error("CIFAR10", tmp_path, download=False)
    assert "refusing" in message and str(tmp_path / "test_batch") in message


def test_wrong_image_size_in_a_batch(tmp_path):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / "test_batch", {b"data": np.zeros((4, 1024), np.uint8), b"labels": [0, 1, 2, 3]})
    message = user_error("CIFAR10", tmp_path, download=False)
    assert "(4, 1024)" in message and str(tmp_path / "test_batch") in message


def test_truncated_idx_and_mat_and_npz(tmp_path):
    write_mnist(tmp_path / "mnist")
    labels = tmp_path / "mnist" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-3])
    assert str(labels) in user_error("MNIST", tmp_path / "mnist", download=False)

    write_svhn(tmp_path / "svhn")
    mat = tmp_path / "svhn" / "test_32x32.mat"
    mat.write_bytes(mat.read_bytes()[:300])
    assert str(mat) in user_error("SVHN", tmp_path / "svhn", download=False)

    (tmp_path / "path").mkdir()
    np.savez(tmp_path / "path" / "pathmnist.npz", train_images=np.zeros((1, 28, 28, 3), np.uint8))
    assert "pathmnist.npz" in user_error("pathmnist", tmp_path / "path", download=False)


def test_wrong_number_of_classes_and_labels_out_of_range(tmp_path):
    write_image_folder(tmp_path / "nette", num_classes=3)
    assert "found 3 classes, expected 10" in user_error("ImageNette", tmp_path / "nette")

    write_cifar10(tmp_path / "cifar")
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}
    write_pickle(tmp_path / "cifar" / "test_batch", batch)
    assert "labels span 0..10" in user_error("CIFAR10", tmp_path / "cifar", download=False)


def test_failed_download_is_a_quick_user_error(tmp_path, monkeypatch):
    import torchvision

    calls = []

    class OfflineCIFAR10:
        def __init__(self, root, download, **kwargs):
            calls.append(root)
            raise RuntimeError("Error downloading cifar-10-python.tar.gz:\nName or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", OfflineCIFAR10)
    start = time.perf_counter()
    message = user_error("CIFAR10", tmp_path / "c10", download=True)
    assert time.perf_counter() - start < 5 and calls == [str(tmp_path / "c10")]
    assert "downloading it failed" in message and str(tmp_path / "c10") in message
    assert not (tmp_path / "c10").exists()  # no empty folder left behind
    user_error("CIFAR10", tmp_path / "c10", download=False)
    assert len(calls) == 1  # download=False never tries


def test_download_fetches_files_then_our_reader_reads_them(tmp_path, monkeypatch):
    import torchvision

    class FakeSVHN:
        def __init__(self, root, split, download):
            write_svhn(Path(root))

    monkeypatch.setattr(torchvision.datasets, "SVHN", FakeSVHN)
    ds = load_dataset("SVHN", tmp_path / "svhn", normalize=False, download=True)
    assert len(ds.train) == 30 and len(ds.test) == 20
