"""Training stage: SGD with a recorded trace and the parameter caches the estimators need.

Two parts (two tasks of the run): ``train_head`` (epochs 1 .. E-1) writes under
``weights/seed_NN/`` ``initial.h5``, ``trace.npz``, ``start_last_epoch.h5`` (before the first step
of the last epoch) and ``head_log.csv``; ``train_last_epoch`` writes ``hara/step_XXXXXX.h5``
(parameters *before* every step of the last epoch, only when asked), ``final.h5`` and
``train_log.csv`` (written last: its presence marks the stage complete).
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


TRAIN_LOG_COLUMNS = ["epoch", "train_loss", "val_loss", "test_loss", "val_accuracy", "test_accuracy", "seconds"]


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


def head_complete(paths: RunPaths, seed: int) -> bool:
    """True when the epochs before the last are trained: ``start_last_epoch.h5`` and the trace exist
    (from ``train_head``, or from a whole training written before the training was two tasks)."""
    done = paths.head_log(seed).is_file() or paths.train_log(seed).is_file()
    return done and paths.params(seed, "start_last_epoch").is_file() and paths.trace(seed).is_file()


def _epoch_row(epoch: int, train_loss: float, learner: Learner, data: DataBundle, t0: float) -> dict:
    return {"epoch": epoch + 1, "train_loss": train_loss, **evaluate_splits(learner, data),
            "seconds": time.time() - t0}


def train_head(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int, show_progress: bool = True) -> None:
    """Epochs 1 .. E-1 of trial ``seed`` from scratch: ``initial.h5``, ``trace.npz``,
    ``start_last_epoch.h5`` and ``head_log.csv`` (last). The retrainings of the last epoch need
    only these, so they can run beside ``train_last_epoch``."""
    trace = make_schedule(len(data.train), cfg.epochs, cfg.batch_size, cfg.lr, seed)
    learner = new_learner(cfg, data, seed)
    save_params(paths.params(seed, "initial"), learner.params)
    save_trace(paths.trace(seed), trace)
    rows = []
    bar = tqdm(total=trace.n_steps - len(trace.last_epoch_steps()), desc=f"train seed {seed}", unit="step",
               disable=not show_progress, leave=False)
    for epoch in range(cfg.epochs - 1):
        t0 = time.time()
        loss = run_steps(learner, data, trace, trace.epoch_steps(epoch), cfg.augment, progress=bar)
        rows.append(_epoch_row(epoch, loss, learner, data, t0))
    bar.close()
    save_params(paths.params(seed, "start_last_epoch"), learner.params)
    write_csv_atomic(paths.head_log(seed), pd.DataFrame(rows, columns=TRAIN_LOG_COLUMNS))


def train_last_epoch(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int, save_hara: bool,
                     show_progress: bool = True) -> None:
    """The last epoch from ``start_last_epoch.h5`` (after ``train_head``): Hara's per-step cache when
    asked, ``final.h5``, and ``train_log.csv`` (last: every epoch's row; its presence marks the
    training complete)."""
    trace = load_trace(paths.trace(seed), len(data.train))
    learner = learner_from_file(cfg, data, paths.params(seed, "start_last_epoch"))
    # a training written as one task has no head log: its train_log.csv holds the earlier epochs
    log = paths.head_log(seed) if paths.head_log(seed).is_file() else paths.train_log(seed)
    rows = pd.read_csv(log, float_precision="round_trip").iloc[:cfg.epochs - 1]

    def save_step(t: int) -> None:
        save_params(paths.step_params(seed, t), learner.params)

    steps = trace.last_epoch_steps()
    bar = tqdm(total=len(steps), desc=f"train seed {seed}, last epoch", unit="step", disable=not show_progress,
               leave=False)
    t0 = time.time()
    loss = run_steps(learner, data, trace, steps, cfg.augment, before_step=save_step if save_hara else None,
                     progress=bar)
    bar.close()
    last = pd.DataFrame([_epoch_row(cfg.epochs - 1, loss, learner, data, t0)], columns=TRAIN_LOG_COLUMNS)
    save_params(paths.params(seed, "final"), learner.params)
    write_csv_atomic(paths.train_log(seed), pd.concat([rows, last], ignore_index=True) if len(rows) else last)


def train_with_trace(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int,
                     save_hara: bool, show_progress: bool = True) -> None:
    """Train trial ``seed`` from scratch, writing the trace, the caches and the per-epoch log."""
    train_head(cfg, data, paths, seed, show_progress)
    train_last_epoch(cfg, data, paths, seed, save_hara, show_progress)


def load_training(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int):
    """(trace, learner at the final parameters) of a finished training stage."""
    trace = load_trace(paths.trace(seed), len(data.train))
    return trace, learner_from_file(cfg, data, paths.params(seed, "final"))
