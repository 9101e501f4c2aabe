"""CIFAR-10: ``cifar-10-python.tar.gz`` (pickled batches), read without extracting to disk.

The batches are pickles, so they are read with ``SafeUnpickler``, which rebuilds numpy arrays
and refuses every other global: a tampered archive cannot run code. Allowed: the numpy array
reconstructors, ``numpy.ndarray``, ``numpy.dtype``, and ``_codecs.encode`` (text -> bytes, which
protocol-2 pickles written by Python 3 use for an array's raw data).
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Optional

import numpy as np

from datasets.base import DatasetError, SourceData, Split, index_ids, make_split
from datasets.files import FileCheck, Location, archive_path, read_tar_members

ARCHIVE = "cifar-10-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CHECK: Optional[FileCheck] = FileCheck(170_498_071, "c58f30108f718f92721af3b95e74349a")
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
VAL_FRACTION_DEN = 5          # 50,000 -> 10,000 validation
NUM_CLASSES = 10
_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the numpy globals needed to rebuild an ndarray."""

    source = "pickle"

    def find_class(self, module: str, name: str):
        """Allow only the ndarray-rebuilding globals; anything else -> DatasetError."""
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DatasetError(f"{self.source}: refusing to unpickle {module}.{name} (only numpy arrays "
                               "are allowed); the file is not a genuine CIFAR-10 batch, delete it and get a fresh copy")
        return super().find_class(module, name)


def safe_load(data: bytes, source: str) -> object:
    """Unpickle ``data`` (latin-1 for Python 2 pickles) with SafeUnpickler; errors name ``source``."""
    unpickler = SafeUnpickler(io.BytesIO(data), encoding="latin1")
    unpickler.source = source
    try:
        return unpickler.load()
    except DatasetError:
        raise
    except Exception as exc:  # any malformed pickle: the message is what the user needs
        raise DatasetError(f"{source}: cannot unpickle it ({type(exc).__name__}: {' '.join(str(exc).split())}); "
                           "delete the archive and get a fresh copy") from None


def batch_to_arrays(batch: object, source: str) -> tuple:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) from one unpickled batch dict."""
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DatasetError(f"{source}: not a CIFAR-10 batch (need a dict with 'data' and 'labels'); get a fresh copy")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.size:
        raise DatasetError(f"{source}: data {data.dtype} {data.shape} does not match (N, 3072) uint8 with "
                           f"{labels.size} labels; get a fresh copy")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetError(f"{source}: labels outside 0..9; get a fresh copy")
    return data.reshape(-1, 3, 32, 32), labels


def parse_cifar10_archive(path: Path) -> tuple:
    """(pool, test) Splits at 32x32 from a cifar-10-python.tar.gz (not verified here).

    pool = data_batch_1..5 in order (ids ``cifar10/data_batch_<k>/<i>``), test = test_batch.
    """
    path = Path(path)
    names = {f"{FOLDER}/{b}": b for b in TRAIN_BATCHES + (TEST_BATCH,)}
    members = read_tar_members(path, set(names))
    parts = {}
    for member, batch in names.items():
        source = f"{path}:{member}"
        images, labels = batch_to_arrays(safe_load(members[member], source), source)
        parts[batch] = make_split(images, labels, index_ids(f"cifar10/{batch}", labels.size))
    pool = _concat([parts[b] for b in TRAIN_BATCHES])
    return pool, parts[TEST_BATCH]


def _concat(splits: list) -> Split:
    return make_split(np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits]),
                      np.concatenate([s.ids for s in splits]))


def load(location: Location) -> SourceData:
    """Decode CIFAR-10 (verified against CHECK): pool 50,000, test 10,000, 3x32x32."""
    path = archive_path(location, "cifar10", ARCHIVE, URL, CHECK)
    pool, test = parse_cifar10_archive(path)
    return SourceData(pool, test, len(pool) // VAL_FRACTION_DEN)
