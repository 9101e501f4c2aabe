"""Own data in Neural Network Console CSV format: header ``x:image,y:label``, one image per row.

Image paths are relative to the CSV's folder (absolute paths work too); PNG, JPEG and whatever
else PIL reads. Columns after the first two are ignored (so this tool's influence CSVs load too).
Channels: the first training image decides: a one-band image (1, L, LA, I, I;16, F) makes the whole
dataset grey (1 channel), anything else RGB (3 channels); every image is converted to that mode.
Size: every image is resized to the working size of the first training image.
Labels are class indices written as plain decimal digits (0, 1, 2, ...) below ``MAX_CLASSES``;
num_classes = max label over all splits + 1.

Pixel values (``_eight_bit``), per mode PIL opens an image in:

* 1, L, RGB (8 bits per sample): as stored (1: 0 or 255).
* 16-bit grey (I;16, I;16B, I;16L, and I, as which some Pillow versions open 16-bit PNGs and PPMs):
  each value keeps its high byte (v >> 8, i.e. v // 256), as libpng's strip-16 does and as PIL
  itself reduces 16-bit RGB, RGBA and grey+alpha PNGs (which it opens as RGB/RGBA, so a 16-bit
  grey+alpha first image makes the dataset RGB); this recovers 8-bit data widened either way
  (v * 256 as nnabla's image writer does, v * 257 as the PNG specification does) exactly. An I
  image with a value outside 0..65535 (a 32-bit integer TIFF) is refused in one line naming the
  file and the mode.
* F (32-bit float): accepted only when every value is a whole number 0..255 (then as stored);
  anything else (fractions, as in 0..1-scaled images, negative, above 255, NaN) is refused in one
  line naming the file and the mode: floats have no range a reader could assume.
* Alpha (LA, RGBA, PA, and P with a ``transparency`` entry) is dropped: every pixel keeps its
  stored colour whatever its opacity (no compositing onto a background), which is what nnabla's
  image reader returns when it asks PIL for grey or RGB. A P image with transparency is
  expanded to RGBA first (its palette colours, no PIL warning), then converted.
* P without transparency: its palette colours. CMYK: PIL's conversion without a colour profile
  (ICC profiles are ignored for every mode). Modes PIL cannot convert are refused in one line.
"""
from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from datasets.base import DatasetError, Split, make_split
from datasets.imageops import resize_images, working_size

HEADER = ("x:image", "y:label")
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
#: labels are 0 .. MAX_CLASSES - 1 (the output layer has max label + 1 units)
MAX_CLASSES = 10000
_LABEL = re.compile(r"-?[0-9]+")


@dataclass
class CsvRows:
    """Raw rows of one CSV: image values as written, labels, and each row's line number."""

    path: Path
    values: list
    labels: np.ndarray
    lines: list


def _row_error(path: Path, line: int, what: str) -> DatasetError:
    return DatasetError(f"{path}, line {line}: {what}")


def _parse_label(path: Path, line: int, text: str) -> int:
    rule = f"labels must be class indices 0, 1, 2, ... below {MAX_CLASSES}, written as plain digits"
    if not _LABEL.fullmatch(text.strip()):
        raise _row_error(path, line, f"label {text!r} is not an integer in plain digits; {rule}")
    label = int(text.strip())
    if label < 0:
        raise _row_error(path, line, f"label {label} is negative; {rule}")
    if label >= MAX_CLASSES:
        raise _row_error(path, line, f"label {label} is too large; {rule}")
    return label


def read_rows(path: Path) -> CsvRows:
    """Read and check an NNC CSV: header, at least one row, integer labels >= 0."""
    values, labels, lines = [], [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{path}: the file is empty; write a header 'x:image,y:label' and one row per image")
            if tuple(h.strip() for h in header[:2]) != HEADER:
                raise _row_error(path, 1, f"header {','.join(header)!r} is not 'x:image,y:label'; "
                                          "make the first two columns x:image and y:label")
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) < 2:
                    raise _row_error(path, reader.line_num, "needs two columns (image path, label)")
                values.append(row[0].strip())
                labels.append(_parse_label(path, reader.line_num, row[1]))
                lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read it as a CSV ({' '.join(str(exc).split())}); "
                           "give a UTF-8 NNC CSV file") from None
    if not values:
        raise DatasetError(f"{path}: no data rows after the header; add one row 'image path,label' per image")
    return CsvRows(path, values, np.asarray(labels, dtype=np.int64), lines)


def _image_path(rows: CsvRows, i: int) -> Path:
    value = Path(rows.values[i]).expanduser()
    path = value if value.is_absolute() else rows.path.parent / value
    if not path.is_file():
        raise _row_error(rows.path, rows.lines[i], f"image file {rows.values[i]!r} not found (looked at {path}); "
                                                   "fix the path (relative to the CSV's folder) or add the file")
    return path


def _eight_bit(img: Image.Image, rows: CsvRows, i: int) -> Image.Image:
    """``img`` with 8-bit samples, ready for ``convert`` to L or RGB (module doc, "Pixel values"):
    16-bit grey keeps each value's high byte, F must hold whole numbers 0..255, P with
    transparency becomes RGBA; other modes are returned as they are."""
    if img.mode in _SIXTEEN_BIT:
        values = np.asarray(img)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 0xFFFF:
            raise _row_error(rows.path, rows.lines[i],
                             f"image {rows.values[i]!r} has mode {img.mode} pixels from {low} to {high}, beyond "
                             "the 16-bit range 0..65535; save it as an 8-bit or 16-bit PNG")
        return Image.fromarray((values.astype(np.int64) >> 8).astype(np.uint8))
    if img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all():
            found = "NaN or infinite values"
        elif values.min() < 0 or values.max() > 255 or (values != np.floor(values)).any():
            found = f"values from {values.min():g} to {values.max():g}"
        else:
            return img
        raise _row_error(rows.path, rows.lines[i],
                         f"image {rows.values[i]!r} has floating-point pixels (mode F) with {found}, not whole "
                         "numbers 0..255; save it as an 8-bit or 16-bit PNG")
    if img.mode == "P" and "transparency" in img.info:
        return img.convert("RGBA")
    return img


def _open_image(rows: CsvRows, i: int, mode: Optional[str]) -> np.ndarray:
    """Image of row i as uint8 (C, H, W) in ``mode`` (None: decided by this image)."""
    path = _image_path(rows, i)
    try:
        with Image.open(path) as img:
            if mode is None:
                mode = "L" if img.mode in _GREY_MODES else "RGB"
            pixels = np.asarray(_eight_bit(img, rows, i).convert(mode), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise _row_error(rows.path, rows.lines[i], f"cannot read image {rows.values[i]!r} "
                                                   f"({' '.join(str(exc).split())}); "
                                                   "replace it with a PNG or JPEG file") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def first_image_format(rows: CsvRows) -> tuple:
    """(mode, (h, w) working size) decided by the first image of ``rows``."""
    first = _open_image(rows, 0, None)
    mode = "L" if first.shape[0] == 1 else "RGB"
    return mode, working_size(first.shape[1], first.shape[2])


def decode_images(rows: CsvRows, mode: str, size: tuple, keep: Optional[np.ndarray] = None,
                  cache: Optional[dict] = None) -> np.ndarray:
    """The images of ``rows`` (only the rows ``keep``, in that order, when given) as uint8
    (N, C, h, w); sizes differing from ``size`` are resized. ``cache`` (row -> image) keeps decoded
    rows across calls, so rows shared by several trials are decoded once."""
    keep = np.arange(len(rows.values)) if keep is None else np.asarray(keep, np.int64)
    cache = {} if cache is None else cache
    by_shape: dict = {}
    for i in dict.fromkeys(int(i) for i in keep if int(i) not in cache):
        pixels = _open_image(rows, i, mode)
        by_shape.setdefault(pixels.shape, []).append((i, pixels))
    for group in by_shape.values():
        resized = resize_images(np.stack([p for _, p in group]), size)
        cache.update((i, resized[k]) for k, (i, _) in enumerate(group))
    channels = 1 if mode == "L" else 3
    out = np.empty((len(keep), channels) + tuple(size), dtype=np.uint8)
    for j, i in enumerate(keep):
        out[j] = cache[int(i)]
    return out


def fingerprint(rows: CsvRows, first: Optional[int] = None) -> str:
    """SHA-256 over the CSV file's bytes and the bytes of the images its rows name (the first
    ``first`` rows when given), in row order: it changes when a label, a path or an image changes."""
    h = hashlib.sha256(rows.path.read_bytes())
    for i in range(len(rows.values) if first is None else min(first, len(rows.values))):
        path = _image_path(rows, i)
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def image_folders(rows: CsvRows) -> set:
    """The folders holding the images a CSV names (inputs a run must never delete)."""
    return {_image_path(rows, i).parent for i in range(len(rows.values))}


def _companion(train: Path, replacements: tuple) -> tuple:
    """Candidate paths made by replacing 'train' in the file name; returns (found or None, candidates)."""
    if "train" not in train.name:
        return None, []
    candidates = [train.with_name(train.name.replace("train", r)) for r in replacements]
    return next((c for c in candidates if c.is_file()), None), candidates


def _given(path: str, role: str) -> Path:
    given = Path(path).expanduser()
    if not given.is_file():
        raise DatasetError(f"{role} CSV {given} not found; check the path")
    return given


def companion_paths(train: Path, val_csv: Optional[str], test_csv: Optional[str]) -> tuple:
    """(validation CSV or None, test CSV) given explicitly or found beside the training CSV."""
    val = _given(val_csv, "validation") if val_csv else _companion(train, ("validation", "val"))[0]
    if test_csv:
        return val, _given(test_csv, "test")
    test, candidates = _companion(train, ("test",))
    if test is None:
        looked = f"looked for {candidates[0]}" if candidates else "its file name has no 'train' to replace by 'test'"
        raise DatasetError(f"no test CSV for {train} ({looked}); put an NNC CSV there or give its path with --test-csv")
    return val, test


def to_split(rows: CsvRows, mode: str, size: tuple, keep: Optional[np.ndarray] = None,
             cache: Optional[dict] = None) -> Split:
    """Decode a CSV's images (the rows ``keep`` when given) into a Split whose ids are the paths as
    written in the CSV."""
    keep = np.arange(len(rows.values)) if keep is None else np.asarray(keep, np.int64)
    return make_split(decode_images(rows, mode, size, keep, cache), rows.labels[keep],
                      np.array(rows.values, dtype=str)[keep])


@dataclass
class CsvSource:
    """Own CSV data read but not decoded: the rows of each file, the image format decided by the
    first training image, and per-file caches of decoded rows."""

    train: CsvRows
    val: Optional[CsvRows]
    test: CsvRows
    mode: str
    size: tuple
    caches: dict

    @property
    def num_classes(self) -> int:
        splits = [r for r in (self.train, self.val, self.test) if r is not None]
        return int(max(r.labels.max() for r in splits)) + 1

    def split(self, which: str, keep: Optional[np.ndarray] = None, size: Optional[tuple] = None) -> Split:
        """Decode the rows ``keep`` (all when None) of 'train', 'val' or 'test' (at ``size`` when given,
        else the working size)."""
        if size is None or tuple(size) == tuple(self.size):
            return to_split(getattr(self, which), self.mode, self.size, keep, self.caches.setdefault(which, {}))
        size = tuple(size)
        return to_split(getattr(self, which), self.mode, size, keep, self.caches.setdefault((which, size), {}))


def read_source(train_path: Path, val_path: Optional[Path], test_path: Path) -> CsvSource:
    """Read and check own NNC CSV data without decoding its images (``CsvSource.split`` decodes).

    Raises DatasetError for a missing first image, a wrong header, a bad label or an empty CSV
    (file and line named); a missing or unreadable image elsewhere is reported when its row is
    decoded. A training split of fewer than two classes is refused by ``loader.load_dataset``, the
    one check every data source passes.
    """
    train_rows = read_rows(train_path)
    val_rows = read_rows(val_path) if val_path is not None else None
    test_rows = read_rows(test_path)
    mode, size = first_image_format(train_rows)
    return CsvSource(train_rows, val_rows, test_rows, mode, size, {})
