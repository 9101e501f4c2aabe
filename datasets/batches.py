"""Turning in-memory data into network inputs: training mini-batches and evaluation chunks."""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np

from datasets import DataBundle, Split, augment as augment_images, to_network_input

EVAL_BATCH = 256


def training_batch(data: DataBundle, idx: np.ndarray, seeds: Optional[np.ndarray],
                   augment: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Network input and labels of training positions ``idx``, augmented by their step seeds."""
    images = data.train.images[idx]
    if augment and seeds is not None:
        images = augment_images(images, seeds)
    return to_network_input(images, data.mean, data.std), data.train.labels[idx]


def split_batches(data: DataBundle, split: Split, batch_size: int = EVAL_BATCH,
                  idx: Optional[np.ndarray] = None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Un-augmented chunks of ``split`` (rows ``idx`` if given) for evaluation and gradients."""
    rows = np.arange(len(split)) if idx is None else np.asarray(idx)
    for start in range(0, len(rows), batch_size):
        r = rows[start:start + batch_size]
        yield to_network_input(split.images[r], data.mean, data.std), split.labels[r]
