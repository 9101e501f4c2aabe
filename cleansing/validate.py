"""Ground truth for the estimators: the actual change of the mean validation loss when one
sample is left out, by counterfactual retraining (Hara et al., 2019, Sec. 5), and the
agreement measures between estimates and truth."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from tqdm import tqdm

from cleansing.paths import RunPaths
from common.fileio import read_csv_exact, write_csv_atomic
from datasets import DataBundle
from datasets.batches import split_batches

from .trace import Trace
from .train import TrainConfig, learner_from_file, run_steps


def _val_loss(learner, data: DataBundle) -> float:
    return learner.evaluate(split_batches(data, data.val))[0]


#: Relative size of the nudge that gives repeats after the first their own rounding (float32's
#: epsilon is 1.2e-7): small enough not to move the expected outcome, large enough to decorrelate
#: the chaotic part of the trajectory (bench/loo_noise_floor.py measures it).
NUDGE = 1e-7


def nudge_parameters(learner, eps: float, seed) -> None:
    """theta <- theta * (1 + eps * xi), xi ~ N(0, 1) drawn from ``seed``, for every trainable parameter."""
    rs = np.random.RandomState(np.random.SeedSequence(seed).generate_state(1)[0])
    for v in learner.trainable.values():
        v.d = v.d * (1.0 + eps * rs.randn(*v.shape))


def first_steps(trace: Trace, steps: np.ndarray, samples: Sequence[int]) -> np.ndarray:
    """For each sample, the first of ``steps`` whose mini-batch holds it (-1: none does)."""
    samples = np.asarray(samples, np.int64)
    first = np.full(len(samples), -1, np.int64)
    for t in steps[::-1]:
        first[np.isin(samples, trace.batch(int(t))[0])] = int(t)
    return first


def actual_influence(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int, trace: Trace,
                     samples: Sequence[int], retrain_all: bool = False, repeat: int = 0,
                     show_progress: bool = False, progress: Optional[Path] = None) -> np.ndarray:
    """``L_val(theta_{-j}) - L_val(theta)`` for each j in ``samples``: the same schedule replayed
    with and without j (the last epoch from its cached start, or every epoch with ``retrain_all``).

    ``repeat`` 0 replays the recorded run exactly; repeat r > 0 starts both runs from parameters
    nudged by ``1 + NUDGE * xi_r`` (``nudge_parameters``), so that averaging repeats averages out
    the rounding noise a chaotic trajectory amplifies. One reference replay serves every sample:
    each counterfactual starts from it at the first step that holds j (exact on the CPU).

    ``progress``: a CSV (``datasource_index``, ``loss``) rewritten after each left-out retraining;
    the samples it holds are not retrained again (an interrupted repeat resumes to the same values:
    each counterfactual depends only on the reference replay, which is replayed again).
    """
    samples = np.asarray(samples, np.int64)
    steps = np.arange(trace.n_steps) if retrain_all else trace.last_epoch_steps()
    start = paths.params(seed, "initial" if retrain_all else "start_last_epoch")
    reference = learner_from_file(cfg, data, start)
    if repeat:
        nudge_parameters(reference, NUDGE, [seed, repeat])
    counterfactual = learner_from_file(cfg, data, start)
    first = first_steps(trace, steps, samples)
    loss = np.zeros(len(samples))
    done: Dict[int, float] = {}
    if progress is not None and progress.is_file():
        kept, wanted = read_csv_exact(progress), set(samples.tolist())
        done = {int(j): float(v) for j, v in zip(kept.datasource_index, kept.loss) if int(j) in wanted}
    bar = tqdm(total=int(np.sum(first >= 0)), desc=f"retrain without one (seed {seed}, repeat {repeat})",
               disable=not show_progress, leave=False, initial=len(done))
    for k, t in enumerate(steps):
        at_t = np.flatnonzero(first == t)
        if len(at_t):
            state = reference.state()
            for i in at_t:
                if int(samples[i]) in done:
                    loss[i] = done[int(samples[i])]
                    continue
                counterfactual.set_state(state)
                removed = np.zeros(len(data.train), bool)
                removed[samples[i]] = True
                run_steps(counterfactual, data, trace, steps[k:], cfg.augment, removed=removed)
                loss[i] = _val_loss(counterfactual, data)
                done[int(samples[i])] = loss[i]
                if progress is not None:
                    write_csv_atomic(progress, pd.DataFrame({"datasource_index": list(done),
                                                             "loss": list(done.values())}))
                bar.update(1)
        run_steps(reference, data, trace, [t], cfg.augment)
    bar.close()
    return np.where(first >= 0, loss - _val_loss(reference, data), 0.0)


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
