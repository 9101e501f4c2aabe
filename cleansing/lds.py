"""The linear datamodeling score (LDS; Park et al. 2023, "TRAK"): how well the sum of a method's
scores over the removed samples predicts the actual change of the run's target when a random part
of the training set is removed and the model retrained.

For subsets ``m = 1..M`` that each keep a fraction ``alpha`` of the training set (the same subsets
for every method and every rerun: drawn from the trial seed), the model is retrained on the kept
samples and the actual change of the mean validation loss, ``L_val(S_m) - L_val(all)``, is held
against the prediction ``sum over removed j of influence_j`` (the project's sign: an influence is
the change when its sample is removed). LDS is the Spearman correlation over the subsets; Pearson
beside it; each with a percentile bootstrap interval over the subsets.

Two counterfactuals (``seeds``):

* ``same``: the retraining replays the run's seed, initialisation and batch order without the
  removed samples (as ``-r``'s retraining does): the counterfactual that Hara's and this paper's
  SGD-influence estimate;
* ``fresh``: each subset draws its own initialisation (with ``full``) and batch order and
  augmentation (the last epoch's, with ``last-epoch``): the protocol of TRAK and dattri.

``retrain``: ``last-epoch`` (from the parameters before the last epoch) or ``full`` (every epoch).
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
from scipy import stats

from datasets import DataBundle

from .paths import RunPaths
from .trace import Trace, make_schedule
from .train import TrainConfig, evaluate_splits, learner_from_file, new_learner, run_steps

SEEDS = ("same", "fresh")
RETRAIN = ("last-epoch", "full")
LDS_COLUMNS = ["method", "seed", "counterfactual", "retrain", "subsets", "fraction", "spearman", "spearman_low",
               "spearman_high", "pearson", "pearson_low", "pearson_high"]


def lds_subsets(n_train: int, count: int, fraction: float, seed: int) -> np.ndarray:
    """(count, n_train) boolean masks of the kept samples, ``round(fraction * n_train)`` each, drawn
    from ``seed`` alone (identical for every method and rerun)."""
    keep = int(np.floor(fraction * n_train + 0.5))
    rng = np.random.default_rng([seed, 36])
    masks = np.zeros((count, n_train), bool)
    for m in range(count):
        masks[m, rng.permutation(n_train)[:keep]] = True
    return masks


def fresh_trace(trace: Trace, n_train: int, cfg: TrainConfig, seed: int, subset: int) -> Trace:
    """A schedule of the run's shape with its own batch order and augmentation seeds for ``subset``."""
    return make_schedule(n_train, trace.n_epochs, cfg.batch_size, float(trace.lr[0]), 1_000_003 * (seed + 1) + subset)


def subset_scores(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int, trace: Trace, kept: np.ndarray,
                  retrain: str, seeds: str, subset: int) -> dict:
    """Validation scores (test columns NaN) of the model retrained on the ``kept`` samples only."""
    removed = ~kept
    own = trace if seeds == "same" else fresh_trace(trace, len(kept), cfg, seed, subset)
    if retrain == "full":
        learner = (learner_from_file(cfg, data, paths.params(seed, "initial")) if seeds == "same"
                   else new_learner(cfg, data, 1_000_003 * (seed + 1) + subset))
        steps = range(own.n_steps)
    else:
        learner = learner_from_file(cfg, data, paths.params(seed, "start_last_epoch"))
        steps = own.last_epoch_steps()
    run_steps(learner, data, own, steps, cfg.augment, removed=removed, report=False)
    return evaluate_splits(learner, data, test=False)


def predicted_changes(scores: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``sum over removed j of scores_j`` for each subset (rows of ``kept``)."""
    return (~kept).astype(np.float64) @ np.asarray(scores, np.float64)


def correlations(predicted: np.ndarray, actual: np.ndarray, boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> Dict[str, float]:
    """Spearman and Pearson correlation of ``predicted`` and ``actual`` with percentile bootstrap
    intervals over the subsets (resampled with replacement, seeded)."""
    predicted, actual = np.asarray(predicted, np.float64), np.asarray(actual, np.float64)
    out = {"spearman": float(stats.spearmanr(predicted, actual)[0]),
           "pearson": float(stats.pearsonr(predicted, actual)[0])}
    rng = np.random.default_rng([seed, 361])
    draws = {"spearman": [], "pearson": []}
    for _ in range(boot):
        i = rng.integers(0, len(actual), len(actual))
        if np.ptp(predicted[i]) == 0 or np.ptp(actual[i]) == 0:
            continue
        draws["spearman"].append(stats.spearmanr(predicted[i], actual[i])[0])
        draws["pearson"].append(stats.pearsonr(predicted[i], actual[i])[0])
    tail = 100 * (1 - level) / 2
    for k, v in draws.items():
        low, high = np.percentile(v, [tail, 100 - tail]) if v else (np.nan, np.nan)
        out[f"{k}_low"], out[f"{k}_high"] = float(low), float(high)
    return out


def check_lds(count: int, fraction: float) -> Tuple[int, float]:
    """``(count, fraction)``, or a ValueError naming what is wrong (the drivers make it one line)."""
    if count < 2:
        raise ValueError(f"--lds {count}: LDS needs at least 2 subsets to correlate over")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--lds-fraction {fraction:g} must be between 0 and 1 (the fraction of the training "
                         f"set each subset keeps)")
    return count, fraction
