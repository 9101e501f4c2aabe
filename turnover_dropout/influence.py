"""Turn-over dropout influence: ``I(z_t, z_i) = L(f^{m~(z_i)}, z_t) - L(f^{m(z_i)}, z_t)``.

``m(z_i)`` is the sub-network that learned training instance ``z_i``, ``m~(z_i)`` its complement,
which never saw ``z_i``; so ``I`` estimates ``L(f_{D \\ z_i}, z_t) - L(f_D, z_t)`` (paper, eq. 2).
With the project's sign convention (docs/SPEC.md section 2) the data-cleansing score is the mean over
the validation set: ``infl_i = mean_z I(z, z_i)``; negative = the network without z_i does better
on validation = z_i is harmful.

Cost: ``n_train x n_targets x 2`` evaluations of the network *above* the lowest masked point.
The layers below it do not depend on the mask, so they are run once per target image
(``TDLearner.features``) and reused for every training instance. Two ways to evaluate the rest:

* *linear head* (only the topmost mask point masked, it feeds the final affine layer: cnn6
  'block3', mlp 'fc1'): per target, ``P[z, c, :] = sum_s h_z[c, s] W[c, s, :]`` (C x K numbers);
  then ``logits(i, z) = b + M_i . P_z`` for all pairs is one (I x C) @ (C x Z*K) matrix product,
  and the flipped logits are ``b + (1/p) sum_c P_z,c - M_i . P_z`` (no second product). float64.
* *nnabla head* (any other choice of layers): rows are (instance mask, target features) pairs,
  evaluated in chunks through the upper part of the network, twice (m and m~).
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np
from tqdm import tqdm

from datasets import DataBundle, Split
from datasets.batches import EVAL_BATCH, split_batches

from .network import TDLearner

PAIR_BUDGET = 4_000_000   # float64 logits per chunk on the linear path (32 MB)
HEAD_ROWS = 1024          # (instance, target) rows per nnabla head evaluation


def split_features(td: TDLearner, data: DataBundle, split: Split, idx: Optional[np.ndarray] = None) -> np.ndarray:
    """Features below the masked layers of (rows ``idx`` of) ``split``, un-augmented."""
    chunks = [td.features(x) for x, _ in split_batches(data, split, EVAL_BATCH, idx)]
    return np.concatenate(chunks) if chunks else np.zeros((0,) + td.feature_shape, np.float32)


def _log_softmax_pick(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[..., y] for logits (..., Z, K) and labels y (Z,)."""
    mx = logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(logits - mx).sum(axis=-1)) + mx[..., 0]
    picked = np.take_along_axis(logits, np.broadcast_to(y.reshape((1,) * (logits.ndim - 2) + (-1, 1)),
                                                        logits.shape[:-1] + (1,)), axis=-1)[..., 0]
    return lse - picked


def pair_differences(td: TDLearner, h_targets: np.ndarray, y_targets: np.ndarray, instances: np.ndarray,
                     progress: Optional[tqdm] = None) -> Iterator[Tuple[slice, np.ndarray, np.ndarray]]:
    """Yield ``(slice into instances, L_own, L_flipped)``, each (len(slice), n_targets) float64.

    ``L_own[i, z] = L(f^{m(z_i)}, z)``, ``L_flipped[i, z] = L(f^{m~(z_i)}, z)``; ``h_targets`` are
    the targets' features (``TDLearner.features``), ``y_targets`` the labels the loss is taken at.
    """
    instances = np.asarray(instances, np.int64)
    y_targets = np.asarray(y_targets, np.int64).reshape(-1)
    Z, n = len(h_targets), len(instances)
    head = td.linear_head()
    if head is not None:
        W, b = head                                     # (C, S, K), (K,)
        C, K = W.shape[0], W.shape[2]
        hz = h_targets.reshape(Z, C, -1)
        P = np.empty((Z, C, K))                         # per-channel contributions to the logits
        for z0 in range(0, Z, 1024):
            P[z0:z0 + 1024] = np.einsum("zcs,csk->zck", hz[z0:z0 + 1024].astype(np.float64), W)
        Pt = np.ascontiguousarray(P.transpose(1, 0, 2).reshape(C, Z * K))
        full = (1.0 / td.p) * P.sum(axis=1) + b         # b + (1/p) sum_c P_c  (Z, K)
        point = td.layers[0]
        chunk = max(1, PAIR_BUDGET // max(1, Z * K))
        for start in range(0, n, chunk):
            sl = slice(start, min(n, start + chunk))
            M = td.masks(instances[sl])[point].astype(np.float64)
            A = (M @ Pt).reshape(-1, Z, K)
            own = _log_softmax_pick(A + b, y_targets)
            flipped = _log_softmax_pick(full[None] - A, y_targets)
            if progress is not None:
                progress.update(sl.stop - sl.start)
            yield sl, own, flipped
        return
    # nnabla head: rows are (instance, target) pairs
    zc = min(Z, HEAD_ROWS)
    ic = max(1, HEAD_ROWS // zc)
    for start in range(0, n, ic):
        sl = slice(start, min(n, start + ic))
        idx = instances[sl]
        own = np.empty((len(idx), Z))
        flipped = np.empty((len(idx), Z))
        m_own = td.masks(idx)
        m_flip = td.masks(idx, flipped=True)
        for z0 in range(0, Z, zc):
            zs = slice(z0, min(Z, z0 + zc))
            nz = zs.stop - zs.start
            h = np.tile(h_targets[zs], (len(idx),) + (1,) * (h_targets.ndim - 1))
            y = np.tile(y_targets[zs], len(idx))
            for masks, out in ((m_own, own), (m_flip, flipped)):
                rows = {k: np.repeat(v, nz, axis=0) for k, v in masks.items()}
                out[:, zs] = td.head_losses(h, y, rows)[0].reshape(len(idx), nz)
        if progress is not None:
            progress.update(len(idx))
        yield sl, own, flipped


def influence_on_targets(td: TDLearner, h_targets: np.ndarray, y_targets: np.ndarray, instances,
                         reduce_mean: bool = True, show_progress: bool = False, desc: str = "turn-over"
                         ) -> np.ndarray:
    """``I(z_t, z_i)`` for instances i (an index array, or n: positions 0..n-1): mean over the
    targets (len,) or all of them (len, Z)."""
    instances = np.arange(instances) if np.isscalar(instances) else np.asarray(instances, np.int64)
    n = len(instances)
    out = np.zeros(n) if reduce_mean else np.zeros((n, len(h_targets)))
    bar = tqdm(total=n, desc=desc, unit="inst", disable=not show_progress, leave=False)
    for sl, own, flipped in pair_differences(td, h_targets, y_targets, instances, bar):
        d = flipped - own
        out[sl] = d.mean(axis=1) if reduce_mean else d
    bar.close()
    return out


def validation_influence(td: TDLearner, data: DataBundle, show_progress: bool = False,
                         h_val: Optional[np.ndarray] = None) -> np.ndarray:
    """Data-cleansing score of every training instance: mean over the validation set of
    ``L(f^{m~(z_i)}, z) - L(f^{m(z_i)}, z)`` (negative = harmful). ``h_val``: the validation
    features when the caller has them already."""
    h_val = split_features(td, data, data.val) if h_val is None else h_val
    return influence_on_targets(td, h_val, data.val.labels, len(data.train), True, show_progress,
                                desc="turn-over influence")


#: First pseudo-instance index of the fresh masks ``mask_baseline`` fits on: far above any
#: training position, so no training instance ever owns one of these masks.
FRESH_MASKS = 1 << 40


def mask_design(td: TDLearner, indices: np.ndarray) -> np.ndarray:
    """Rows ``[1, 1 - 2 keep]`` of instances ``indices``: their keep bits at every masked point."""
    bits = [td.masks(indices)[k] * td.p for k in td.layers]
    return np.c_[np.ones(len(indices)), 1.0 - 2.0 * np.concatenate(bits, axis=1)]


def mask_baseline(td: TDLearner, h_targets: np.ndarray, y_targets: np.ndarray, n_fresh: int,
                  show_progress: bool = False) -> np.ndarray:
    """Least-squares coefficients of the mean TD gap on the mask bits, fitted on ``n_fresh``
    masks that belong to no training instance: what a half-mask's quality alone contributes."""
    fresh = FRESH_MASKS + np.arange(n_fresh)
    gaps = influence_on_targets(td, h_targets, y_targets, fresh, True, show_progress, desc="fresh masks")
    return np.linalg.lstsq(mask_design(td, fresh), gaps, rcond=None)[0]


def residual_validation_influence(td: TDLearner, data: DataBundle, n_fresh: Optional[int] = None,
                                  show_progress: bool = False) -> np.ndarray:
    """``validation_influence`` minus the part of it that instance i's mask bits predict
    (``mask_baseline``: a linear fit over fresh masks, by default 40 per coefficient on the
    linear head, 10 through the nnabla head, where each costs as much as a training instance's
    score). The fit never sees a training instance's own gap, so what remains is the instance's
    effect plus the part of the mask's quality that is not linear in its bits."""
    h_val = split_features(td, data, data.val)
    per_coef = 40 if td.linear_head() is not None else 10
    coef = mask_baseline(td, h_val, data.val.labels, n_fresh or per_coef * (1 + sum(td.shapes.values())),
                         show_progress)
    return validation_influence(td, data, show_progress, h_val) - mask_design(td, np.arange(len(data.train))) @ coef


def instance_losses(td: TDLearner, data: DataBundle, idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(own-mask, flipped-mask, no-mask) loss of training instances ``idx`` on themselves (un-augmented)."""
    own, flipped, full = [], [], []
    for start in range(0, len(idx), EVAL_BATCH):
        rows = np.asarray(idx[start:start + EVAL_BATCH])
        x, y = next(split_batches(data, data.train, len(rows), rows))
        h = td.features(x)
        own.append(td.head_losses(h, y, td.masks(rows))[0])
        flipped.append(td.head_losses(h, y, td.masks(rows, flipped=True))[0])
        full.append(td.head_losses(h, y, {k: np.ones((len(rows), c), np.float32)
                                          for k, c in td.shapes.items()})[0])
    cat = lambda a: np.concatenate(a) if a else np.zeros(0)  # noqa: E731
    return cat(own), cat(flipped), cat(full)
