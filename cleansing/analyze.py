"""Analysis stage: summary tables and the figure of test accuracy against samples removed."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cleansing.paths import RunPaths  # noqa: E402
from common.figures import save_figure  # noqa: E402
from common.fileio import read_csv_exact, write_csv_atomic  # noqa: E402

from .retrain import read_score_csv  # noqa: E402

NO_REMOVAL = "No_Removal"
_SCORE = re.compile(r"score_delete_worst_(\d+)_seed_(\d+)\.csv$")
METRICS = ["test_accuracy", "test_loss", "val_accuracy", "val_loss"]


def collect_scores(paths: RunPaths) -> pd.DataFrame:
    """One row per score file: method, n_drops, seed and the metrics of its last row."""
    rows = []
    for f in sorted((paths.root / "score").glob("*/score_delete_worst_*_seed_*.csv")):
        m = _SCORE.search(f.name)
        if not m:
            continue
        last = read_score_csv(f).iloc[-1]
        rows.append({"method": f.parent.name, "n_drops": int(m.group(1)), "seed": int(m.group(2)),
                     **{k: float(last[k]) for k in METRICS}})
    return pd.DataFrame(rows, columns=["method", "n_drops", "seed"] + METRICS)


def summarize(scores: pd.DataFrame) -> pd.DataFrame:
    """Per method and n_drops: trial count, mean and std (population, ddof=0) of each metric."""
    g = scores.groupby(["method", "n_drops"], sort=True)
    out = g.size().rename("n_trials").to_frame()
    for k in METRICS:
        out[f"{k}_mean"] = g[k].mean()
        out[f"{k}_std"] = g[k].std(ddof=0)
    return out.reset_index()


def draw_result(ax, summary: pd.DataFrame, title: str = "") -> None:
    """Test accuracy against number of removed samples on ``ax`` (log x, mean +- std, No Removal flat)."""
    base = summary[summary.method == NO_REMOVAL]
    for method, df in summary[(summary.method != NO_REMOVAL) & (summary.n_drops > 0)].groupby("method"):
        df = df.sort_values("n_drops")
        ax.errorbar(df.n_drops, df.test_accuracy_mean, yerr=df.test_accuracy_std, marker="o",
                    capsize=3, label=method.replace("_", " "))
    if len(base):
        m, s = float(base.test_accuracy_mean.iloc[0]), float(base.test_accuracy_std.iloc[0])
        ax.axhline(m, color="k", ls="--", lw=1, label="No Removal")
        ax.axhspan(m - s, m + s, color="k", alpha=0.08)
    ax.set_xscale("log")
    ax.set_xlabel("number of removed training samples (most harmful first)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:  # a run without retrainings has no line to name
        ax.legend()


def plot_result(summary: pd.DataFrame, path: Path, title: str = "") -> None:
    """``fig/result.png``: ``draw_result`` on one axis (the paper's Fig. 2 and 4)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    draw_result(ax, summary, title)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_result_panels(summaries: Sequence[Tuple[str, pd.DataFrame]], path: Path, title: str = "") -> None:
    """One ``draw_result`` panel per (title, summary), side by side (the paper's Fig. 5)."""
    n = len(summaries)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.2), squeeze=False)
    for ax, (name, summary) in zip(axes[0], summaries):
        draw_result(ax, summary, name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def cache_sizes(paths: RunPaths, seeds: Iterable[int], methods: Iterable[str],
                caches: Optional[Dict[str, str]] = None, epochs: Optional[int] = None) -> pd.DataFrame:
    """Files and bytes on disk of each method's parameter cache, per trial. ``caches``: method ->
    'steps' (the per-step parameters of the last epoch), 'epochs' (the parameters after every epoch,
    the final ones included), 'none', or 'final' (the default: the final
    parameters only)."""
    caches = caches or {}
    rows = []
    for seed in seeds:
        for method in methods:
            kind = caches.get(method, "final")
            if kind == "steps":
                files = sorted(paths.steps_dir(seed).glob("step_*.h5"))
            elif kind == "epochs":
                files = paths.epoch_param_files(seed, epochs or 0)
            elif kind == "none":
                files = []
            else:
                files = [paths.params(seed, "final")]
            files = [f for f in files if f.is_file()]
            rows.append({"method": method, "seed": seed, "files": len(files),
                         "bytes": sum(f.stat().st_size for f in files)})
    return pd.DataFrame(rows, columns=["method", "seed", "files", "bytes"])


def validation_summary(paths: RunPaths, seeds: Optional[Sequence[int]] = None) -> Optional[pd.DataFrame]:
    """validation.csv / validation_pairs.csv and one scatter plot per method, from the trials'
    ``logs/validation_pairs_seed_<k>.csv`` (those of ``seeds`` when given); None when no trial was
    validated."""
    from .validate import agreement
    files = sorted(f for f in paths.logs.glob("validation_pairs_seed_*.csv")
                   if seeds is None or any(f.name == f"validation_pairs_seed_{s}.csv" for s in seeds))
    if not files:
        return None
    pairs = pd.concat([read_csv_exact(f) for f in files], ignore_index=True)
    rows = [{"method": m, "seed": int(s), "n": len(df), **agreement(df.estimate, df.actual)}
            for (m, s), df in pairs.groupby(["method", "seed"])]
    table = pd.DataFrame(rows, columns=["method", "seed", "n", "pearson", "spearman", "kendall", "jaccard20"])
    write_csv_atomic(paths.run_table("validation_pairs"), pairs)
    write_csv_atomic(paths.run_table("validation"), table)
    for m, df in pairs.groupby("method"):
        fig, ax = plt.subplots(figsize=(4.8, 4.6))
        ax.scatter(df.actual, df.estimate, s=14, alpha=0.7)
        repeats = int(df.repeats.max()) if "repeats" in df else 1
        if repeats > 1:  # the spread of the mean actual change over its repeats
            ax.errorbar(df.actual, df.estimate, xerr=df.actual_sd / np.sqrt(repeats), fmt="none", lw=0.6,
                        alpha=0.5, label=f"actual: mean of {repeats} retrainings, +- s.e.")
        lo = float(min(df.actual.min(), df.estimate.min()))
        hi = float(max(df.actual.max(), df.estimate.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="estimate = actual")
        t = table[table.method == m]
        ax.set_title(f"{m}: Pearson {t.pearson.mean():.3f}, Kendall {t.kendall.mean():.3f}")
        ax.set_xlabel("actual change of validation loss (leave-one-out)")
        ax.set_ylabel("estimated influence")
        ax.legend(loc="upper left", fontsize=8)
        ax.xaxis.set_major_locator(plt.MaxNLocator(5))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save_figure(fig, paths.run_figure(f"validation_{m}"), dpi=110)
    return table


def run_scores(scores: pd.DataFrame, seeds: Sequence[int], methods: Sequence[str],
               removals: Optional[Sequence[int]] = None) -> pd.DataFrame:
    """The rows of ``scores`` that a run asked for: its trials, its methods (and No_Removal) and its
    ``removals`` (all when None); a folder may hold more from earlier runs with other settings."""
    keep = scores.seed.isin(list(seeds)) & scores.method.isin([*methods, NO_REMOVAL])
    if removals is not None:
        keep &= scores.n_drops.isin(list(removals))
    return scores[keep].reset_index(drop=True)


def analyze(paths: RunPaths, seeds: List[int], methods: List[str], title: str = "",
            timings: Optional[pd.DataFrame] = None, caches: Optional[Dict[str, str]] = None,
            removals: Optional[Sequence[int]] = None, log=print, epochs: int = 0) -> pd.DataFrame:
    """Write summary.csv, cache_size.csv, timings.csv and fig/result.png for this run's trials,
    methods and ``removals`` only (``run_scores``; a note through ``log`` when the folder holds more);
    return the summary. ``caches``: method -> the parameter cache it reads (see ``cache_sizes``; ``epochs``:
    the training's, for the 'epochs' cache)."""
    every = collect_scores(paths)
    mine = run_scores(every, seeds, methods, removals)
    if len(mine) < len(every):
        other = every.merge(mine, how="left", indicator=True).query("_merge == 'left_only'")
        log(f"note: the summary covers this run's trial(s) {sorted(set(seeds))}, methods {list(methods)} and "
            f"-r {sorted(set(mine.n_drops))}; {len(other)} other score file(s) in the folder (methods "
            f"{sorted(set(other.method))}, seeds {sorted(set(other.seed))}, n {sorted(set(other.n_drops))}) are "
            f"left out: rerun with those settings to summarise them (nothing is recomputed)")
    summary = summarize(mine)
    write_csv_atomic(paths.run_table("summary"), summary)
    write_csv_atomic(paths.run_table("cache_size"), cache_sizes(paths, seeds, methods, caches, epochs))
    if timings is not None:
        write_csv_atomic(paths.run_table("timings"), timings)
    plot_result(summary, paths.run_figure("result"), title)
    validation_summary(paths, seeds)
    return summary
