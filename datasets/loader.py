"""``load_dataset``: decode once per process, then split per trial seed.

Split rule: ``perm = np.random.RandomState(seed).permutation(len(pool))``; validation =
``pool[perm[:n_val]]``, train = ``pool[perm[n_val:]]`` (permutation order). For own CSV data with
a validation CSV, train is the training CSV in row order and validation the validation CSV.
``n_train``/``n_val``/``n_test`` then keep the first N of each split; a count above the split's
size keeps the whole split (logged). The training split that results must hold two classes or
more, whatever the source (``_check_training_split``, the one place that refuses it).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from datasets import cifar10, digits, mnist, nnc_csv, stl10
from datasets.base import DataBundle, DatasetError, SourceData, Split, index_ids, make_split, norm_stats
from datasets.files import locate
from datasets.imageops import resize_images

log = logging.getLogger(__name__)

BUILTIN_CLASSES = 10
FILE_SOURCES: dict = {"mnist": mnist.load, "cifar10": cifar10.load, "stl10": stl10.load}
BUILTINS = ("digits",) + tuple(FILE_SOURCES)
CSV_VAL_FRACTION = 0.2
_DECODED: dict = {}


#: in-memory datasets registered by ``register_arrays`` (name -> (train, val, test, num_classes))
_ARRAYS: dict = {}


_ROLE_NAMES = {"train": "training", "val": "validation", "test": "test"}
_LABELS_SHOWN = 10


def _labels_named(values: np.ndarray) -> str:
    """'label 10 ... is' or 'labels 10, 12 ... are' (at most ``_LABELS_SHOWN`` distinct values)."""
    distinct = [int(v) for v in np.unique(values)]
    shown = ", ".join(map(str, distinct[:_LABELS_SHOWN]))
    if len(distinct) > _LABELS_SHOWN:
        shown += f" and {len(distinct) - _LABELS_SHOWN} more"
    return f"label {shown} of the {{}} arrays is" if len(distinct) == 1 else f"labels {shown} of the {{}} arrays are"


def _check_array_labels(labels: dict, num_classes: Optional[int]) -> None:
    """Integer labels (role -> array), each a class index 0 .. num_classes - 1 (0, 1, 2, ... when
    num_classes is None); the first split that breaks this is named with its offending labels."""
    indices = "0, 1, 2, ..." if num_classes is None else f"0..{num_classes - 1}"
    for role, values in labels.items():
        if values.dtype.kind not in "iu":
            raise DatasetError(f"{_ROLE_NAMES[role]} labels must be integers (class indices 0, 1, 2, ...), "
                               f"got {values.dtype}")
        negative = values[values < 0]
        if negative.size:
            raise DatasetError(f"{_labels_named(negative).format(_ROLE_NAMES[role])} negative; "
                               f"labels must be class indices {indices}: relabel those samples")
    if num_classes is None:
        return
    largest = max(int(values.max()) for values in labels.values())
    for role, values in labels.items():
        too_large = values[values >= num_classes]
        if too_large.size:
            raise DatasetError(f"{_labels_named(too_large).format(_ROLE_NAMES[role])} not below num_classes "
                               f"{num_classes}; relabel those samples {indices} or give num_classes={largest + 1} "
                               "(or more)")


def register_arrays(name: str, train: tuple, val: tuple, test: tuple, num_classes: Optional[int] = None) -> str:
    """Make numpy data a dataset ``name`` of this process: each split a pair (images, labels) with
    uint8 images (N, C, H, W) or (N, H, W) and integer labels, each a class index below
    ``num_classes`` (default: the largest label of any split + 1); the splits are used as given (no
    seeded split; ``n_*`` keep the first rows). Returns ``name``."""
    if name in BUILTINS or str(name).lower().endswith(".csv"):
        raise DatasetError(f"dataset name {name!r} is taken by a built-in or own CSV data; choose another")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
                                    or num_classes < 2):
        raise DatasetError(f"num_classes must be an integer of at least 2, or None for the largest label + 1; "
                           f"got {num_classes!r}")
    pairs = {}
    for role, pair in (("train", train), ("val", val), ("test", test)):
        images, labels = (np.asarray(a) for a in pair)
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels) or len(images) == 0:
            raise DatasetError(f"{role} images must be a non-empty uint8 array (N, C, H, W) or (N, H, W) with one "
                               f"label each; got {images.dtype} {images.shape} and {len(labels)} labels")
        pairs[role] = (images, labels)
    _check_array_labels({role: labels for role, (_, labels) in pairs.items()}, num_classes)
    splits = [make_split(images, labels, index_ids(f"{name}/{role}", len(labels)))
              for role, (images, labels) in pairs.items()]
    if len({s.images.shape[1:] for s in splits}) != 1:
        raise DatasetError("train, validation and test images must have one shape")
    classes = int(num_classes or max(int(s.labels.max()) for s in splits) + 1)
    _ARRAYS[name] = (*splits, classes)
    return name


def clear_cache() -> None:
    """Forget every decoded dataset (tests; memory)."""
    _DECODED.clear()


def _memoised(key: tuple, decode: Callable[[], object]) -> object:
    if key not in _DECODED:
        _DECODED[key] = decode()
    return _DECODED[key]


def _check_count(value: Optional[int], what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise DatasetError(f"{what} must be a positive integer or unset, got {value!r}")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 32:
        raise DatasetError(f"seed must be an integer in 0..2**32-1, got {seed!r}")


def _first(split: Split, count: Optional[int], what: str) -> Split:
    if count is None:
        return split
    if count > len(split):
        log.info("%s=%d is more than the %d samples available; keeping all of them", what, count, len(split))
    return split.subset(np.arange(min(count, len(split))))


def _firsts(splits: tuple, counts: tuple) -> tuple:
    """(train, validation, test), each cut to the first ``n_train``/``n_val``/``n_test`` rows."""
    names = ("n_train", "n_val", "n_test")
    return tuple(_first(split, count, what) for split, count, what in zip(splits, counts, names))


def seeded_split(pool: Split, n_val: int, seed: int) -> tuple:
    """(train, validation): validation = first n_val of RandomState(seed).permutation, train = rest."""
    perm = np.random.RandomState(seed).permutation(len(pool))
    return pool.subset(perm[n_val:]), pool.subset(perm[:n_val])


#: built-in sources that resize their images at decoding (the others are at their working size)
RESIZED_SOURCES = ("digits", "mnist")


def _builtin_source(name: str, data_dir: Optional[str], native: bool = False) -> SourceData:
    """The decoded source; ``native``: at the images' own size (for a model that fixes its input size)."""
    native = native and name in RESIZED_SOURCES
    if name == "digits":
        if native:
            return _memoised(("digits", "native"), lambda: digits.load(native=True))
        return _memoised(("digits",), digits.load)
    location = locate(name, data_dir)
    key = (name,) + tuple(str(f) for f in location.folders)
    if native:
        return _memoised(key + ("native",), lambda: FILE_SOURCES[name](location, native=True))
    return _memoised(key, lambda: FILE_SOURCES[name](location))


def _file_key(path: Optional[Path]) -> tuple:
    if path is None:
        return (None,)
    stat = path.stat()
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def _csv_paths(train_csv: str, val_csv: Optional[str], test_csv: Optional[str]) -> tuple:
    train_path = Path(train_csv).expanduser()
    if not train_path.is_file():
        raise DatasetError(f"training CSV {train_path} not found; check the path given as the dataset")
    return (train_path,) + tuple(nnc_csv.companion_paths(train_path, val_csv, test_csv))


def _csv_source(train_csv: str, val_csv: Optional[str], test_csv: Optional[str]) -> nnc_csv.CsvSource:
    paths = _csv_paths(train_csv, val_csv, test_csv)
    key = ("csv",) + sum((_file_key(p) for p in paths), ())
    return _memoised(key, lambda: nnc_csv.read_source(*paths))


def _first_rows(idx: np.ndarray, count: Optional[int], what: str) -> np.ndarray:
    if count is not None and count > len(idx):
        log.info("%s=%d is more than the %d samples available; keeping all of them", what, count, len(idx))
    return idx if count is None else idx[:count]


def _resized(split: Split, size: tuple) -> Split:
    """``split`` with its images resized to ``size`` (itself when they have that size)."""
    if tuple(split.images.shape[2:]) == size:
        return split
    return Split(resize_images(split.images, size), split.labels, split.ids)


def _csv_splits(train_csv: str, seed: int, val_csv: Optional[str], test_csv: Optional[str],
                counts: tuple, size: Optional[tuple] = None) -> tuple:
    """(train, validation, test, num_classes, training rows before ``n_train``) of own CSV data;
    only the rows kept are decoded (at ``size`` when given, else the working size)."""
    src = _csv_source(train_csv, val_csv, test_csv)
    n_train, n_val, n_test = counts
    rows = np.arange(len(src.train.values))
    if src.val is None:
        n_val_split = min(max(1, int(round(CSV_VAL_FRACTION * len(rows)))), len(rows) - 1)
        log.info("no validation CSV beside %s: using a seeded 80/20 split of it (seed %d): "
                 "%d train + %d validation", src.train.path, seed, len(rows) - n_val_split, n_val_split)
        perm = np.random.RandomState(seed).permutation(len(rows))
        train_idx, val_idx, val_from = perm[n_val_split:], perm[:n_val_split], "train"
    else:
        train_idx, val_idx, val_from = rows, np.arange(len(src.val.values)), "val"
    train = src.split("train", _first_rows(train_idx, n_train, "n_train"), size)
    val = src.split(val_from, _first_rows(val_idx, n_val, "n_val"), size)
    test = src.split("test", _first_rows(np.arange(len(src.test.values)), n_test, "n_test"), size)
    return train, val, test, src.num_classes, len(train_idx)


_WARNED: set = set()


def _warn_unlearnable(train: Split, val: Split, test: Split) -> None:
    """Log the validation and test classes that no training sample has, once per process and
    message (every task of a run loads its trial's data: the warning is said once, not per task)."""
    missing = sorted(set(np.unique(val.labels)) - set(np.unique(train.labels)))
    missing_test = sorted(set(np.unique(test.labels)) - set(np.unique(train.labels)))
    for what, classes in (("validation", missing), ("test", missing_test)):
        text = (f"the {what} set has class(es) {', '.join(map(str, classes))} that no training sample has: "
                f"the model cannot learn them")
        if classes and text not in _WARNED:
            _WARNED.add(text)
            log.warning(text)


def input_fingerprints(name: str, val_csv: Optional[str] = None, test_csv: Optional[str] = None,
                       counts: tuple = (None, None, None)) -> dict:
    """``{"train_data", "val_data", "test_data"}``: SHA-256 of own CSV data (each CSV file and the
    images of the rows a run can use: with a validation CSV the first ``n_train``/``n_val``/``n_test``
    rows, without one every training row, since each trial draws its own split); None where a split
    has no file of its own, and for the built-ins, whose files are checked against their published
    checksums instead."""
    if name in _ARRAYS:
        return {f"{role}_data": _array_digest(split, n)
                for role, split, n in zip(("train", "val", "test"), _ARRAYS[name][:3], counts)}
    if not str(name).lower().endswith(".csv"):
        return {"train_data": None, "val_data": None, "test_data": None}
    train, val, test = _csv_paths(name, val_csv, test_csv)
    key = ("fingerprint", counts) + _file_key(train) + _file_key(val) + _file_key(test)

    def compute() -> dict:
        src = _csv_source(name, val_csv, test_csv)
        n_train, n_val, n_test = counts if src.val is not None else (None, None, counts[2])
        return {"train_data": nnc_csv.fingerprint(src.train, n_train),
                "val_data": nnc_csv.fingerprint(src.val, n_val) if src.val is not None else None,
                "test_data": nnc_csv.fingerprint(src.test, n_test)}
    return dict(_memoised(key, compute))


def _array_digest(split: Split, count: Optional[int]) -> str:
    part = _first(split, count, "n")
    h = hashlib.sha256(part.images.tobytes())
    h.update(part.labels.astype(np.int64).tobytes())
    return h.hexdigest()


def input_paths(name: str, data_dir: Optional[str] = None, val_csv: Optional[str] = None,
                test_csv: Optional[str] = None) -> list:
    """Files and folders a run reads its data from (a run's output folder must not hold them)."""
    out = [Path(data_dir)] if data_dir else []
    if str(name).lower().endswith(".csv"):
        src = _csv_source(name, val_csv, test_csv)
        for rows in (src.train, src.val, src.test):
            if rows is not None:
                out += [rows.path, *nnc_csv.image_folders(rows)]
    return out


def load_dataset(name: str, seed: int, data_dir: Optional[str] = None, n_train: Optional[int] = None,
                 n_val: Optional[int] = None, n_test: Optional[int] = None,
                 val_csv: Optional[str] = None, test_csv: Optional[str] = None,
                 image_size: Optional[tuple] = None) -> DataBundle:
    """Load dataset ``name`` ('digits', 'mnist', 'cifar10', 'stl10' or an NNC .csv path) for trial ``seed``.

    Decoding is done once per process per (name, folder); see the module doc for the split rule.
    ``data_dir`` applies to the built-ins that read files; ``val_csv``/``test_csv`` to own CSV data.
    ``image_size`` (h, w): images resized from their own size to it instead of the working size (a
    model that fixes its input size, ``models.nnp``; MNIST's 28x28 stay as they are).
    Every bad input raises DatasetError with a one-line message.
    """
    _check_seed(seed)
    for value, what in ((n_train, "n_train"), (n_val, "n_val"), (n_test, "n_test")):
        _check_count(value, what)
    if name in _ARRAYS:
        train, val, test, num_classes = _ARRAYS[name]
        available, where, remedy = len(train), "the training arrays", "give training labels of two classes or more"
        train, val, test = _firsts((train, val, test), (n_train, n_val, n_test))
    elif name in BUILTINS:
        if val_csv or test_csv:
            raise DatasetError(f"--val-csv/--test-csv apply only to own CSV data, not to the built-in dataset {name!r}")
        source = _builtin_source(name, data_dir, native=image_size is not None)
        train, val = seeded_split(source.pool, source.n_val, seed)
        test = source.test.subset(np.arange(len(source.test)))
        available, where, remedy = len(train), f"dataset {name}, trial seed {seed}", "use more training samples"
        train, val, test = _firsts((train, val, test), (n_train, n_val, n_test))
        num_classes = BUILTIN_CLASSES
    elif str(name).lower().endswith(".csv"):
        train, val, test, num_classes, available = _csv_splits(name, seed, val_csv, test_csv,
                                                               (n_train, n_val, n_test), image_size)
        where, remedy = str(name), "add training rows of another class"
    else:
        raise DatasetError(f"unknown dataset {name!r}; "
                           "use digits, mnist, cifar10, stl10 or the path of an NNC .csv file")
    if image_size is not None:
        train, val, test = (_resized(s, tuple(image_size)) for s in (train, val, test))
    _check_training_split(train.labels, where, remedy if n_train is None or n_train >= available
                          else f"raise --n-train (now {n_train}) until the training split holds two classes")
    if name not in _ARRAYS and name not in BUILTINS:    # own CSV data
        _warn_unlearnable(train, val, test)
    mean, std = norm_stats(train.images.shape[1])
    return DataBundle(name, train, val, test, num_classes, mean, std)


def _check_training_split(labels: np.ndarray, where: str, remedy: str) -> None:
    """The one check every data source's training split passes (built-ins, own CSV data, registered
    arrays, after ``n_train``): at least two samples of at least two classes."""
    classes = np.unique(labels)
    if classes.size >= 2:
        return
    if labels.size == 0:
        held = "no samples"
    elif labels.size == 1:
        held = f"1 sample (label {int(classes[0])})"
    else:
        held = f"{labels.size} samples, all of label {int(classes[0])}"
    raise DatasetError(f"{where}: the training split has {held}; a classifier needs at least two classes; {remedy}")


def downsample(split: Split, size: int = 4) -> Split:
    """32x32 images averaged down to ``size`` x ``size`` (small exact problems: explicit Hessians)."""
    f = 32 // size
    im = split.images.astype(np.float64).reshape(len(split), 1, size, f, size, f).mean(axis=(3, 5))
    return Split(np.round(im).astype(np.uint8), split.labels, split.ids)


def small_digits(n_train: Optional[int] = None, n_val: Optional[int] = None, seed: int = 0,
                 size: int = 4) -> DataBundle:
    """scikit-learn's digits at ``size`` x ``size`` (default 4x4), grey, normalised with 0.5 / 0.5:
    problems small enough for explicit Hessians (the tests and ``bench/gn_detection.py``)."""
    d = load_dataset("digits", seed, n_train=n_train, n_val=n_val)
    parts = [downsample(x, size) for x in (d.train, d.val, d.test)]
    return DataBundle(f"digits{size}", *parts, 10, (0.5,), (0.5,))
