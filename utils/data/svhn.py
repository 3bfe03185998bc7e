"""SVHN: the MATLAB files train_32x32.mat and test_32x32.mat. SVHN writes digit 0 as label 10; it is
mapped back to 0.

The files are read by a small MAT-file (level 5, as MATLAB -v6/-v7 and scipy.io.savemat write them) reader
of numeric matrices, not scipy.io.loadmat: scipy trusts the sizes in a file's headers (a damaged SVHN file
crashed the process with a segmentation fault). Here every size is checked against the bytes that are really
there before anything is allocated, so any damage is one FormatError naming the file.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np

from utils.data.raw import FormatError, RawDataset, RawSplit, first_folder, has_files, reading
from utils.data.spec import DatasetSpec

# MAT-file level 5 data types (the numeric ones, as numpy kinds) and the two container types
_NUMERIC = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_INT8, _INT32, _UINT32 = 1, 5, 6
_MATRIX, _COMPRESSED = 14, 15
# mxDOUBLE_CLASS .. mxUINT64_CLASS: the type MATLAB means (its storage type may be smaller, e.g. uint8 for
# whole-number doubles)
_CLASSES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}
_MAX_DEFLATE_RATIO = 1032  # deflate cannot expand data more than this: bounds a compressed element's claim


class _Reader:
    """Tagged data elements of one MAT-file buffer, with every size checked against the buffer."""

    def __init__(self, path: Path, endian: str):
        self.path, self.endian = path, endian

    def tag(self, buf, pos: int, end: int) -> tuple[int, int, int, int]:
        """(type, nbytes, data start, next element) of the element at `pos`."""
        if pos + 8 > end:
            raise FormatError(f"{self.path} is truncated (an element header at byte {pos} is cut short)")
        first, second = struct.unpack_from(f"{self.endian}II", buf, pos)
        if first >> 16:  # the small element format: type, size and up to 4 bytes of data in 8 bytes
            kind, nbytes = first & 0xFFFF, first >> 16
            if nbytes > 4:
                raise FormatError(f"{self.path}: a small element at byte {pos} claims {nbytes} bytes")
            return kind, nbytes, pos + 4, pos + 8
        kind, nbytes = first, second
        if nbytes > end - pos - 8:
            raise FormatError(f"{self.path}: an element at byte {pos} claims {nbytes} bytes, but only "
                              f"{end - pos - 8} remain (damaged or truncated)")
        padded = nbytes if kind == _COMPRESSED else (nbytes + 7) // 8 * 8
        return kind, nbytes, pos + 8, min(pos + 8 + padded, end)

    def numbers(self, buf, pos: int, end: int, expect: int | None = None) -> np.ndarray:
        kind, nbytes, start, after = self.tag(buf, pos, end)
        if kind not in _NUMERIC:
            raise FormatError(f"{self.path}: expected numbers at byte {pos}, found element type {kind}")
        dtype = np.dtype(_NUMERIC[kind]).newbyteorder(self.endian)
        if nbytes % dtype.itemsize or (expect is not None and nbytes != expect * dtype.itemsize):
            raise FormatError(f"{self.path}: an array at byte {pos} has {nbytes} bytes, which does not fit its "
                              "declared size")
        return np.frombuffer(buf, dtype=dtype, count=nbytes // dtype.itemsize, offset=start), after

    def matrix(self, buf, start: int, end: int) -> tuple[str, np.ndarray | None]:
        """(name, array in MATLAB's column-major order) of a miMATRIX element's contents; None for what is
        not a real numeric matrix (text, cells, structs, sparse, complex), which SVHN does not need."""
        flags, pos = self.numbers(buf, start, end)
        if len(flags) < 2:
            raise FormatError(f"{self.path}: a matrix at byte {start} has no array flags")
        dims, pos = self.numbers(buf, pos, end)
        names, pos = self.numbers(buf, pos, end)
        name = bytes(names.astype(np.uint8)).decode("ascii", "replace")
        array_class = int(flags[0]) & 0xFF
        if array_class not in _CLASSES or int(flags[0]) & 0x800:
            return name, None
        shape = tuple(int(d) for d in dims)
        if any(d < 0 for d in shape):
            raise FormatError(f"{self.path}: {name!r} has negative dimensions {shape}")
        values, _ = self.numbers(buf, pos, end, expect=math.prod(shape))
        return name, values.reshape(shape, order="F").astype(_CLASSES[array_class])  # a private copy


def read_mat(path: Path, wanted: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The real numeric matrices `wanted` of a MAT-file level 5 (as native-order numpy arrays)."""
    size = path.stat().st_size
    if size < 128:
        raise FormatError(f"{path} is too short for a MAT-file ({size} bytes)")
    buf = path.read_bytes()  # what the file holds, no more: every size below is checked against it
    header = buf[:128]
    if header.startswith(b"MATLAB 7.3") or buf[512:520] == b"\x89HDF\r\n\x1a\n":
        raise FormatError(f"{path} is a MATLAB 7.3 (HDF5) file; save it with -v7 (or download it again)")
    marker = header[126:128]
    if marker not in (b"IM", b"MI"):
        raise FormatError(f"{path} is not a MAT-file (no level 5 header)")
    reader = _Reader(path, "<" if marker == b"IM" else ">")
    found: dict[str, np.ndarray] = {}
    pos = 128
    while pos < size and len(found) < len(wanted):
        kind, nbytes, start, after = reader.tag(buf, pos, size)
        if kind == _MATRIX:
            name, array = reader.matrix(buf, start, start + nbytes)
        elif kind == _COMPRESSED:
            name, array = _compressed_matrix(reader, buf[start:start + nbytes], pos)
        else:
            name, array = "", None
        if name in wanted and array is not None:
            found[name] = array
        pos = after
    missing = [name for name in wanted if name not in found]
    if missing:
        raise FormatError(f"{path} has no numeric matrix {', '.join(repr(name) for name in missing)}")
    return found


def _compressed_matrix(reader: _Reader, data: bytes, pos: int) -> tuple[str, np.ndarray | None]:
    """A miCOMPRESSED element: one zlib stream holding one element. Its size is read from the first 8
    inflated bytes and bounded by what the compressed bytes can hold before inflating the rest."""
    inflate = zlib.decompressobj()
    try:
        head = inflate.decompress(data, 8)
        if len(head) < 8:
            raise FormatError(f"{reader.path}: the compressed element at byte {pos} is truncated")
        kind, nbytes = struct.unpack(f"{reader.endian}II", head)
        if kind != _MATRIX:
            return "", None
        if nbytes > len(data) * _MAX_DEFLATE_RATIO:
            raise FormatError(f"{reader.path}: the compressed element at byte {pos} claims {nbytes} bytes, more "
                              f"than {len(data)} compressed bytes can hold")
        body = inflate.decompress(inflate.unconsumed_tail, nbytes)
    except zlib.error as err:
        raise FormatError(f"{reader.path}: the compressed element at byte {pos} is damaged ({err})") from None
    if len(body) != nbytes:
        raise FormatError(f"{reader.path}: the compressed element at byte {pos} is truncated")
    return reader.matrix(body, 0, nbytes)


def find_svhn(path: Path) -> Path | None:
    return first_folder(path, has_files("train_32x32.mat", "test_32x32.mat"))


def _read_svhn_split(path: Path) -> RawSplit:
    with reading(path):
        mat = read_mat(path, ("X", "y"))
        if mat["X"].ndim != 4:
            raise FormatError(f"{path}: X has shape {mat['X'].shape}, expected (32, 32, 3, N)")
        images = np.transpose(mat["X"], (3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
        labels = mat["y"].reshape(-1).astype(np.int64)
    return RawSplit([images], np.where(labels == 10, 0, labels))  # SVHN writes digit 0 as 10


def read_svhn(folder: Path, spec: DatasetSpec) -> RawDataset:
    train = _read_svhn_split(folder / "train_32x32.mat")
    test = _read_svhn_split(folder / "test_32x32.mat")
    return RawDataset(train, test, [str(d) for d in range(10)])
