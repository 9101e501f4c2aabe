"""MNIST: the four IDX files (gzipped or not), verified on their decompressed content."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from datasets.base import DatasetError, SourceData, Split, index_ids, make_split
from datasets.files import ContentError, FileCheck, Location, fetch, find_file, missing_error, verify_bytes
from datasets.imageops import to_working_size

URLS = ("http://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
# Checks of the decompressed content; a file missing from this mapping is not checked (tests).
CHECKS = {
    TRAIN_IMAGES: FileCheck(47_040_016, "6bbc9ace898e44ae57da46a324031adb"),
    TRAIN_LABELS: FileCheck(60_008, "a25bea736e30d166cdddb491f175f624"),
    TEST_IMAGES: FileCheck(7_840_016, "2646ac647ad5339dbf082846283269ea"),
    TEST_LABELS: FileCheck(10_008, "27ae3e4e09519cfbb04c329615203637"),
}
VAL_FRACTION_DEN = 6          # 60,000 -> 10,000 validation
NUM_CLASSES = 10
_IDX_UBYTE = 0x08


def read_raw(path: Path) -> bytes:
    """File content, gunzipped when the name ends in .gz; a bad archive -> DatasetError."""
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except (EOFError, zlib.error, OSError) as exc:
        raise ContentError(path, f"cannot read it ({' '.join(str(exc).split())})",
                           "delete it and put a complete copy there") from None


def parse_idx(data: bytes, ndim: int, path: Path) -> np.ndarray:
    """Parse an unsigned-byte IDX file with ``ndim`` dimensions (header checked, exact length)."""
    if len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: IDX header truncated ({len(data)} B); "
                           "delete it and put a complete copy there")
    magic = int.from_bytes(data[:4], "big")
    if magic != (_IDX_UBYTE << 8 | ndim):
        raise DatasetError(f"{path}: not an unsigned-byte IDX file with {ndim} dimensions (magic "
                           f"0x{magic:08x}, expected 0x{_IDX_UBYTE << 8 | ndim:08x}); "
                           "put the right MNIST file there")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    start = 4 + 4 * ndim
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - start != expected:
        raise DatasetError(f"{path}: IDX dims {dims} need {expected} data bytes, found {len(data) - start}; "
                           "the file is truncated or corrupt, delete it and put a complete copy there")
    return np.frombuffer(data, dtype=np.uint8, offset=start).reshape(dims)


def read_idx_file(path: Path, ndim: int, check: Optional[FileCheck] = None) -> np.ndarray:
    """Read, optionally verify (decompressed size and md5), and parse one IDX file."""
    data = read_raw(path)
    if check is not None:
        verify_bytes(data, check, path, "decompressed " if path.suffix == ".gz" else "")
    return parse_idx(data, ndim, path)


def read_pair(images_path: Path, labels_path: Path, prefix: str,
              checks: Optional[dict] = None) -> Split:
    """One images+labels IDX pair as a Split at native size (ids ``<prefix>/<i>``)."""
    checks = checks or {}
    images = read_idx_file(images_path, 3, checks.get(_stem(images_path)))
    labels = read_idx_file(labels_path, 1, checks.get(_stem(labels_path)))
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{images_path}: {images.shape[0]} images but {labels_path.name} has "
                           f"{labels.shape[0]} labels; put matching MNIST files there")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DatasetError(f"{labels_path}: label {int(labels.max())} out of range 0..9; "
                           "put the real MNIST file there")
    return make_split(images[:, None], labels, index_ids(prefix, labels.shape[0]))


def _stem(path: Path) -> str:
    return path.name[:-3] if path.name.endswith(".gz") else path.name


def _verify_download(check: Optional[FileCheck]):
    """Download check: the .gz must decompress and, with a check, match it."""

    def verify(tmp: Path) -> None:
        data = read_raw(tmp)
        if check is not None:
            verify_bytes(data, check, tmp, "decompressed ")
    return verify


def find_or_fetch(location: Location, fname: str, checks: Optional[dict]) -> Path:
    """Path of ``fname`` or ``fname.gz``; downloaded (.gz) into the cache when allowed."""
    found = find_file(location, (fname, fname + ".gz"))
    if found is not None:
        return found
    urls = [base + fname + ".gz" for base in URLS]
    if location.cache is None:
        raise missing_error("mnist", fname + ".gz", urls[0], location.home)
    check = (checks or {}).get(fname)
    return fetch("mnist", fname + ".gz", urls, location.cache / (fname + ".gz"), _verify_download(check))


def load(location: Location, native: bool = False) -> SourceData:
    """Decode MNIST at 32x32 (``native``: at its own 28x28): pool = the 60,000 training images, test =
    the 10,000 t10k images."""
    paths = {fname: find_or_fetch(location, fname, CHECKS) for fname in FILES}
    pool = read_pair(paths[TRAIN_IMAGES], paths[TRAIN_LABELS], "mnist/train", CHECKS)
    test = read_pair(paths[TEST_IMAGES], paths[TEST_LABELS], "mnist/test", CHECKS)
    if not native:
        pool.images = to_working_size(pool.images)
        test.images = to_working_size(test.images)
    return SourceData(pool, test, len(pool) // VAL_FRACTION_DEN)
