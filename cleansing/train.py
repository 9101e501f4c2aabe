"""Training stage: SGD with a recorded trace and the parameter caches the estimators need.

Tasks of the run: one per epoch before the last (``train_head_epoch``; the first also writes
``initial.h5`` and ``trace.npz``, the last ``start_last_epoch.h5``, before the first step of the
last epoch), one evaluation per such epoch (``evaluate_head_epoch``: its ``train_log.csv`` row, so
evaluating epoch k runs beside the training of epoch k + 1), and ``train_last_epoch``, which writes
``hara/step_XXXXXX.h5`` (parameters *before* every step of the last epoch, only when asked),
``final.h5`` and ``train_log.csv`` (written last: its presence marks the stage complete). The
epochs' own files live in ``weights/seed_NN/epochs/`` until ``train_log.csv`` holds their rows.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional

import numpy as np
import pandas as pd
from tqdm import tqdm

from cleansing.paths import RunPaths
from common.errors import UserError
from common.fileio import atomic_path, write_csv_atomic
from common.params_io import load_params, save_params
from common.progress import steps as report_steps
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
    #: an .nnp model (``models.nnp``) starts from the file's parameter values instead of fresh ones
    nnp_weights: bool = False


TRAIN_LOG_COLUMNS = ["epoch", "train_loss", "val_loss", "test_loss", "val_accuracy", "test_accuracy", "seconds"]


def new_learner(cfg: TrainConfig, data: DataBundle, seed: int) -> Learner:
    """A learner with freshly initialised parameters drawn from ``seed``."""
    model = build_model(cfg.model, data.image_shape, data.num_classes)
    params = model.create_parameters(np.random.RandomState(seed))
    if cfg.nnp_weights:
        from models.nnp import load_file_parameters
        load_file_parameters(model, params)
    return Learner(model, params)


def learner_from_file(cfg: TrainConfig, data: DataBundle, path) -> Learner:
    """A learner whose parameters are read from ``path``."""
    learner = new_learner(cfg, data, 0)
    learner.set_state(load_params(path))
    return learner


#: A mini-batch's mean cross-entropy above this many times ln(classes) (the loss of a network that
#: guesses uniformly, about where training starts) means the training diverged (logit gaps in the
#: thousands): a diverged model's gradients saturate and its influences come out as exact zeros.
DIVERGED_FACTOR = 1000.0


def check_loss(loss: float, num_classes: int, epoch: int, step: int) -> None:
    """A one-line UserError when the training loss is non-finite or beyond ``DIVERGED_FACTOR`` x
    ln(classes), whatever the model; the message says to lower the learning rate."""
    bound = DIVERGED_FACTOR * float(np.log(max(num_classes, 2)))
    if not np.isfinite(loss) or loss > bound:
        raise UserError(f"the training diverged: its loss became {loss:.4g} at epoch {epoch}, step {step} "
                        f"(the bound is {bound:.4g}, {DIVERGED_FACTOR:g} x ln {num_classes}); "
                        f"lower the learning rate (-lr)")


def run_steps(learner: Learner, data: DataBundle, trace: Trace, steps: Iterable[int], augment: bool,
              removed: Optional[np.ndarray] = None, before_step: Optional[Callable[[int], None]] = None,
              progress: Optional[tqdm] = None, margins: Optional[np.ndarray] = None, report: bool = True) -> float:
    """Replay trace ``steps`` on ``learner``; returns the mean training loss over them.

    ``removed`` (bool mask over training positions) gives counterfactual SGD: removed samples
    are left out of their mini-batches, and the step stays ``lr/|S_t|`` times the sum over the
    kept samples (``|S_t|`` the original batch size); a step with nothing kept is skipped.
    ``margins`` (float array over training positions): each trained row's margin as its step saw it
    (the augmented image, parameters before the update), the logit of its label minus the largest
    other logit, read from the step's own forward pass (``Learner.step_logits``).
    ``report``: tell the running task's progress how many of ``steps`` are done (False: a caller that
    replays pieces of the training reports its own progress).
    """
    total, count = 0.0, 0
    steps = list(steps)
    for i, t in enumerate(steps):
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
            check_loss(loss, data.num_classes, int(trace.epoch[t]), t)
            if margins is not None:
                margins[idx] = label_margins(learner.step_logits(), np.asarray(y).reshape(-1))
            total += loss * len(idx)
            count += len(idx)
        if progress is not None:
            progress.update(1)
        if report:
            report_steps(i + 1, len(steps))
    return total / max(count, 1)


def label_margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row: the logit of its label minus the largest other logit (Pleiss et al. 2020's margin)."""
    rows = np.arange(len(labels))
    own = logits[rows, labels]
    other = logits.copy()
    other[rows, labels] = -np.inf
    return own - other.max(axis=1)


def save_margins(path: Path, margins: np.ndarray) -> None:
    """``margins`` (epochs x training positions, NaN where a sample was not trained) atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, margins=np.asarray(margins, dtype=np.float64))


def load_margins(path: Path) -> np.ndarray:
    """The array ``save_margins`` wrote (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        return np.asarray(z["margins"], dtype=np.float64)


def evaluate_splits(learner: Learner, data: DataBundle, test: bool = True) -> dict:
    """Validation and test loss and accuracy (inference mode); ``test=False``: the test columns are
    NaN (the epochs before the last: nothing reads their test scores, issue 32)."""
    val_loss, val_acc = learner.evaluate(split_batches(data, data.val))
    test_loss, test_acc = learner.evaluate(split_batches(data, data.test)) if test else (np.nan, np.nan)
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
    """True when the epochs before the last are trained and logged as one file: the training is
    complete, or the folder was written before those epochs were tasks of their own (``head_log.csv``)."""
    done = paths.head_log(seed).is_file() or paths.train_log(seed).is_file()
    return done and paths.params(seed, "start_last_epoch").is_file() and paths.trace(seed).is_file()


def _epoch_row(epoch: int, train_loss: float, learner: Learner, data: DataBundle, t0: float) -> dict:
    return {"epoch": epoch + 1, "train_loss": train_loss, **evaluate_splits(learner, data),
            "seconds": time.time() - t0}


def head_epochs(cfg: TrainConfig) -> List[int]:
    """The epochs before the last, 1-based (one training task each); ``[0]`` with a single epoch:
    a task that only draws the initial parameters and the trace."""
    return list(range(1, cfg.epochs)) or [0]


def state_after(cfg: TrainConfig, paths: RunPaths, seed: int, epoch: int) -> Path:
    """The parameters after epoch ``epoch`` of the epochs before the last (0: the initial ones)."""
    if epoch == max(cfg.epochs - 1, 0):
        return paths.params(seed, "start_last_epoch")
    return paths.params(seed, "initial") if epoch == 0 else paths.epoch_params(seed, epoch)


def train_head_epoch(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int, epoch: int,
                     show_progress: bool = True) -> None:
    """Epoch ``epoch`` (``head_epochs``) of trial ``seed``: from the parameters after the epoch
    before (the first draws ``initial.h5`` and ``trace.npz``), written as ``state_after(epoch)``, then
    the training half of its log row (last: marks the task complete). Saving and reading the
    parameters between epochs is exact, so the epochs give the bytes of one uninterrupted training."""
    if epoch <= 1:
        trace = make_schedule(len(data.train), cfg.epochs, cfg.batch_size, cfg.lr, seed)
        learner = new_learner(cfg, data, seed)
        save_params(paths.params(seed, "initial"), learner.params)
        save_trace(paths.trace(seed), trace)
    else:
        trace = load_trace(paths.trace(seed), len(data.train))
        learner = learner_from_file(cfg, data, state_after(cfg, paths, seed, epoch - 1))
    row = pd.DataFrame(columns=["epoch", "train_loss", "seconds"])
    if epoch >= 1:
        steps = trace.epoch_steps(epoch - 1)
        bar = tqdm(total=len(steps), desc=f"train seed {seed}, epoch {epoch}", unit="step",
                   disable=not show_progress, leave=False)
        t0 = time.time()
        margins = np.full(len(data.train), np.nan)
        loss = run_steps(learner, data, trace, steps, cfg.augment, progress=bar, margins=margins)
        bar.close()
        row = pd.DataFrame([{"epoch": epoch, "train_loss": loss, "seconds": time.time() - t0}])
        save_margins(paths.epoch_margins(seed, epoch), margins[None])
    save_params(state_after(cfg, paths, seed, epoch), learner.params)
    write_csv_atomic(paths.epoch_log(seed, epoch, "train"), row)


def evaluate_head_epoch(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int, epoch: int) -> None:
    """Epoch ``epoch``'s ``train_log.csv`` row: its training loss and the validation loss and
    accuracy of the parameters after it (test columns empty: only the last epoch's row evaluates the
    test set); ``seconds`` = training plus evaluation."""
    t0 = time.time()
    part = pd.read_csv(paths.epoch_log(seed, epoch, "train"), float_precision="round_trip")
    learner = learner_from_file(cfg, data, state_after(cfg, paths, seed, epoch))
    row = {"epoch": epoch, "train_loss": float(part.train_loss.iloc[0]), **evaluate_splits(learner, data, test=False),
           "seconds": float(part.seconds.iloc[0]) + time.time() - t0}
    write_csv_atomic(paths.epoch_log(seed, epoch), pd.DataFrame([row], columns=TRAIN_LOG_COLUMNS))


def train_head(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int, show_progress: bool = True) -> None:
    """Epochs 1 .. E-1 of trial ``seed`` from scratch, each trained then evaluated (the tasks of
    the run, in this process): all a last-epoch retraining needs."""
    for epoch in head_epochs(cfg):
        train_head_epoch(cfg, data, paths, seed, epoch, show_progress)
        if epoch:
            evaluate_head_epoch(cfg, data, paths, seed, epoch)


def head_rows(cfg: TrainConfig, paths: RunPaths, seed: int) -> pd.DataFrame:
    """The log rows of the epochs before the last: from their evaluation tasks, or from an older
    folder's ``head_log.csv`` or ``train_log.csv`` (a training written as one or two tasks)."""
    for log in (paths.head_log(seed), paths.train_log(seed)):
        if log.is_file():
            return pd.read_csv(log, float_precision="round_trip").iloc[:cfg.epochs - 1]
    rows = [pd.read_csv(paths.epoch_log(seed, e), float_precision="round_trip") for e in range(1, cfg.epochs)]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=TRAIN_LOG_COLUMNS)


def train_last_epoch(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int, save_hara: bool,
                     show_progress: bool = True, keep_epochs: bool = False) -> None:
    """The last epoch from ``start_last_epoch.h5`` (after the epochs before it and their
    evaluations): Hara's per-step cache when asked, ``final.h5``, and ``train_log.csv`` (last: every
    epoch's row; its presence marks the training complete); then the epochs' own files go, except
    their parameters (``epoch_XXX.h5``) with ``keep_epochs``."""
    trace = load_trace(paths.trace(seed), len(data.train))
    learner = learner_from_file(cfg, data, paths.params(seed, "start_last_epoch"))
    rows = head_rows(cfg, paths, seed)

    def save_step(t: int) -> None:
        save_params(paths.step_params(seed, t), learner.params)

    steps = trace.last_epoch_steps()
    bar = tqdm(total=len(steps), desc=f"train seed {seed}, last epoch", unit="step", disable=not show_progress,
               leave=False)
    t0 = time.time()
    margins = np.full(len(data.train), np.nan)
    loss = run_steps(learner, data, trace, steps, cfg.augment, before_step=save_step if save_hara else None,
                     progress=bar, margins=margins)
    bar.close()
    last = pd.DataFrame([_epoch_row(cfg.epochs - 1, loss, learner, data, t0)], columns=TRAIN_LOG_COLUMNS)
    save_params(paths.params(seed, "final"), learner.params)
    save_margins(paths.margins(seed), merge_margins(cfg, paths, seed, margins))
    write_csv_atomic(paths.train_log(seed), pd.concat([rows, last], ignore_index=True) if len(rows) else last)
    if not keep_epochs:
        shutil.rmtree(paths.epochs_dir(seed), ignore_errors=True)
    elif paths.epochs_dir(seed).is_dir():
        for f in paths.epochs_dir(seed).iterdir():
            if f.suffix != ".h5":
                f.unlink()


def merge_margins(cfg: TrainConfig, paths: RunPaths, seed: int, last: np.ndarray) -> np.ndarray:
    """Every epoch's margins (epochs x training positions): the epochs before the last from their
    tasks' files (NaN rows for epochs trained before margins were recorded), then ``last``."""
    rows = []
    for e in range(1, cfg.epochs):
        f = paths.epoch_margins(seed, e)
        rows.append(load_margins(f)[0] if f.is_file() else np.full(len(last), np.nan))
    return np.stack(rows + [last])


def train_with_trace(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int,
                     save_hara: bool, show_progress: bool = True) -> None:
    """Train trial ``seed`` from scratch, writing the trace, the caches and the per-epoch log."""
    train_head(cfg, data, paths, seed, show_progress)
    train_last_epoch(cfg, data, paths, seed, save_hara, show_progress)


def load_training(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int):
    """(trace, learner at the final parameters) of a finished training stage."""
    trace = load_trace(paths.trace(seed), len(data.train))
    return trace, learner_from_file(cfg, data, paths.params(seed, "final"))


def plain_sgd(learner: Learner, data: DataBundle, epochs: int, lr: float, batch: int = 32) -> None:
    """Plain SGD on ``data.train`` in a seeded order (seed 0), ``epochs`` passes of mini-batches, no
    augmentation and no trace: the training of small exact problems (tests, ``bench/gn_detection.py``)."""
    from datasets import to_network_input
    rng = np.random.default_rng(0)
    n = len(data.train)
    for _ in range(epochs):
        perm = rng.permutation(n)
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            learner.sgd_step(to_network_input(data.train.images[idx], data.mean, data.std), data.train.labels[idx], lr)
