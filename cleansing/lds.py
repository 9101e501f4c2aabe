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

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from common.figures import save_figure  # noqa: E402
from common.fileio import read_csv_exact, write_csv_atomic  # noqa: E402
from datasets import DataBundle  # noqa: E402
from datasets.batches import split_batches  # noqa: E402

from .influence_csv import read_influence_csv, scores_by_position  # noqa: E402
from .paths import RunPaths  # noqa: E402
from .settings import RemovalConfig  # noqa: E402
from .trace import Trace, make_schedule  # noqa: E402
from .train import TrainConfig, evaluate_splits, learner_from_file, new_learner, run_steps  # noqa: E402

SEEDS = ("same", "fresh")
RETRAIN = ("last-epoch", "full")
LDS_COLUMNS = ["method", "seed", "counterfactual", "retrain", "subsets", "fraction", "targets", "spearman",
               "spearman_low", "spearman_high", "pearson", "pearson_low", "pearson_high"]


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
    return evaluate_splits(retrained_on(cfg, data, paths, seed, trace, kept, retrain, seeds, subset), data, test=False)


def retrained_on(cfg: TrainConfig, data: DataBundle, paths: RunPaths, seed: int, trace: Trace, kept: np.ndarray,
                 retrain: str, seeds: str, subset: int):
    """The learner retrained on the ``kept`` samples only (``retrain`` and ``seeds`` as in the module docstring)."""
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
    return learner


def target_losses(learner, data: DataBundle, count: int) -> np.ndarray:
    """The loss of each of the first ``count`` test images under ``learner`` (inference mode)."""
    part = dataclasses.replace(data, val=data.test.subset(np.arange(count)))
    return np.concatenate([learner.losses_and_predictions(x, y)[0] for x, y in split_batches(part, part.val)])


def target_trials(trial, count: int) -> list:
    """``trial`` with each of the first ``count`` test images as its whole validation set in turn
    (``Trial.with_validation``): what an estimator explains for ``--lds-targets``."""
    return [trial.with_validation(trial.data.test.subset(np.array([k]))) for k in range(count)]


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


def lds_tag(removal: RemovalConfig) -> str:
    """The name of a setting's retrainings under ``logs/lds_seed_<k>/``: counterfactual, retraining, fraction."""
    tag = f"{removal.lds_seeds}-{removal.lds_retrain_mode}-keep{removal.lds_fraction:g}"
    return tag + (f"-targets{removal.lds_targets}" if removal.lds_targets else "")


def run_subset(cfg: TrainConfig, removal: RemovalConfig, data: DataBundle, paths: RunPaths, seed: int,
               trace: Trace, subset: int) -> pd.DataFrame:
    """The one-row table of LDS subset ``subset`` of trial ``seed`` retrained (``logs/lds_seed_<k>/...``)."""
    kept = lds_subsets(len(data.train), subset + 1, removal.lds_fraction, seed)[subset]
    learner = retrained_on(cfg, data, paths, seed, trace, kept, removal.lds_retrain_mode, removal.lds_seeds, subset)
    row = evaluate_splits(learner, data, test=False)
    targets = target_losses(learner, data, removal.lds_targets) if removal.lds_targets else []
    return pd.DataFrame([{"subset": subset, "kept": int(kept.sum()), "val_loss": row["val_loss"],
                          "val_accuracy": row["val_accuracy"], **{f"target_{k}": v for k, v in enumerate(targets)}}])


def per_target(predicted: np.ndarray, actual: np.ndarray, boot: int = 1000, seed: int = 0) -> Dict[str, float]:
    """LDS with several targets (columns): the mean over targets of the per-target Spearman and Pearson
    over the subsets (rows), with percentile bootstrap intervals of that mean over the targets."""
    each = [correlations(predicted[:, k], actual[:, k], boot=0) for k in range(actual.shape[1])]
    out: Dict[str, float] = {}
    rng = np.random.default_rng([seed, 362])
    for key in ("spearman", "pearson"):
        values = np.array([e[key] for e in each])
        out[key] = float(np.nanmean(values))
        means = [np.nanmean(values[rng.integers(0, len(values), len(values))]) for _ in range(boot)]
        out[f"{key}_low"], out[f"{key}_high"] = (float(v) for v in np.percentile(means, [2.5, 97.5]))
    return out


def lds_tables(paths: RunPaths, removal: RemovalConfig, methods: Sequence[str], seeds: Sequence[int],
               n_train: int, base_targets: Optional[Callable[[int], np.ndarray]] = None
               ) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """``(lds, subsets)``: one row per method and trial (``LDS_COLUMNS``), and per trial and subset the
    actual change of the mean validation loss (against the final model's) with every method's
    prediction (column ``predicted_<Method>``). With ``--lds-targets K`` the LDS is the mean over the K
    test images of the per-target correlation (``base_targets(seed)``: the final model's loss on each;
    methods whose per-target scores are missing are left out)."""
    tag, count, K = lds_tag(removal), removal.lds, removal.lds_targets
    rows: List[dict] = []
    parts: List[pd.DataFrame] = []
    for seed in seeds:
        kept = lds_subsets(n_train, count, removal.lds_fraction, seed)
        base = float(read_csv_exact(paths.train_log(seed)).val_loss.iloc[-1])
        files = [read_csv_exact(paths.lds_subset(seed, tag, m)) for m in range(count)]
        actual = np.array([float(f.val_loss.iloc[0]) for f in files]) - base
        part = pd.DataFrame({"seed": seed, "subset": np.arange(count), "removed": (~kept).sum(axis=1),
                             "actual": actual})
        if K:
            targets = np.array([[float(f[f"target_{k}"].iloc[0]) for k in range(K)] for f in files])
            targets = targets - np.asarray(base_targets(seed))[None, :]
        for method in methods:
            info = {"method": method, "seed": seed, "counterfactual": removal.lds_seeds,
                    "retrain": removal.lds_retrain_mode, "subsets": count, "fraction": removal.lds_fraction,
                    "targets": K}
            if K:
                scores = paths.lds_target_scores(seed, method, K)
                if scores.is_file():
                    predicted = (~kept).astype(np.float64) @ read_csv_exact(scores).to_numpy(np.float64)
                    rows.append({**info, **per_target(predicted, targets, seed=seed)})
                continue
            csv = paths.influence_csv(method, seed)
            if not csv.is_file():
                continue
            predicted = predicted_changes(scores_by_position(read_influence_csv(csv, n_train)), kept)
            part[f"predicted_{method}"] = predicted
            rows.append({**info, **correlations(predicted, actual, seed=seed)})
        parts.append(part)
    return pd.DataFrame(rows, columns=LDS_COLUMNS), pd.concat(parts, ignore_index=True)


def plot_lds(subsets: pd.DataFrame, table: pd.DataFrame, method: str, path) -> None:
    """Predicted against actual change over the subsets, one colour per trial, LDS in the legend."""
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    for seed, part in subsets.groupby("seed"):
        row = table[(table.method == method) & (table.seed == seed)].iloc[0]
        ax.scatter(part[f"predicted_{method}"], part["actual"], s=14, alpha=0.7,
                   label=f"seed {seed}: Spearman {row.spearman:.2f} [{row.spearman_low:.2f}, {row.spearman_high:.2f}]")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel(f"predicted change: sum of {method}'s influences over the left-out samples")
    ax.set_ylabel("actual change of the mean validation loss")
    first = table[table.method == method].iloc[0]
    ax.set_title(f"LDS of {method} ({first.counterfactual}-seed, {first.retrain} retraining, keep "
                 f"{first.fraction:g})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def write_lds(paths: RunPaths, removal: RemovalConfig, methods: Sequence[str], seeds: Sequence[int],
              n_train: int, base_targets: Optional[Callable[[int], np.ndarray]] = None) -> pd.DataFrame:
    """``summary/lds.csv``, ``summary/lds_subsets.csv`` and ``fig/lds_<Method>.png`` (one target: the
    mean validation loss); returns the LDS table."""
    table, subsets = lds_tables(paths, removal, methods, seeds, n_train, base_targets)
    write_csv_atomic(paths.run_table("lds"), table)
    write_csv_atomic(paths.run_table("lds_subsets"), subsets)
    for method in ([] if removal.lds_targets else table.method.unique()):
        plot_lds(subsets, table, method, paths.run_figure(f"lds_{method}"))
    return table
