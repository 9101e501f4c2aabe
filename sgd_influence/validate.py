"""Ground truth for the estimators: the actual change of the mean validation loss when one
sample is left out, by counterfactual retraining (Hara et al., 2019, Sec. 5), and the
agreement measures between estimates and truth."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
from scipy import stats
from tqdm import tqdm

from common.batches import split_batches
from common.paths import RunPaths
from datasets import DataBundle

from .eval import retrain_last_epoch
from .trace import Trace
from .train import TrainConfig, learner_from_file, run_steps


def _val_loss(learner, data: DataBundle) -> float:
    return learner.evaluate(split_batches(data, data.val))[0]


def first_affected_step(trace: Trace, steps: np.ndarray, removed: np.ndarray) -> Optional[int]:
    """The first of ``steps`` whose mini-batch holds a removed sample (None: no step does)."""
    for t in steps:
        if removed[trace.batch(int(t))[0]].any():
            return int(t)
    return None


def _retrained(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int, trace: Trace,
               removed: np.ndarray, retrain_all: bool):
    if not retrain_all:
        # Steps before the first one that sees a removed sample are those of the recorded run, so
        # with Hara's cache the counterfactual starts there (replay is exact on the CPU).
        steps = trace.last_epoch_steps()
        t = first_affected_step(trace, steps, removed)
        if t is not None and t != int(steps[0]) and paths.hara_step(seed, t).is_file():
            learner = learner_from_file(cfg, data, paths.hara_step(seed, t))
            run_steps(learner, data, trace, steps[steps >= t], cfg.augment, removed=removed)
            return learner
        return retrain_last_epoch(cfg, data, paths, seed, trace, removed)
    learner = learner_from_file(cfg, data, paths.params(seed, "initial"))
    run_steps(learner, data, trace, range(trace.n_steps), cfg.augment, removed=removed)
    return learner


def actual_influence(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int, trace: Trace,
                     samples: Sequence[int], retrain_all: bool = False, show_progress: bool = False) -> np.ndarray:
    """``L_val(theta_{-j}) - L_val(theta)`` for each j in ``samples`` (same schedule, j left out)."""
    n = len(data.train)
    base = _val_loss(_retrained(cfg, data, paths, seed, trace, np.zeros(n, bool), retrain_all), data)
    out = np.empty(len(samples))
    for i, j in enumerate(tqdm(samples, desc=f"retrain without one (seed {seed})", disable=not show_progress,
                               leave=False)):
        removed = np.zeros(n, bool)
        removed[int(j)] = True
        out[i] = _val_loss(_retrained(cfg, data, paths, seed, trace, removed, retrain_all), data) - base
    return out


def agreement(estimate: np.ndarray, actual: np.ndarray, k: int = 10) -> Dict[str, float]:
    """Pearson, Spearman, Kendall and Hara et al.'s Jaccard index of the k most positive plus the
    k most negative samples by estimate and by truth."""
    estimate, actual = np.asarray(estimate, float), np.asarray(actual, float)
    k = min(k, len(estimate) // 2)

    def extremes(v):
        o = np.argsort(v, kind="stable")
        return set(o[:k]) | set(o[-k:])

    a, b = extremes(estimate), extremes(actual)
    return {"pearson": float(stats.pearsonr(estimate, actual)[0]),
            "spearman": float(stats.spearmanr(estimate, actual)[0]),
            "kendall": float(stats.kendalltau(estimate, actual)[0]),
            "jaccard20": len(a & b) / len(a | b)}


def pick_validation_samples(scores_by_method: Dict[str, np.ndarray], k: int, seed: int) -> np.ndarray:
    """Hara et al.'s selection: for each method k/3 most negative, k/3 most positive and k/3
    random training samples by its ranking, pooled (sorted, without repeats)."""
    third = max(1, k // 3)
    rng = np.random.default_rng([seed, 4])
    picked = []
    for name in sorted(scores_by_method):
        s = scores_by_method[name]
        order = np.argsort(s, kind="stable")
        picked += [order[:third], order[-third:], rng.choice(len(s), min(third, len(s)), replace=False)]
    return np.unique(np.concatenate(picked))
