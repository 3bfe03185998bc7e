"""Damaged data files, read by every format reader: each is one UserError naming the file ("is damaged (malformed or
truncated)"), never a MemoryError, a traceback or a crash. Headers that claim more data than a file holds
are refused by the reader's own bounds before anything that large is allocated (the messages say so), and
random damage to real files (cuts, flipped bytes) is always either read or refused."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import write_cifar10, write_mnist, write_pathmnist, write_pickle, write_svhn

from utils.data import load_dataset
from utils.data.svhn import read_mat
from utils.errors import UserError

HUGE = 2**60


def refused(name: str, path: Path) -> str:
    with pytest.raises(UserError) as caught:
        load_dataset(name, path, download=False)
    message = str(caught.value)
    assert "\n" not in message and "is damaged (malformed or truncated)" in message
    return message


# ------------------------------------------------------------------------------ headers that claim too much
def test_pickle_length_beyond_the_file_is_refused_before_allocating(tmp_path):
    write_cifar10(tmp_path)
    # protocol 4/5 opcodes with 8-byte lengths: BINBYTES8, BYTEARRAY8, and a FRAME announcing 2**60 bytes
    for payload in (b"\x80\x04\x8e" + struct.pack("<Q", HUGE) + b"xx", b"\x80\x05\x96" + struct.pack("<Q", HUGE),
                    b"\x80\x04\x95" + struct.pack("<Q", HUGE) + b"}."):
        (tmp_path / "data_batch_3").write_bytes(payload)
        message = refused("CIFAR10", tmp_path)
        assert "data_batch_3" in message and "more memory" not in message


def test_pickled_object_array_is_refused(tmp_path):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / "test_batch", {b"data": np.empty((2, 3072), dtype=object), b"labels": [0, 1]})
    assert "Python objects" in refused("CIFAR10", tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_beyond_the_file_is_refused(tmp_path, gz):
    write_mnist(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 2**31, 2**31)
    data = header + b"\x00" * 100
    (tmp_path / name).write_bytes(gzip.compress(data) if gz else data)
    message = refused("MNIST", tmp_path)
    assert name in message and "header says" in message


def test_npz_header_beyond_the_stored_bytes_is_refused(tmp_path):
    write_pathmnist(tmp_path)
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "|u1", "fortran_order": False, "shape": (2**40, 28, 28, 3)})
    npy.write(b"\x00" * 64)
    source = zipfile.ZipFile(tmp_path / "pathmnist.npz")
    members = {name: source.read(name) for name in source.namelist()}
    source.close()
    members["train_images.npy"] = npy.getvalue()
    with zipfile.ZipFile(tmp_path / "pathmnist.npz", "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    message = refused("pathmnist", tmp_path)
    assert "train_images" in message and "more than the" in message


def _mat_element(kind: int, payload: bytes) -> bytes:
    return struct.pack("<II", kind, len(payload)) + payload + b"\x00" * (-len(payload) % 8)


def _mat_matrix(name: str, dims: tuple[int, ...], data: bytes) -> bytes:
    body = (_mat_element(6, struct.pack("<II", 9, 0))  # array flags: mxUINT8_CLASS
            + _mat_element(5, struct.pack(f"<{len(dims)}i", *dims)) + _mat_element(1, name.encode())
            + _mat_element(2, data))
    return _mat_element(14, body)


def test_mat_sizes_beyond_the_file_are_refused(tmp_path):
    header = b"MATLAB 5.0 MAT-file".ljust(116, b" ") + b"\x00" * 8 + struct.pack("<H", 0x0100) + b"IM"
    path = tmp_path / "x.mat"
    path.write_bytes(header + _mat_matrix("X", (2**30, 2**30), b"\x00" * 16))  # dims far beyond the data
    with pytest.raises(ValueError, match="does not fit its declared size"):
        read_mat(path, ("X",))
    path.write_bytes(header + struct.pack("<II", 14, 2**31) + b"\x00" * 40)  # an element beyond the file
    with pytest.raises(ValueError, match="claims 2147483648 bytes"):
        read_mat(path, ("X",))
    bomb = zlib.compress(struct.pack("<II", 14, 2**31) + b"\x00" * 64)  # a compressed element claiming 2 GiB
    path.write_bytes(header + struct.pack("<II", 15, len(bomb)) + bomb)
    with pytest.raises(ValueError, match="more than .* compressed bytes can hold"):
        read_mat(path, ("X",))
    write_svhn(tmp_path / "svhn")
    (tmp_path / "svhn/test_32x32.mat").write_bytes(header + _mat_matrix("X", (32, 32, 3, 2**20), b"\x00" * 64))
    assert "does not fit its declared size" in refused("SVHN", tmp_path / "svhn")


def test_mat_reader_matches_what_matlab_files_hold(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    arrays = {"X": rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8), "y": rng.integers(1, 11, (5, 1)) * 1.0}
    for compressed in (False, True):
        path = tmp_path / f"svhn_{compressed}.mat"
        scipy.io.savemat(path, {**arrays, "note": "text is skipped"}, do_compression=compressed)
        found = read_mat(path, ("X", "y"))
        assert all(np.array_equal(found[key], value) and found[key].dtype == value.dtype
                   for key, value in arrays.items())


# ------------------------------------------------------------------------------ random damage to real files
def _damaged_versions(data: bytes, count: int, seed: int):
    rng = np.random.default_rng(seed)
    for k in range(count):
        damaged = bytearray(data)
        if k % 3 == 0:
            damaged = damaged[: int(rng.integers(0, len(data)))]
        elif k % 3 == 1:
            for _ in range(int(rng.integers(1, 12))):
                damaged[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        else:
            damaged = bytearray(rng.bytes(int(rng.integers(1, 4000))))
        yield bytes(damaged)


@pytest.mark.parametrize("name, writer, file", [
    ("CIFAR10", write_cifar10, "data_batch_1"),
    ("MNIST", lambda folder: write_mnist(folder, gz=True), "t10k-images-idx3-ubyte.gz"),
    ("MNIST", lambda folder: write_mnist(folder, gz=False), "train-labels-idx1-ubyte"),
    ("SVHN", write_svhn, "train_32x32.mat"),
    ("pathmnist", write_pathmnist, "pathmnist.npz"),
])
def test_random_damage_is_read_or_refused_in_one_line(tmp_path, name, writer, file):
    writer(tmp_path)
    original = (tmp_path / file).read_bytes()
    refusals = 0
    for data in _damaged_versions(original, 40, seed=len(file)):
        (tmp_path / file).write_bytes(data)
        try:
            load_dataset(name, tmp_path, download=False)
        except UserError as err:
            assert "\n" not in str(err) and "more memory" not in str(err)
            refusals += 1
    assert refusals >= 20


def test_pickle_refusals_never_unpickle_code(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({"data": print}, protocol=2))
    assert "refusing" in refused("CIFAR10", tmp_path)
