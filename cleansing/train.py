"""Training stage: SGD with a recorded trace and the parameter caches the estimators need.

Writes under ``weights/seed_NN/``: ``initial.h5``, ``start_last_epoch.h5`` (before the first
step of the last epoch), ``final.h5``, ``hara/step_XXXXXX.h5`` (parameters *before* every step
of the last epoch, only when asked), ``trace.npz`` and ``train_log.csv`` (written last: its
presence marks the stage complete).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np
import pandas as pd
from tqdm import tqdm

from cleansing.paths import RunPaths
from common.errors import UserError
from common.fileio import write_csv_atomic
from common.params_io import load_params, save_params
from datasets import DataBundle
from datasets.batches import split_batches, training_batch
from models import build_model
from models.autodiff import Learner

from .trace import Trace, load_trace, make_schedule, save_trace


@dataclass(frozen=True)
class TrainConfig:
    model: str = "cnn6"
    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.05
    augment: bool = True


def new_learner(cfg: TrainConfig, data: DataBundle, seed: int) -> Learner:
    """A learner with freshly initialised parameters drawn from ``seed``."""
    model = build_model(cfg.model, data.image_shape, data.num_classes)
    return Learner(model, model.create_parameters(np.random.RandomState(seed)))


def learner_from_file(cfg: TrainConfig, data: DataBundle, path) -> Learner:
    """A learner whose parameters are read from ``path``."""
    learner = new_learner(cfg, data, 0)
    learner.set_state(load_params(path))
    return learner


def run_steps(learner: Learner, data: DataBundle, trace: Trace, steps: Iterable[int], augment: bool,
              removed: Optional[np.ndarray] = None, before_step: Optional[Callable[[int], None]] = None,
              progress: Optional[tqdm] = None) -> float:
    """Replay trace ``steps`` on ``learner``; returns the mean training loss over them.

    ``removed`` (bool mask over training positions) gives counterfactual SGD: removed samples
    are left out of their mini-batches, and the step stays ``lr/|S_t|`` times the sum over the
    kept samples (``|S_t|`` the original batch size); a step with nothing kept is skipped.
    """
    total, count = 0.0, 0
    for t in steps:
        idx, seeds = trace.batch(t)
        if before_step is not None:
            before_step(t)
        batch_size = len(idx)
        if removed is not None:
            keep = ~removed[idx]
            idx, seeds = idx[keep], seeds[keep]
        if len(idx):
            x, y = training_batch(data, idx, seeds, augment)
            loss = learner.sgd_step(x, y, float(trace.lr[t]), batch_size=batch_size)
            if not np.isfinite(loss):
                raise UserError(f"the training loss became {loss} at epoch {int(trace.epoch[t])}, step {t}; "
                                f"lower the learning rate (-lr)")
            total += loss * len(idx)
            count += len(idx)
        if progress is not None:
            progress.update(1)
    return total / max(count, 1)


def evaluate_splits(learner: Learner, data: DataBundle) -> dict:
    """Validation and test loss and accuracy (inference mode)."""
    val_loss, val_acc = learner.evaluate(split_batches(data, data.val))
    test_loss, test_acc = learner.evaluate(split_batches(data, data.test))
    return {"val_loss": val_loss, "test_loss": test_loss, "val_accuracy": val_acc, "test_accuracy": test_acc}


def training_complete(paths: RunPaths, seed: int, hara: bool, trace_steps: Optional[int] = None) -> bool:
    """True when the training stage of ``seed`` finished (and Hara's cache is whole, if needed)."""
    if not paths.train_log(seed).is_file() or not paths.params(seed, "final").is_file():
        return False
    if hara:
        n = len(list(paths.steps_dir(seed).glob("step_*.h5"))) if paths.steps_dir(seed).is_dir() else 0
        return trace_steps is not None and n == trace_steps
    return True


def train_with_trace(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int,
                     save_hara: bool, show_progress: bool = True) -> None:
    """Train trial ``seed`` from scratch, writing the trace, the caches and the per-epoch log."""
    trace = make_schedule(len(data.train), cfg.epochs, cfg.batch_size, cfg.lr, seed)
    learner = new_learner(cfg, data, seed)
    last = trace.last_epoch_steps()
    first_last = int(last[0])
    save_params(paths.params(seed, "initial"), learner.params)
    save_trace(paths.trace(seed), trace)

    def before_step(t: int) -> None:
        if t == first_last:
            save_params(paths.params(seed, "start_last_epoch"), learner.params)
        if save_hara and t >= first_last:
            save_params(paths.step_params(seed, t), learner.params)

    rows = []
    bar = tqdm(total=trace.n_steps, desc=f"train seed {seed}", unit="step", disable=not show_progress,
               leave=False)
    for epoch in range(cfg.epochs):
        t0 = time.time()
        train_loss = run_steps(learner, data, trace, trace.epoch_steps(epoch), cfg.augment,
                               before_step=before_step, progress=bar)
        scores = evaluate_splits(learner, data)
        rows.append({"epoch": epoch + 1, "train_loss": train_loss, **scores, "seconds": time.time() - t0})
    bar.close()
    save_params(paths.params(seed, "final"), learner.params)
    write_csv_atomic(paths.train_log(seed), pd.DataFrame(rows))


def load_training(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int):
    """(trace, learner at the final parameters) of a finished training stage."""
    trace = load_trace(paths.trace(seed), len(data.train))
    return trace, learner_from_file(cfg, data, paths.params(seed, "final"))
