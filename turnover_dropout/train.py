"""Training with turn-over dropout, its per-epoch loss curve (paper Fig. 2), and its cache.

The TD network is trained exactly like the standard one (same ``TrainConfig``, same initial
parameters drawn from the trial seed, same seeded schedule and augmentation seeds), except that
every training row is multiplied by its own mask ``m(z_i)`` at the chosen mask points.

Each network is an artefact the pipeline stores under ``weights/seed_NN/turnover/`` (further
networks of an ensemble: ``turnover_net<k>/``): ``final.h5``, ``config.json`` (layers, p, mask
seed, network) and ``loss_log.csv`` (per epoch, written last).
"""
from __future__ import annotations

import time
from typing import Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from cleansing.estimator import Trace, TrainConfig, Trained, new_learner
from common.errors import UserError
from datasets import DataBundle
from datasets.batches import split_batches, training_batch

from .influence import instance_losses
from .masks import P_KEEP, keep_bits
from .network import TDLearner

CURVE_MAX = 2000   # training instances whose own/flipped loss is tracked per epoch
CURVE_COLUMNS = ["epoch", "train_loss_steps", "train_loss_own_mask", "train_loss_flipped_mask",
                 "train_loss_no_mask", "val_loss", "val_loss_random_mask", "test_loss",
                 "val_accuracy", "test_accuracy", "seconds"]
CHECK_COLUMNS = ["group", "n", "train_loss_own_mask", "train_loss_flipped_mask", "train_loss_no_mask", "val_loss",
                 "val_loss_random_mask", "flipped_closer_to_val"]


def new_td_learner(cfg: TrainConfig, data: DataBundle, seed: int, layers: Sequence[str],
                   p: float = P_KEEP, network: int = 0) -> TDLearner:
    """TD network ``network`` of trial ``seed`` at the trial's standard initial parameters; masks
    keyed on ``seed`` and, for ``network`` > 0, drawn from that network's own stream."""
    return TDLearner.from_learner(new_learner(cfg, data, seed), layers, seed, p, network)


def _val_random_masks(td: TDLearner, n: int):
    """Half-network masks for validation rows, from a stream no training instance uses."""
    return {k: keep_bits(np.arange(n), td.mask_seed, "validation/" + k, c, td.p).astype(np.float32) / td.p
            for k, c in td.shapes.items()}


def epoch_curve_row(td: TDLearner, data: DataBundle, curve_idx: np.ndarray) -> dict:
    """Own / flipped / no-mask loss of the tracked training instances, validation and test scores."""
    own, flipped, full = instance_losses(td, data, curve_idx)
    val_loss, val_acc = td.evaluate(split_batches(data, data.val))
    test_loss, test_acc = td.evaluate(split_batches(data, data.test))
    vm, total = _val_random_masks(td, len(data.val)), 0.0
    for start, (x, y) in zip(range(0, len(data.val), 256), split_batches(data, data.val, 256)):
        total += float(td.masked_losses(x, y, {k: v[start:start + len(x)] for k, v in vm.items()}).sum())
    return {"train_loss_own_mask": float(own.mean()), "train_loss_flipped_mask": float(flipped.mean()),
            "train_loss_no_mask": float(full.mean()), "val_loss": val_loss,
            "val_loss_random_mask": total / max(1, len(data.val)), "test_loss": test_loss,
            "val_accuracy": val_acc, "test_accuracy": test_acc}


def loss_check(td: TDLearner, data: DataBundle, noisy: Optional[np.ndarray] = None) -> pd.DataFrame:
    """The paper's Fig. 2 check on the final TD network, one row per group of training instances
    (all; with label noise also 'clean' and 'flipped_label'): own-, flipped- and no-mask training
    loss beside the validation loss (no mask and random half mask), and whether the flipped-mask
    loss is closer to the validation loss than to the own-mask training loss. A flipped label's
    own loss is memorised and its flipped-mask loss is that of the true class, so only the clean
    group can track the validation loss."""
    n = len(data.train)
    groups = [("all", np.arange(n))]
    if noisy is not None:
        groups += [("clean", np.flatnonzero(~noisy)), ("flipped_label", np.flatnonzero(noisy))]
    rows = []
    for name, idx in groups:
        if len(idx) == 0:
            continue
        r = epoch_curve_row(td, data, idx)
        rows.append({"group": name, "n": len(idx), **{k: r[k] for k in CHECK_COLUMNS[2:-1]},
                     "flipped_closer_to_val": bool(abs(r["train_loss_flipped_mask"] - r["val_loss"]) <
                                                   abs(r["train_loss_flipped_mask"] - r["train_loss_own_mask"]))})
    return pd.DataFrame(rows, columns=CHECK_COLUMNS)


def train_turnover(cfg: TrainConfig, data: DataBundle, trace: Trace, seed: int, layers: Sequence[str],
                   p: float = P_KEEP, show_progress: bool = False, desc: str = "turn-over train",
                   network: int = 0, curve: bool = True) -> Tuple[TDLearner, pd.DataFrame]:
    """Train TD network ``network`` along ``trace``; returns it and the per-epoch loss curve
    (``curve=False``: only the mean training loss of the steps, the rest of the columns empty)."""
    td = new_td_learner(cfg, data, seed, layers, p, network)
    curve_idx = np.arange(min(len(data.train), CURVE_MAX))
    rows = []
    bar = tqdm(total=trace.n_steps, desc=desc, unit="step", disable=not show_progress, leave=False)
    for epoch in range(trace.n_epochs):
        t0 = time.time()
        total, count = 0.0, 0
        for t in trace.epoch_steps(epoch):
            idx, seeds = trace.batch(t)
            x, y = training_batch(data, idx, seeds, cfg.augment)
            loss = td.td_sgd_step(x, y, idx, float(trace.lr[t]), batch_size=len(idx))
            if not np.isfinite(loss):
                raise UserError(f"the turn-over dropout training loss became {loss} at epoch {epoch + 1}; "
                                f"lower the learning rate (-lr)")
            total += loss * len(idx)
            count += len(idx)
            bar.update(1)
        row = {"epoch": epoch + 1, "train_loss_steps": total / max(1, count)}
        if curve:
            row.update(epoch_curve_row(td, data, curve_idx))
        row["seconds"] = time.time() - t0
        rows.append(row)
    bar.close()
    return td, pd.DataFrame(rows, columns=CURVE_COLUMNS)


def network_name(network: int = 0) -> str:
    """The artefact name (folder under ``weights/seed_NN/``) of TD network ``network``."""
    return "turnover" if network == 0 else f"turnover_net{network}"


def network_config(data: DataBundle, trace: Trace, seed: int, layers: Sequence[str], p: float = P_KEEP,
                   network: int = 0) -> dict:
    """What identifies a stored TD network (one made with other layers / p / mask seed is retrained)."""
    return {"layers": list(layers), "p": p, "mask_seed": seed, "epochs": trace.n_epochs,
            "n_train": len(data.train), **({"network": network} if network else {})}


def train_network(cfg: TrainConfig, data: DataBundle, trace: Trace, seed: int, layers: Sequence[str],
                  p: float = P_KEEP, show_progress: bool = False, network: int = 0) -> Trained:
    """TD network ``network`` trained along ``trace``, as an artefact for the pipeline to store. Only
    network 0 records the full per-epoch loss curve (the sanity check is drawn from it)."""
    desc = f"turn-over train seed {seed}" + (f" network {network}" if network else "")
    td, curve = train_turnover(cfg, data, trace, seed, layers, p, show_progress, desc, network, curve=network == 0)
    return Trained(td.params, network_config(data, trace, seed, layers, p, network), curve)
