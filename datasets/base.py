"""Types shared by every dataset source: the error, a split of samples, a loaded bundle."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import UserError
from common.imagenorm import COLOUR_MEAN, COLOUR_STD, GREY_MEAN, GREY_STD, norm_stats  # noqa: F401 (re-exported)


class DatasetError(UserError):
    """A dataset file is missing, malformed, or fails its checksum (one-line message)."""


@dataclass(eq=False)
class Split:
    """Samples of one split: uint8 images (N, C, H, W), int64 labels (N,), str ids (N,).

    ``ids`` is what the NNC ``x:image`` column holds: the path as written in an own CSV, or a
    stable id such as ``mnist/train/12345`` (source file and index in it) for built-ins.
    """

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: np.ndarray) -> Split:
        """Rows ``idx`` (integer indices, or a boolean mask) in that order (copies)."""
        idx = np.asarray(idx)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64, copy=False)
        return Split(self.images[idx], self.labels[idx], self.ids[idx])


@dataclass(eq=False)
class DataBundle:
    """A dataset ready for one trial: train/validation/test splits plus normalisation."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: tuple
    std: tuple

    @property
    def image_shape(self) -> tuple:
        """(C, H, W) of every image in the bundle."""
        return tuple(int(d) for d in self.train.images.shape[1:])


@dataclass(eq=False)
class SourceData:
    """Decoded dataset before the seeded split: ``pool`` is split into train and validation."""

    pool: Split
    test: Split
    n_val: int


def make_split(images: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> Split:
    """Build a Split with the canonical dtypes (uint8 images, int64 labels, str ids)."""
    return Split(
        np.ascontiguousarray(images, dtype=np.uint8),
        np.asarray(labels, dtype=np.int64),
        np.asarray(ids, dtype=str),
    )


def index_ids(prefix: str, n: int) -> np.ndarray:
    """Stable ids ``<prefix>/<i>`` for i in 0..n-1."""
    return np.array([f"{prefix}/{i}" for i in range(n)], dtype=str)

