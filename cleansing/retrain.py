"""Evaluation stage: retrain without the n most harmful samples and score the model.

Default: the counterfactual last epoch (from the parameters cached at its start, same batch
order, seeds and lr, removed samples left out, step ``lr/|S_t|`` times the sum over the kept
samples). ``retrain_all``: every epoch from the initial parameters. One score row per
retrained epoch: ``val_loss,test_loss,val_accuracy,test_accuracy``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Union

import numpy as np
import pandas as pd

from cleansing.paths import RunPaths
from common.errors import UserError
from common.fileio import read_csv_exact
from datasets import DataBundle
from models.autodiff import Learner

from .trace import Trace
from .train import TrainConfig, evaluate_splits, learner_from_file, run_steps

SCORE_COLUMNS = ["val_loss", "test_loss", "val_accuracy", "test_accuracy"]


def read_score_csv(path: Union[str, Path]) -> pd.DataFrame:
    """A score CSV, checked: its columns, at least one row, finite losses >= 0 and accuracies in
    [0, 1] (a file cut short or edited is refused, never read as a zero)."""
    path = Path(path)
    try:
        complete = path.read_bytes().endswith(b"\n")  # pandas ends every file with one; a cut file does not
        frame = read_csv_exact(path)
    except Exception as exc:
        raise UserError(f"score CSV {path} is unreadable ({type(exc).__name__}); delete it and rerun") from None
    ok = complete and list(frame.columns) == SCORE_COLUMNS and len(frame) > 0
    if ok:
        values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        acc = values[:, 2:]
        ok = bool(np.all(np.isfinite(values)) and np.all(values[:, :2] >= 0) and np.all((acc >= 0) & (acc <= 1)))
    if not ok:
        raise UserError(f"score CSV {path} is damaged (want columns {','.join(SCORE_COLUMNS)} and rows of finite "
                        f"losses >= 0 and accuracies in [0, 1]); delete it and rerun to recompute it")
    return frame


def removal_mask(n_train: int, order: np.ndarray, n: int) -> np.ndarray:
    """Boolean mask over training positions marking the first ``n`` of ``order``."""
    mask = np.zeros(n_train, bool)
    mask[np.asarray(order[:n], np.int64)] = True
    return mask


def retrain_last_epoch(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int, trace: Trace,
                       removed: np.ndarray):
    """The learner after the counterfactual last epoch without ``removed`` samples."""
    learner = learner_from_file(cfg, data, paths.params(seed, "start_last_epoch"))
    run_steps(learner, data, trace, trace.last_epoch_steps(), cfg.augment, removed=removed)
    return learner


def retrain_scores(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int, trace: Trace,
                   removed: np.ndarray, retrain_all: bool = False,
                   keep: Optional[Callable[[Learner], None]] = None) -> List[dict]:
    """Score rows (one per retrained epoch) of retraining without ``removed``; ``keep`` is given the
    retrained learner (``--save-nnp``)."""
    if not retrain_all:
        learner = retrain_last_epoch(cfg, data, paths, seed, trace, removed)
        rows = [evaluate_splits(learner, data)]
    else:
        learner = learner_from_file(cfg, data, paths.params(seed, "initial"))
        rows = []
        for epoch in range(trace.n_epochs):
            run_steps(learner, data, trace, trace.epoch_steps(epoch), cfg.augment, removed=removed)
            rows.append(evaluate_splits(learner, data))
    if keep is not None:
        keep(learner)
    return rows


def save_learner_nnp(path: Union[str, Path], learner: Learner) -> None:
    """The learner's model and parameters as an .nnp file (``models.nnp.save_model_nnp``)."""
    from models.nnp import save_model_nnp
    save_model_nnp(path, learner.model, learner.params)
