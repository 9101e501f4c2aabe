"""Label noise for mislabel-detection experiments (Koh & Liang 2017, Sec. 5.4; Hara et al. 2019).

``flip_labels`` changes the labels of exactly ``round(fraction * n)`` samples, chosen uniformly
without replacement, each to a class drawn uniformly from the *other* classes. It is meant for the
training split only: the caller applies it to ``data.train`` and never to validation or test
(``apply_label_noise`` does exactly that).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np

from common.errors import UserError

SeedLike = Union[int, Sequence[int]]


def check_fraction(fraction: float) -> float:
    """``fraction`` as a float in [0, 1), else a one-line UserError."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise UserError(f"label noise fraction must be a number in [0, 1), got {fraction!r}") from None
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise UserError(f"label noise fraction must be in [0, 1) (e.g. 0.1 flips 10% of the training "
                        f"labels), got {fraction!r}")
    return value


def flip_labels(labels: np.ndarray, fraction: float, num_classes: int,
                seed: SeedLike) -> Tuple[np.ndarray, np.ndarray]:
    """(new labels, noisy mask): ``round(fraction * n)`` labels changed, each to another class.

    Deterministic for a given ``seed`` (anything ``np.random.default_rng`` takes, e.g. ``[seed, 11]``).
    The input array is not modified. ``noisy`` is a bool array, True where the label was changed.
    """
    fraction = check_fraction(fraction)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1:
        raise UserError(f"labels must be a 1-D array, got shape {labels.shape}")
    num_classes = int(num_classes)
    n = labels.shape[0]
    count = int(round(fraction * n))
    noisy = np.zeros(n, dtype=bool)
    if count == 0:
        return labels.copy(), noisy
    if num_classes < 2:
        raise UserError(f"label noise needs at least two classes, got {num_classes}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(f"labels must be in 0..{num_classes - 1} to flip them, got {labels.min()}..{labels.max()}")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n, size=count, replace=False)
    shift = rng.integers(1, num_classes, size=count)   # 1..C-1: never the same class, uniform over the others
    new = labels.copy()
    new[chosen] = (labels[chosen] + shift) % num_classes
    noisy[chosen] = True
    return new, noisy


def apply_label_noise(data, fraction: float, seed: int):
    """(bundle with flipped training labels, noisy mask); validation and test are untouched.

    The noise of trial ``seed`` is drawn from ``np.random.default_rng([seed, 11])`` so it does not
    share a stream with the split, the initialisation or the batch order. ``fraction == 0`` returns
    ``data`` itself and an all-False mask.
    """
    from dataclasses import replace

    from datasets.base import Split

    new, noisy = flip_labels(data.train.labels, fraction, data.num_classes, [int(seed), 11])
    if not noisy.any():
        return data, noisy
    train = Split(data.train.images, new, data.train.ids)
    return replace(data, train=train), noisy
