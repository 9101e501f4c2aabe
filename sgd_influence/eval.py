"""Evaluation stage: retrain without the n most harmful samples and score the model.

Default: the counterfactual last epoch (from the parameters cached at its start, same batch
order, seeds and lr, removed samples left out, step ``lr/|S_t|`` times the sum over the kept
samples). ``retrain_all``: every epoch from the initial parameters. One score row per
retrained epoch: ``val_loss,test_loss,val_accuracy,test_accuracy``.
"""
from __future__ import annotations

from typing import List

import numpy as np

from common.paths import RunPaths
from datasets import DataBundle

from .trace import Trace
from .train import TrainConfig, evaluate_splits, learner_from_file, run_steps

SCORE_COLUMNS = ["val_loss", "test_loss", "val_accuracy", "test_accuracy"]


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
                   removed: np.ndarray, retrain_all: bool = False) -> List[dict]:
    """Score rows (one per retrained epoch) of retraining without ``removed``."""
    if not retrain_all:
        return [evaluate_splits(retrain_last_epoch(cfg, data, paths, seed, trace, removed), data)]
    learner = learner_from_file(cfg, data, paths.params(seed, "initial"))
    rows = []
    for epoch in range(trace.n_epochs):
        run_steps(learner, data, trace, trace.epoch_steps(epoch), cfg.augment, removed=removed)
        rows.append(evaluate_splits(learner, data))
    return rows
