"""STL-10: ``stl10_binary.tar.gz`` (raw column-major 3x96x96 images, labels 1..10)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from datasets.base import DatasetError, SourceData, index_ids, make_split
from datasets.files import FileCheck, Location, archive_path, read_tar_members
from datasets.imageops import to_working_size

ARCHIVE = "stl10_binary.tar.gz"
URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
CHECK: Optional[FileCheck] = FileCheck(None, "91f7769df0f17e558f3565bffb0c7dfb")
FOLDER = "stl10_binary"
SIDE = 96
VAL_FRACTION_DEN = 5          # 5,000 -> 1,000 validation
NUM_CLASSES = 10


def decode_pair(images_raw: bytes, labels_raw: bytes, source: str) -> tuple:
    """(images uint8 (N, 3, 96, 96) row-major, labels int64 0..9) from the raw .bin contents."""
    per_image = 3 * SIDE * SIDE
    if len(images_raw) % per_image or len(images_raw) // per_image != len(labels_raw):
        raise DatasetError(f"{source}: {len(images_raw)} image bytes do not hold {len(labels_raw)} images of "
                           f"3x{SIDE}x{SIDE}; delete the archive and put a complete copy there")
    images = np.frombuffer(images_raw, dtype=np.uint8).reshape(-1, 3, SIDE, SIDE).transpose(0, 1, 3, 2)
    labels = np.frombuffer(labels_raw, dtype=np.uint8).astype(np.int64) - 1
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetError(f"{source}: labels outside 1..10; delete the archive and put a complete copy there")
    return images, labels


def parse_stl10_archive(path: Path) -> tuple:
    """(pool, test) Splits at 3x96x96 from stl10_binary.tar.gz (not verified here).

    Images are stored column-major per image, so each is transposed to (C, H, W).
    ids are ``stl10/train/<i>`` and ``stl10/test/<i>``.
    """
    path = Path(path)
    wanted = {f"{FOLDER}/{part}_{kind}.bin" for part in ("train", "test") for kind in ("X", "y")}
    members = read_tar_members(path, wanted)
    splits = []
    for part in ("train", "test"):
        images, labels = decode_pair(members[f"{FOLDER}/{part}_X.bin"], members[f"{FOLDER}/{part}_y.bin"],
                                     f"{path}:{FOLDER}/{part}_X.bin")
        splits.append(make_split(images, labels, index_ids(f"stl10/{part}", labels.size)))
    return splits[0], splits[1]


def load(location: Location) -> SourceData:
    """Decode STL-10 (verified against CHECK): pool 5,000, test 8,000, 3x96x96 (kept)."""
    path = archive_path(location, "stl10", ARCHIVE, URL, CHECK)
    pool, test = parse_stl10_archive(path)
    pool.images = to_working_size(pool.images)
    test.images = to_working_size(test.images)
    return SourceData(pool, test, len(pool) // VAL_FRACTION_DEN)
