"""The step trace: which samples each SGD step used, with which lr and augmentation seeds.

Stored as a ``.npz`` of plain numeric arrays (read with ``allow_pickle=False``):

* ``epoch`` (S,), ``step`` (S,): epoch number and global step number of every step;
* ``lr`` (S,) float64;
* ``indices`` (S, B) int64: training-set positions of the mini-batch, ``-1`` padding;
* ``seeds`` (S, B) int64: per-sample augmentation seeds, ``-1`` padding.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple, Union

import numpy as np

from common.errors import UserError
from common.fileio import atomic_path

FIELDS = ("epoch", "step", "lr", "indices", "seeds")


@dataclass
class Trace:
    epoch: np.ndarray
    step: np.ndarray
    lr: np.ndarray
    indices: np.ndarray
    seeds: np.ndarray

    @property
    def n_steps(self) -> int:
        return len(self.step)

    @property
    def n_epochs(self) -> int:
        return int(self.epoch.max()) + 1 if len(self.epoch) else 0

    def epoch_steps(self, epoch: int) -> np.ndarray:
        """Global step numbers of ``epoch``, in order."""
        return self.step[self.epoch == epoch]

    def last_epoch_steps(self) -> np.ndarray:
        return self.epoch_steps(self.n_epochs - 1)

    def batch(self, t: int) -> Tuple[np.ndarray, np.ndarray]:
        """(training positions, augmentation seeds) of step ``t``."""
        row = self.indices[t]
        keep = row >= 0
        return row[keep], self.seeds[t][keep]


def make_schedule(n_train: int, epochs: int, batch_size: int, lr: float, seed: int) -> Trace:
    """Seeded SGD schedule: a fresh permutation per epoch cut into mini-batches (last one smaller)."""
    rng = np.random.default_rng([seed, 20190415])
    steps_per_epoch = -(-n_train // batch_size)
    S = epochs * steps_per_epoch
    indices = np.full((S, batch_size), -1, np.int64)
    seeds = np.full((S, batch_size), -1, np.int64)
    t = 0
    for _ in range(epochs):
        perm = rng.permutation(n_train)
        aug = rng.integers(0, 2 ** 31 - 1, size=n_train)
        for start in range(0, n_train, batch_size):
            chunk = perm[start:start + batch_size]
            indices[t, :len(chunk)] = chunk
            seeds[t, :len(chunk)] = aug[start:start + batch_size]
            t += 1
    epoch = np.repeat(np.arange(epochs), steps_per_epoch)
    return Trace(epoch=epoch, step=np.arange(S), lr=np.full(S, float(lr)), indices=indices, seeds=seeds)


def save_trace(path: Union[str, Path], trace: Trace) -> None:
    """Write the trace atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{f: getattr(trace, f) for f in FIELDS})


def load_trace(path: Union[str, Path], n_train: int) -> Trace:
    """Read and validate a trace; anything but plain numeric arrays of the right shapes is refused."""
    path = Path(path)
    what = f"trace file {path}"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {f: z[f] for f in FIELDS}
    except FileNotFoundError:
        raise UserError(f"{what} is missing; rerun the training stage") from None
    except Exception as exc:  # a truncated or foreign file: zipfile, numpy and OS errors alike
        detail = " ".join(str(exc).split())[:80] or type(exc).__name__
        raise UserError(f"{what} is not a valid trace ({detail}); delete {path.parent} and rerun") from None
    tr = Trace(**arrays)
    S = len(tr.step)
    ok = (all(a.dtype.kind in "iuf" for a in arrays.values())
          and tr.epoch.shape == (S,) and tr.lr.shape == (S,)
          and tr.indices.ndim == 2 and tr.indices.shape[0] == S and tr.seeds.shape == tr.indices.shape
          and np.array_equal(tr.step, np.arange(S))
          and tr.indices.max(initial=-1) < n_train and tr.indices.min(initial=0) >= -1
          and np.all(np.isfinite(tr.lr)))
    if not ok:
        raise UserError(f"{what} has unexpected content (shapes, dtypes or indices beyond the "
                        f"{n_train} training samples); delete {path.parent} and rerun")
    return tr
