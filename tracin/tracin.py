"""TracIn (Pruthi et al. 2020, TracInCP): influence as gradient agreement summed over checkpoints.

``TracIn(z_j) = sum_k lr_k <grad L_val(theta_k), grad l(z_j; theta_k)>`` over checkpoints
``theta_k`` (the parameters after chosen epochs) with ``lr_k`` the learning rate of the epoch that
ends there; ``L_val`` is the mean validation loss. A step of SGD on ``z_j`` lowers ``L_val`` by about
``lr/B <grad L_val, grad l(z_j)>``, so removing ``z_j`` raises it by that much: the sum has the
project's sign (negative = harmful) and is proportional to (not equal to) the change of the
validation loss. ``TracIn_self(z_j) = sum_k lr_k ||grad l(z_j; theta_k)||^2`` ranks suspicious
labels (large self-influence first).

Gradients are taken in inference mode (batch norm's running statistics) on the un-augmented
images. ``layers='all'``: every trainable parameter, per-sample products by the learner's batched
fast path (``Learner.per_sample_grad_dot``) and per-sample squared norms from one batched pass
(``models.per_sample``); ``'last'``: the last affine layer only (the TracIn paper's fast variant),
from its inputs and the logits' gradients ``p - e_y``, one forward pass per batch.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from datasets import DataBundle
from datasets.batches import split_batches
from models.autodiff import Learner
from models.per_sample import PerSampleGradients

LAYERS = ("all", "last")
#: rows per batch of the per-sample passes
ROWS = 128


def default_checkpoints(epochs: int, count: int = 4) -> Tuple[int, ...]:
    """``count`` epochs spread over training, ending at the last: ``ceil(E k / count)``, k = 1..count."""
    return tuple(sorted({-(-epochs * k // count) for k in range(1, count + 1)}))


def _last_layer_grad(psg: PerSampleGradients, batches: Iterable[Tuple[np.ndarray, np.ndarray]]):
    """The mean loss gradient of the last affine layer over ``batches``: ``(W (in, out), b (out,))``."""
    W, b, n = 0.0, 0.0, 0
    for x, y in batches:
        a, g = psg.last_layer(x, y)
        W, b, n = W + a.T @ g, b + g.sum(axis=0), n + len(x)
    return W / n, b / n


def checkpoint_scores(learner: Learner, data: DataBundle, layers: str, self_influence: bool,
                      u: Optional[Mapping[str, np.ndarray]] = None) -> np.ndarray:
    """One checkpoint's term before the learning rate, at the learner's current parameters:
    ``<grad L_val, grad l(z_j)>`` (or ``||grad l(z_j)||^2`` with ``self_influence``) for every training
    position; ``u``: ``grad L_val`` there when already known (else computed, one validation pass)."""
    psg = PerSampleGradients(learner, "TracIn")
    train = list(split_batches(data, data.train, ROWS))
    if layers == "last":
        if self_influence:
            parts = [psg.last_layer(x, y) for x, y in train]
            return np.concatenate([np.square(g).sum(1) * (np.square(a).sum(1) + 1.0) for a, g in parts])
        W, b = _last_layer_grad(psg, split_batches(data, data.val, ROWS))
        parts = [psg.last_layer(x, y) for x, y in train]
        return np.concatenate([np.einsum("no,no->n", g, a @ W + b) for a, g in parts])
    if self_influence:
        return np.concatenate([psg.squared_norms(x, y) for x, y in train])
    if u is None:
        u = learner.mean_loss_grad(split_batches(data, data.val), train=False)
    return np.concatenate([learner.per_sample_grad_dot(x, y, u, train=False) for x, y in train])


def tracin(learner: Learner, data: DataBundle, checkpoints: Sequence[Tuple[int, float]],
           load: Callable[[int], Mapping[str, np.ndarray]], layers: str = "all", self_influence: bool = False,
           show_progress: bool = False, desc: str = "TracIn",
           known: Optional[Mapping[int, Mapping[str, np.ndarray]]] = None) -> Tuple[np.ndarray, List[Dict[str, float]]]:
    """``sum_k lr_k * checkpoint_scores`` over ``checkpoints`` ((epoch, lr_k) pairs; ``load(epoch)``
    gives that epoch's parameters, loaded into ``learner``) and one log row per checkpoint; ``known``:
    epoch -> the validation gradient there where already computed (the final one: ``Trial.u``)."""
    if layers not in LAYERS:
        raise ValueError(f"unknown TracIn layers {layers!r}; choose one of {', '.join(LAYERS)}")
    total = np.zeros(len(data.train))
    rows = []
    for epoch, lr in tqdm(checkpoints, desc=desc, unit="checkpoint", disable=not show_progress, leave=False):
        learner.set_state(load(epoch))
        term = checkpoint_scores(learner, data, layers, self_influence, (known or {}).get(epoch))
        total += lr * term
        rows.append({"epoch": epoch, "lr": lr, "mean_abs_term": float(np.mean(np.abs(term)))})
    return total, rows
