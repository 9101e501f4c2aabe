"""The report: ``<committed>/report/index.md`` and its figures, built only from the committed run
folders (``docs/reproduction/<scale>/runs/``), never from weights and never recomputing a trial.

Reading (``load_experiment``) and writing (``build_report``) live here; every number comes from
``reproduction.stats``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cleansing.analyze import collect_scores, plot_result, summarize  # noqa: E402
from cleansing.paths import RunPaths  # noqa: E402
from common.fileio import write_csv_atomic, write_text_atomic  # noqa: E402

from . import stats  # noqa: E402
from .scales import Experiment, Scale  # noqa: E402

#: Claim 5: whose estimates predict the removal of each method's samples (Random's and Loss' sets by Ours).
ESTIMATOR_FOR = {"Hara": "Hara", "Ours": "Ours", "Random": "Ours", "Loss": "Ours"}


@dataclass
class ExperimentData:
    """What the committed folder of one experiment holds: scores, influence CSVs, trial markers."""

    exp: Experiment
    folder: Path
    scores: pd.DataFrame
    influence: Dict[Tuple[str, int], pd.DataFrame] = field(default_factory=dict)
    trials: Dict[int, dict] = field(default_factory=dict)
    timings: Optional[pd.DataFrame] = None
    turnover_check: Optional[pd.DataFrame] = None
    train_logs: Dict[int, pd.DataFrame] = field(default_factory=dict)

    @property
    def seeds(self) -> List[int]:
        return sorted(self.trials)

    @property
    def wall_s(self) -> float:
        """Seconds of compute of the completed trials (stage timings; the wall time where absent)."""
        return float(sum(t.get("compute_s", t.get("wall_s", 0.0)) for t in self.trials.values()))


def load_experiment(exp: Experiment, folder: Path) -> ExperimentData:
    """Read the committed folder of ``exp``; only trials with a marker (complete) count."""
    trials = {}
    for f in sorted((folder / "trials").glob("seed_*.json")):
        info = json.loads(f.read_text())
        trials[int(info["seed"])] = info
    scores = collect_scores(RunPaths(folder))
    scores = scores[scores.seed.isin(list(trials))].reset_index(drop=True)
    data = ExperimentData(exp, folder, scores, trials=trials)
    for f in sorted((folder / "influence").glob("*/influence_*_*.csv")):
        seed = int(f.stem.rsplit("_", 1)[1])
        if seed in trials:
            data.influence[(f.parent.name, seed)] = pd.read_csv(f)
    tfiles = sorted((folder / "logs").glob("timings_seed_*.csv"))
    if tfiles:
        data.timings = pd.concat([pd.read_csv(f) for f in tfiles], ignore_index=True)
    for f in sorted((folder / "train_log").glob("train_log_seed_*.csv")):
        seed = int(f.stem.rsplit("_", 1)[1])
        if seed in trials:
            data.train_logs[seed] = pd.read_csv(f)
    cfiles = sorted((folder / "summary").glob("turnover_check_*.csv"))
    if cfiles:
        data.turnover_check = pd.concat(
            [pd.read_csv(f).assign(seed=int(f.stem.rsplit("_", 1)[1])) for f in cfiles], ignore_index=True
        )
    return data


# ---------------------------------------------------------------------------- formatting
def pp(x: float) -> str:
    """A fraction as percentage points with sign, 2 decimals ('+0.12'); '-' for NaN."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.2f}"


def pct_sd(mean: float, sd: float) -> str:
    """'92.84 +- 0.31' (percent); the sd is '-' with one trial."""
    return f"{100 * mean:.2f} +- {'-' if math.isnan(sd) else f'{100 * sd:.2f}'}"


def num(x: float, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def pval(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def ci_text(row: pd.Series, prefix: str, scale: float = 100.0, digits: int = 2) -> str:
    m, lo, hi = row[f"{prefix}mean"], row[f"{prefix}ci_low"], row[f"{prefix}ci_high"]
    if isinstance(m, float) and math.isnan(m):
        return "-"
    if isinstance(lo, float) and math.isnan(lo):
        return f"{scale * m:+.{digits}f}"
    return f"{scale * m:+.{digits}f} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"


def accuracy_table(data: ExperimentData) -> List[str]:
    """Markdown rows: per method and n, test accuracy mean +- sd and the paired differences (pp)."""
    if data.scores.empty:
        return ["(no complete trial yet)"]
    table = stats.comparison_table(data.scores, metrics=("test_accuracy", "test_loss"))
    base_acc = stats.baseline_row(data.scores, "test_accuracy")
    base_loss = stats.baseline_row(data.scores, "test_loss")
    out = [
        f"No Removal: test accuracy (%) {pct_sd(base_acc['mean'], base_acc['sd'])} "
        f"(mean +- sd over {base_acc['trials']} trials), test loss {num(base_loss['mean'])} +- {num(base_loss['sd'])}.",
        "",
        "| n removed | method | trials | test acc. % (mean +- sd) | - No Removal, pp [95% CI] | p (t / Wilcoxon) "
        "| MDE pp | - Random, pp [95% CI] | p (t / Wilcoxon) | Ours - Hara, pp [95% CI] | test loss (mean +- sd) "
        "| loss - No Removal [95% CI] |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    acc = table[table.metric == "test_accuracy"]
    loss = table[table.metric == "test_loss"].set_index(["method", "n_drops"])
    for r in acc.sort_values(["n_drops", "method"]).itertuples(index=False):
        row = pd.Series(r._asdict())
        lrow = loss.loc[(r.method, r.n_drops)]
        out.append(
            f"| {r.n_drops} | {r.method} | {r.trials} | {pct_sd(r.mean, r.sd)} "
            f"| {ci_text(row, 'base_')} | {pval(r.base_p_t)} / {pval(r.base_p_wilcoxon)} "
            f"| {'-' if math.isnan(r.base_mde) else f'{100 * r.base_mde:.2f}'} "
            f"| {ci_text(row, 'rand_')} | {pval(r.rand_p_t)} / {pval(r.rand_p_wilcoxon)} "
            f"| {ci_text(row, 'pair_')} | {num(lrow['mean'])} +- {num(lrow['sd'])} "
            f"| {ci_text(lrow, 'base_', 1.0, 4)} |"
        )
    return out


# ---------------------------------------------------------------------------- verdicts
def regime_text(data: ExperimentData, last: int = 3) -> str:
    """How settled the trainings are: per trial, the range (max - min) of the validation accuracy over
    the last ``last`` epochs, and its mean; a large range means the last epoch, which removal retrains,
    sits in an unsettled regime where small changes move the result a lot."""
    ranges = {
        s: float(g.val_accuracy.tail(last).max() - g.val_accuracy.tail(last).min())
        for s, g in sorted(data.train_logs.items())
        if len(g) and "val_accuracy" in g
    }
    if not ranges:
        return ""
    each = ", ".join(f"seed {s}: {100 * r:.1f}" for s, r in ranges.items())
    return (
        f"Training regime: the validation accuracy moves over the last {last} epochs by "
        f"{100 * float(np.mean(list(ranges.values()))):.1f} pp on average ({each}); the last epoch is what each "
        "removal retrains."
    )


def regime_row(data: ExperimentData, last: int = 3) -> dict:
    """An experiment's regime (issue 32): training size, steps per epoch, trials, No_Removal's test
    accuracy (mean, sample sd), the range of validation accuracy over the last ``last`` epochs (mean
    and median over trials) and the sd of Random - No_Removal at the primary n: the noise floor a
    claim must beat."""
    e, s = data.exp, data.scores
    base = s[(s.method == stats.NO_REMOVAL) & (s.n_drops == 0)].test_accuracy.to_numpy() if len(s) else np.array([])
    ranges = [float(g.val_accuracy.tail(last).max() - g.val_accuracy.tail(last).min())
              for _, g in sorted(data.train_logs.items()) if len(g) and "val_accuracy" in g]
    floor = math.nan
    if len(s) and ((s.method == "Random") & (s.n_drops == e.primary_n)).any() and e.primary_n:
        floor = stats.paired_by_seed(s, ("Random", e.primary_n), stats.baseline_of(s), "test_accuracy").sd
    return {"experiment": e.name, "n_train": e.n_train, "steps_per_epoch": math.ceil(e.n_train / e.batch_size)
            if e.n_train else math.nan, "trials": len(data.seeds),
            "no_removal_mean": float(np.mean(base)) if len(base) else math.nan,
            "no_removal_sd": float(np.std(base, ddof=1)) if len(base) > 1 else math.nan,
            "val_range_mean": float(np.mean(ranges)) if ranges else math.nan,
            "val_range_median": float(np.median(ranges)) if ranges else math.nan, "noise_floor_sd": floor}


def regime_table(datas: Sequence[ExperimentData]) -> List[str]:
    """The regime of every experiment as a markdown table (``regime_row``; percent and pp)."""
    lines = ["| experiment | training size | steps / epoch | trials | No_Removal test accuracy (%) | "
             "last-3-epoch validation range, mean / median (pp) | sd of Random - No_Removal (pp) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for d in datas:
        r = regime_row(d)
        f = lambda x, k=2: "-" if not np.isfinite(x) else f"{100 * x:.{k}f}"  # noqa: E731
        size = f"{r['n_train']:,}" if r["n_train"] else "all"
        steps = "-" if not np.isfinite(r["steps_per_epoch"]) else f"{int(r['steps_per_epoch'])}"
        lines.append(f"| {d.exp.label or d.exp.name} | {size} | {steps} | {r['trials']} | "
                     f"{f(r['no_removal_mean'])} +- {f(r['no_removal_sd'])} | {f(r['val_range_mean'], 1)} / "
                     f"{f(r['val_range_median'], 1)} | {f(r['noise_floor_sd'])} |")
    return lines


def trial_differences(data: ExperimentData, n: int,
                      methods: Sequence[str] = ("Ours", "Hara", "Random", "Loss")) -> List[str]:
    """Each trial's test-accuracy difference to No_Removal at ``n`` (pp), one row per seed, so that a
    single outlying trial is visible beside the mean."""
    s = data.scores
    if s.empty:
        return []
    base = stats.baseline_of(s)
    cols = [m for m in methods if ((s.method == m) & (s.n_drops == n)).any()]
    lines = ["| seed | " + " | ".join(f"{m} - No_Removal (pp)" for m in cols) + " |",
             "| ---: | " + " | ".join("---:" for _ in cols) + " |"]
    b = s[(s.method == base[0]) & (s.n_drops == base[1])].set_index("seed").test_accuracy
    for seed in data.seeds:
        cells = []
        for m in cols:
            v = s[(s.method == m) & (s.n_drops == n) & (s.seed == seed)].test_accuracy
            cells.append(f"{100 * (float(v.iloc[0]) - float(b[seed])):+.2f}" if len(v) and seed in b else "-")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return lines


def claim_gain(
    data: ExperimentData, n: int, delta: float, what: str = "Ours", reference: Optional[str] = "Hara"
) -> stats.Verdict:
    """``stats.gain_verdict`` for ``what`` at the primary n of an experiment."""
    s = data.scores
    if s.empty or not ((s.method == what) & (s.n_drops == n)).any():
        return stats.Verdict(stats.PENDING, f"no complete trial at n = {n} yet")
    base = stats.baseline_of(s)
    gain = stats.paired_by_seed(s, (what, n), base, "test_accuracy")
    vs_r = stats.paired_by_seed(s, (what, n), (stats.RANDOM, n), "test_accuracy")
    rnd = stats.paired_by_seed(s, (stats.RANDOM, n), base, "test_accuracy")
    par = (
        stats.paired_by_seed(s, (what, n), (reference, n), "test_accuracy")
        if reference and (s.method == reference).any()
        else None
    )
    v = stats.gain_verdict(gain, vs_r, rnd, par, delta, what)
    if par is not None:
        v = stats.Verdict(v.label, v.reason + f". As well as {reference}: {stats.parity_text(par, delta)}")
    return v


def versus_loss_line(data: ExperimentData, n: int) -> List[str]:
    """Whether influence earns its cost: Ours and Hara against ``Loss`` (the free ranking by final
    training loss) at ``n``, paired by trial; empty when the experiment has no ``Loss``."""
    s = data.scores
    if s.empty or not ((s.method == "Loss") & (s.n_drops == n)).any():
        return []
    parts = []
    for m in ("Ours", "Hara"):
        if ((s.method == m) & (s.n_drops == n)).any():
            p = stats.paired_by_seed(s, (m, n), ("Loss", n), "test_accuracy")
            parts.append(f"{m} - Loss {pp(p.mean)} [{pp(p.ci_low)}, {pp(p.ci_high)}] pp "
                         f"(p {pval(p.p_t)} / {pval(p.p_wilcoxon)}, {p.n} trials)")
    loss = stats.paired_by_seed(s, ("Loss", n), stats.baseline_of(s), "test_accuracy")
    return [f"Against the free ranking by training loss at n = {n} (does influence earn its cost?): "
            + "; ".join(parts) + f". Loss - No Removal {pp(loss.mean)} [{pp(loss.ci_low)}, {pp(loss.ci_high)}] pp.",
            ""]


def claim4_verdict(data: ExperimentData, delta: float) -> stats.Verdict:
    """Accuracy by ``claim_gain`` for turn-over dropout; 'reproduced' also needs the test loss to fall."""
    n = data.exp.primary_n
    v = claim_gain(data, n, delta, what="Turnover_dropout", reference=None)
    if v.label == stats.PENDING:
        return v
    loss = stats.paired_by_seed(data.scores, ("Turnover_dropout", n), stats.baseline_of(data.scores), "test_loss")
    text = f"; test loss - No Cleansing {loss.mean:+.4f} [{loss.ci_low:+.4f}, {loss.ci_high:+.4f}]"
    if v.label == stats.REPRODUCED and not loss.ci_high < 0:
        return stats.Verdict(stats.INCONCLUSIVE, v.reason + text + " (accuracy rises, the loss fall is not resolved)")
    if data.exp.trials < 6:
        text += (
            f"; with {loss.n} runs the Wilcoxon test cannot reach p < 0.05 (its smallest two-sided p is "
            f"{2 / 2 ** max(loss.n, 1):.3g}), so the t interval decides"
        )
    return stats.Verdict(v.label, v.reason + text)


def combine(verdicts: Sequence[stats.Verdict]) -> str:
    """One label for several verdicts: all reproduced -> reproduced; any not reproduced -> that; else inconclusive."""
    labels = [v.label for v in verdicts]
    if labels and all(lab == stats.REPRODUCED for lab in labels):
        return stats.REPRODUCED
    if any(lab == stats.NOT_REPRODUCED for lab in labels):
        return stats.NOT_REPRODUCED
    return stats.INCONCLUSIVE


# ---------------------------------------------------------------------------- figures
def plot_differences(datas: Sequence[Tuple[str, ExperimentData]], path: Path, metric: str = "test_accuracy") -> None:
    """Per experiment a panel: paired difference to No Removal (mean, 95% CI) against n, per method;
    the methods' points are offset sideways so that their error bars do not hide each other, and the
    primary n (the verdict's, fixed in advance) is marked."""
    fig, axes = plt.subplots(1, len(datas), figsize=(4.8 * len(datas), 4.0), squeeze=False)
    for ax, (title, data) in zip(axes[0], datas):
        if not data.scores.empty:
            t = stats.comparison_table(data.scores, metrics=(metric,))
            groups = list(t.groupby("method"))
            for i, (method, g) in enumerate(groups):
                g = g.sort_values("n_drops")
                scale = 100.0 if "accuracy" in metric else 1.0
                y = scale * g.base_mean.to_numpy()
                err = scale * (g.base_ci_high - g.base_mean).to_numpy()
                shift = 1.06 ** (i - (len(groups) - 1) / 2)  # a log axis: a factor, not a step
                ax.errorbar(g.n_drops * shift, y, yerr=np.nan_to_num(err), marker="o", capsize=3,
                            label=method.replace("_", " "))
        if data.exp.primary_n:
            ax.axvline(data.exp.primary_n, color="grey", lw=1, ls=":", label=f"primary n = {data.exp.primary_n}")
        ax.axhline(0, color="k", lw=1, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("training samples removed (most harmful first)")
        ax.set_ylabel(
            ("test accuracy - No Removal (pp)" if "accuracy" in metric else f"{metric} - No Removal")
            + ", mean and 95% CI"
        )
        ax.set_title(f"{title}\n({len(data.seeds)} trials; verdict at n = {data.exp.primary_n})", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_prediction(panels: Sequence[Tuple[str, pd.DataFrame, Dict[str, float]]], path: Path) -> None:
    """Claim 5, one panel per experiment: predicted (sum of influence) against actual change of the
    validation loss, each pair a point; the title quotes the panel's correlations and slope with their
    trial-bootstrap intervals (``stats.clustered_correlation``), as the report's text does."""
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 5.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, pairs, c) in zip(axes.flat, panels):
        for method, g in pairs.groupby("method"):
            ax.scatter(g.predicted, g.actual, s=14 + 2 * np.sqrt(g.n_drops), alpha=0.7,
                       label=f"{method} (predicted by {g.estimator.iloc[0]})")
        lo = float(min(pairs.predicted.min(), pairs.actual.min()))
        hi = float(max(pairs.predicted.max(), pairs.actual.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel("predicted change of validation loss\n(sum of the n removed samples' influence)")
        ax.set_ylabel("actual change after retraining")
        ax.set_title(f"{title}: {c['n']} pairs, {c['clusters']} trials\n{correlation_text(c, sep=chr(10))}",
                     fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_claim4(data: ExperimentData, path: Path) -> None:
    """Claim 4: test accuracy and loss per run for No Cleansing, Turn-over dropout and Random (lines join a run)."""
    s = data.scores
    n = data.exp.primary_n
    base = stats.baseline_of(s)
    cols = [("No cleansing", base), ("Turn-over dropout", ("Turnover_dropout", n)), ("Random 1%", ("Random", n))]
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.8))
    for ax, metric in zip(axes, ("test_accuracy", "test_loss")):
        for seed in data.seeds:
            ys = []
            for _, (m, k) in cols:
                v = s[(s.method == m) & (s.n_drops == k) & (s.seed == seed)][metric]
                ys.append(float(v.iloc[0]) if len(v) else np.nan)
            ax.plot(range(3), ys, marker="o", alpha=0.8, label=f"seed {seed}")
        ax.set_xticks(range(3))
        ax.set_xticklabels([c[0] for c in cols], fontsize=8)
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(data.exp.label, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- the report
def cache_table_lines() -> Tuple[List[str], Optional[list]]:
    """Claim 3 (Table 1) from the size of a cnn6 parameter file saved now (seconds; ``cache_table.py``)."""
    try:
        from sgd_influence import cache_table

        sizes = {key: cache_table.cnn6_file_bytes(shape) for _, key, shape in cache_table.SETTINGS}
        table = cache_table.build_table(sizes, 32, 20)
    except Exception as exc:  # the report must not fail on Table 1
        return [f"(cache table not computed: {exc})"], None
    lines = [
        "| dataset | method | stored | GB (here) | paper GB | here / paper |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.dataset} | {r.method} | {r.stored} | {r.GB:.6g} | {r.paper_GB:g} | {r.ratio:.4f} |")
    ratios = []
    for ds, g in table.groupby("dataset"):
        h = float(g[g.method.str.startswith("Hara")].bytes.iloc[0])
        o = float(g[g.method.str.startswith("Ours")].bytes.iloc[0])
        ratios.append((ds, h / o, int(g.steps_per_epoch.iloc[0])))
    return lines, ratios


def cost_lines(datas: Sequence[ExperimentData]) -> List[str]:
    """Per experiment: trials done, mean wall time per trial, and the mean seconds of each stage
    (training, each influence estimator, all retrainings together) from ``logs/timings_seed_<k>.csv``."""
    out = [
        "## Cost",
        "",
        "| experiment | trials | s per trial (mean) | training s | influence s | retrainings s (all n, methods) |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for d in datas:
        if not d.seeds:
            continue
        wall = d.wall_s / len(d.seeds)
        train = infl = evals = "-"
        t = d.timings
        if t is not None and len(t):
            t = t[t.seed.isin(d.seeds)]
            tr = t[t.stage == "train"].groupby("seed").seconds.sum()  # epochs before the last + the last
            train = f"{tr.mean():.0f}" if len(tr) else "-"
            inf = t[t.stage == "infl"].groupby("method").seconds.mean()
            infl = ", ".join(f"{m} {v:.0f}" for m, v in inf.items()) or "-"
            ev = t[t.stage.str.startswith("eval")].groupby("seed").seconds.sum()
            evals = f"{ev.mean():.0f}" if len(ev) else "-"
        out.append(f"| {d.exp.name} | {len(d.seeds)} | {wall:.0f} | {train} | {infl} | {evals} |")
    return out + [""]


#: A verdict row of the report's first table: (claim, verdict, reason).
VerdictRow = Tuple[str, str, str]


@dataclass
class Section:
    """A part of the report: its markdown lines and the verdict rows it adds to the first table."""

    lines: List[str] = field(default_factory=list)
    verdicts: List[VerdictRow] = field(default_factory=list)


def cpu_text(datas: Dict[str, ExperimentData]) -> str:
    """The CPU seconds and the wall seconds of the trials' calls where their markers record them (issue
    32), and the trainings taken over from another scale's trials; empty when no marker has them."""
    infos = [t for d in datas.values() for t in d.trials.values()]
    timed = [t for t in infos if "cpu_s" in t]
    reused = [t["training_from"] for t in infos if t.get("training_from")]
    text = ""
    if timed:
        text += (f" {len(timed)} trial{'s' * (len(timed) != 1)} record the CPU seconds of their own calls "
                 f"(interrupted calls included, up to their last minute): {sum(t['cpu_s'] for t in timed) / 3600:.2f} "
                 f"CPU-hours in {sum(t['wall_s'] for t in timed) / 3600:.2f} wall hours.")
    if reused:
        commits = sorted({str(r.get("commit")) for r in reused})
        text += (f" {len(reused)} trial{'s' * (len(reused) != 1)} started from the finished training of the "
                 f"{reused[0].get('scale', 'other')} trial with the same settings and seed (`--reuse-training`; "
                 f"training code at {', '.join(commits)}); its training's time is in the stage timings, not in the "
                 "calls' wall and CPU seconds.")
    return text


def header_lines(scale: Scale, datas: Dict[str, ExperimentData], commit: str) -> List[str]:
    """Title, status (trials done), how the report was built and compared, the trials' code, the regime."""
    done = sum(len(d.seeds) for d in datas.values())
    total = sum(e.trials for e in scale.experiments if not e.needs)
    wall = sum(d.wall_s for d in datas.values())
    partial = done < total
    status = f"**partial: {done} of {total} trials**" if partial else f"complete: {total} of {total} trials"
    lines = [
        f"# Reproduction report, scale `{scale.name}`",
        "",
        f"Status: {status} (experiments whose data are not on this machine are not counted). "
        f"Built by `python reproduce.py --scale {scale.name} --report-only` from the committed run folders "
        f"`docs/reproduction/{scale.name}/runs/`{f' at commit {commit}' if commit else ''}. "
        f"Compute time of the completed trials: {wall / 3600:.2f} h (sum of the trials' stage wall times, one process "
        f"per trial, two at once on a 2-core machine shared with other work; a stage's time includes any time the "
        f"study was paused for a benchmark, so this overstates the compute).{cpu_text(datas)}",
        "",
        "Every comparison is paired by trial (same seed: same split, initialisation and batch order). "
        "Intervals are 95% Student-t intervals of the mean paired difference; p-values: paired t-test and "
        "Wilcoxon signed-rank (two-sided, scipy.stats); MDE: the true difference a paired t-test at 5% finds "
        f"with 80% power given the observed spread. The resolution the study aims at: {100 * scale.delta:.2f} pp. "
        "The verdict of each claim is taken at a removal size fixed before any result (the primary n); "
        "the other n are shown, not tested for the verdict (no picking of the best n).",
        "",
    ]
    commits: Dict[str, int] = {}
    for d in datas.values():
        for info in d.trials.values():
            key = str(info.get("commit") or "not recorded")
            commits[key] = commits.get(key, 0) + 1
    if commits:
        lines += ["Code of the trials (the commit in each trial's marker; trials before issue 32 did not record "
                  "it): " + ", ".join(f"{c} ({n} trial{'s' * (n != 1)})" for c, n in sorted(commits.items())) + ". "
                  "Refactors between them keep every influence and score CSV byte-identical (each commit that "
                  "changes results says so).", ""]
    if scale.regime:
        lines += [scale.regime, ""]
    return lines


def pilot_lines(scale: Scale, committed: Path) -> List[str]:
    """The criterion, the table and the choice of the pilot that chose ``scale``'s size (read from the
    pilot's committed runs beside ``committed``); empty for a scale without one."""
    if not scale.pilot:
        return []
    from .pilot import choose_size, chosen_line, criterion_line, load_pilot, size_table_lines
    from .scales import SCALES

    pilot = SCALES[scale.pilot]
    table = load_pilot(pilot, committed.parent / scale.pilot)
    trials = pilot.experiments[0].trials
    return [f"Which training sizes met the pilot's criterion (docs/reproduction/{scale.pilot}/pilot.md, three seeds "
            "per size, training only):", "", criterion_line(), "", *size_table_lines(table, trials), "",
            chosen_line(table, choose_size(table, trials), trials), ""]


def regime_section(scale: Scale, datas: Dict[str, ExperimentData], committed: Optional[Path] = None) -> Section:
    """How settled each experiment's training is (the noise floor every claim must beat), after the
    pilot's table where a pilot chose the scale's size."""
    return Section([
        "## Regime of every experiment",
        "",
        "How settled each experiment's training is, before any verdict: a claim's difference must beat the "
        "noise floor (the sd of Random - No_Removal over trials). The paper's own figures: 50,000 MNIST "
        "images (1,563 steps an epoch), sd 0.08 pp over 10 trials, peak at 10% removed.",
        "",
        *regime_table([datas[e.name] for e in scale.experiments]),
        "",
        *(pilot_lines(scale, committed) if committed is not None else []),
    ])


def claim1_section(scale: Scale, datas: Dict[str, ExperimentData], fig: Path) -> Section:
    """Claim 1: Ours removes harmful samples as well as Hara, random removal does not (Fig. 2, 4)."""
    sec = Section(["## Claim 1: Ours removes harmful samples as well as Hara; random removal does not (Fig. 2, 4)",
                   ""])
    body = sec.lines
    for d in (datas[e.name] for e in scale.by_claim(1)):
        e = d.exp
        body += [f"### {e.label}", ""]
        if e.needs and not d.seeds:
            body += [
                f"Not run here: needs {e.needs}. `python reproduce.py --scale {scale.name}` runs it where the "
                f"archive is present (`--data-dir`).",
                "",
            ]
            sec.verdicts.append((f"1 ({e.label})", "not run", f"data not available offline: {e.needs}"))
            continue
        v = claim_gain(d, e.primary_n, scale.delta)
        sec.verdicts.append((f"1 ({e.label})", v.label, f"n = {e.primary_n}: {v.reason}"))
        body += [
            f"Settings: {e.n_train or 'all'} training samples, {e.n_val} validation, {e.n_test or 'all'} test, "
            f"lr {e.lr}, {e.epochs} epochs, batch {e.batch_size}, clean labels, cnn6, augmentation on; removal "
            f"scored by retraining the last epoch without the removed samples (the project's default); "
            f"{len(d.seeds)} of {e.trials} trials done (seeds {d.seeds}). Primary n = {e.primary_n}.",
            "",
            f"**Verdict: {v.label}.** {v.reason}.",
            "",
        ]
        body += versus_loss_line(d, e.primary_n)
        body += accuracy_table(d) + [""]
        per_trial = trial_differences(d, e.primary_n)
        if per_trial:
            body += [f"Each trial at n = {e.primary_n}:", "", *per_trial, ""]
        if regime_text(d):
            body += [regime_text(d), ""]
        if d.seeds:
            name = f"claim1_{e.name}.png"
            plot_differences([(e.label, d)], fig / name)
            curve = f"claim1_{e.name}_accuracy.png"
            plot_result(summarize(d.scores), fig / curve, f"{e.label}, {len(d.seeds)} trials (mean +- std)")
            body += [
                f"![claim 1 {e.label}](fig/{name}) ![claim 1 accuracy {e.label}](fig/{curve})",
                "",
                "Left: paired differences to No Removal (mean, 95% interval). Right: the paper's Fig. 2/4 view "
                "(test accuracy, mean +- std over trials, No Removal dashed).",
                "",
            ]
    return sec


def claim2_section(scale: Scale, datas: Dict[str, ExperimentData], fig: Path) -> Section:
    """Claim 2: claim 1 at batch sizes 32 to 256 (Fig. 5); one verdict, reproduced only if every size is."""
    delta = scale.delta
    sec = Section(["## Claim 2: the same at batch sizes 32, 64, 128, 256 (Fig. 5)", ""])
    body = sec.lines
    c1 = [datas[e.name] for e in scale.by_claim(1)]
    c2 = [d for d in c1 if "mnist" in d.exp.name] + [datas[e.name] for e in scale.by_claim(2)]
    panels, c2v = [], []
    body += [
        "| setting | trials | verdict at the primary n | Ours - No Removal pp [95% CI] | Ours - Random "
        "| Random - No Removal |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for d in c2:
        e = d.exp
        if e.needs and not d.seeds:
            body.append(f"| {e.label} | 0 | not run: needs {e.needs} | - | - | - |")
            continue
        v = claim_gain(d, e.primary_n, delta)
        c2v.append(v)
        s = d.scores
        if s.empty:
            body.append(f"| {e.label} | 0 | {v.label} (no trial yet) | - | - | - |")
            continue
        n, base = e.primary_n, stats.baseline_of(s)
        g = stats.paired_by_seed(s, ("Ours", n), base, "test_accuracy")
        r = stats.paired_by_seed(s, ("Ours", n), ("Random", n), "test_accuracy")
        rb = stats.paired_by_seed(s, ("Random", n), base, "test_accuracy")
        f = lambda p: f"{pp(p.mean)} [{pp(p.ci_low)}, {pp(p.ci_high)}]"  # noqa: E731
        body.append(f"| {e.label}, n = {n} | {len(d.seeds)} | {v.label} | {f(g)} | {f(r)} | {f(rb)} |")
        panels.append((e.label, d))
    ran = [v for v in c2v if v.label != stats.PENDING]
    c2label = combine(ran) if ran else stats.PENDING
    c2why = "per batch size in the claim-2 table; every batch size must reproduce for 'reproduced'"
    if len(ran) < len(c2v):
        c2why = f"{len(c2v) - len(ran)} of {len(c2v)} batch sizes without a complete trial yet; " + c2why
        if c2label == stats.REPRODUCED:
            c2label = stats.INCONCLUSIVE
    sec.verdicts.append(("2 (batch 32-256, MNIST)", c2label, c2why))
    body.append("")
    for d in c2:
        if d.exp.claim == 2 and d.seeds:
            body += [f"### {d.exp.label}", ""] + versus_loss_line(d, d.exp.primary_n) + accuracy_table(d) + [""]
            per_trial = trial_differences(d, d.exp.primary_n)
            if per_trial:
                body += [f"Each trial at n = {d.exp.primary_n}:", "", *per_trial, ""]
    if panels:
        plot_differences(panels, fig / "claim2_batch_sizes.png")
        body += ["![claim 2](fig/claim2_batch_sizes.png)", ""]
    body += [
        "CIFAR-10 (Fig. 5e-h) is not run here: `cifar-10-python.tar.gz` cannot be downloaded on this machine; "
        "`--scale paper` runs it where the archive is present.",
        "",
    ]
    return sec


def claim3_section() -> Section:
    """Claim 3: Ours' cache is 1/T of Hara's (Table 1), from a cnn6 parameter file saved now."""
    sec = Section(["## Claim 3: Ours' cache is 1/T of Hara's (Table 1)", ""])
    lines3, ratios = cache_table_lines()
    sec.lines += lines3 + [""]
    if ratios:
        ok = all(abs(r - t) < 1e-9 * t for _, r, t in ratios)
        txt = "; ".join(f"{ds}: Hara / Ours = {r:.0f}, T = {t}" for ds, r, t in ratios)
        sec.verdicts.append(("3 (Table 1)", stats.REPRODUCED if ok else stats.NOT_REPRODUCED, txt))
        sec.lines += [f"{txt}. Sizes from a cnn6 parameter file saved by this project (`python cache_table.py`).", ""]
    return sec


def turnover_check_lines(tc: pd.DataFrame) -> List[str]:
    """The loss check of the final turn-over-dropout network, averaged over runs, as a table."""
    lines = [
        "Loss check of the final TD network (its Fig. 2: the flipped-mask training loss should sit at "
        "held-out level), mean over runs:",
        "",
        "| " + " | ".join(c for c in tc.columns if c != "seed") + " |",
        "| " + " | ".join("---" for c in tc.columns if c != "seed") + " |",
    ]
    num_cols = [c for c in tc.columns if c != "seed" and pd.api.types.is_numeric_dtype(tc[c])]
    key = [c for c in tc.columns if c != "seed" and c not in num_cols]
    agg = tc.groupby(key, sort=False)[num_cols].mean().reset_index() if key else tc[num_cols].mean().to_frame().T
    for r in agg.itertuples(index=False):
        cells = (f"{v:g}" if isinstance(v, float) and float(v).is_integer() else num(v) if isinstance(v, float)
                 else str(v) for v in r)
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def claim4_section(scale: Scale, datas: Dict[str, ExperimentData], fig: Path) -> Section:
    """Claim 4: turn-over dropout cleansing under a domain shift (Kobayashi et al., Table 2)."""
    sec = Section(["## Claim 4: turn-over dropout cleansing under a domain shift (Kobayashi et al., Table 2)", ""])
    body = sec.lines
    for e in scale.by_claim(4):
        d = datas[e.name]
        v = claim4_verdict(d, scale.delta)
        sec.verdicts.append((f"4 ({e.label})", v.label, v.reason))
        body += [
            f"### {e.label}",
            "",
            "Data: `reproduction/domain_shift.py` writes the three splits once as an NNC CSV dataset "
            "(digits' 8x8 images upscaled to 32x32; MNIST 28x28 to 32x32); the pipeline reads it as any own "
            f"CSV data. Remove the {e.primary_n} (1%) most harmful by turn-over dropout (masks on cnn6's top "
            "layer, one TD network), retrain without turn-over dropout (last epoch), against No Cleansing and "
            f"a random 1%; {len(d.seeds)} of {e.trials} runs done.",
            "",
            f"**Verdict: {v.label}.** {v.reason}.",
            "",
        ]
        body += accuracy_table(d) + [""]
        if d.seeds:
            plot_claim4(d, fig / f"claim4_{e.name}.png")
            body += [f"![claim 4](fig/claim4_{e.name}.png)", ""]
        if d.turnover_check is not None and len(d.turnover_check):
            body += turnover_check_lines(d.turnover_check)
    return sec


def prediction_pairs(scale: Scale, datas: Dict[str, ExperimentData]) -> pd.DataFrame:
    """Claim 5's (trial, method, n) pairs of every SGD experiment: predicted and actual loss change."""
    pairs = []
    for e in scale.experiments:
        d = datas[e.name]
        if e.kind == "sgd" and not d.scores.empty:
            p = stats.predicted_vs_actual(d.scores, d.influence, ESTIMATOR_FOR)
            pairs.append(p.assign(experiment=e.name))
    return pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame()


def with_interval(c: Dict[str, float], k: str) -> str:
    """``c[k]`` with its interval ``[c[k_low], c[k_high]]`` (3 digits); the value alone without one."""
    if not np.isfinite(c.get(f"{k}_low", math.nan)):
        return num(c[k], 3)
    return f"{num(c[k], 3)} [{num(c[f'{k}_low'], 3)}, {num(c[f'{k}_high'], 3)}]"


def correlation_text(c: Dict[str, float], sep: str = ", ") -> str:
    """Pearson, Spearman and slope with their trial-bootstrap intervals, as the report quotes them."""
    return sep.join(f"{name} {with_interval(c, k)}" for name, k in
                    (("Pearson", "pearson"), ("Spearman", "spearman"), ("slope", "slope")))


def claim5_section(scale: Scale, datas: Dict[str, ExperimentData], out: Path, fig: Path) -> Section:
    """Claim 5: does the sum of the estimates predict a group removal? Per experiment (its own
    verdict row) and pooled; intervals from a bootstrap over trials, never over pairs, since the pairs
    of one trial share its training and No Removal model (writes ``claim5_pairs.csv``)."""
    sec = Section([
        "## Claim 5: does the sum of the estimates predict a group removal?",
        "",
        "For every trial, method and n > 0: predicted = the sum of the n removed samples' influence "
        "(Hara's removals by Hara, Ours' by Ours, Random's and Loss' sets by Ours), actual = validation loss "
        "after retraining without them minus the trial's No Removal validation loss. The pairs of one trial "
        "share its training and its No Removal model, so they are not independent: the intervals [95%] come "
        "from a bootstrap that resamples whole trials (2,000 draws, percentile), and no p-value treats pairs "
        "as independent observations.",
        "",
    ])
    body = sec.lines
    pairs = prediction_pairs(scale, datas)
    if not len(pairs):
        body += ["(no complete trial yet)", ""]
        return sec
    body += [
        "| experiment | method | n | pairs | trials | Pearson r [95%] | Spearman rho [95%] | slope actual/predicted "
        "[95%] | mean predicted | mean actual |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def cells(g: pd.DataFrame, cluster: Sequence) -> Tuple[Dict[str, float], str]:
        c = stats.clustered_correlation(g.predicted, g.actual, cluster)
        cols = " | ".join(with_interval(c, k) for k in ("pearson", "spearman", "slope"))
        return c, f"{c['n']} | {c['clusters']} | {cols} | {g.predicted.mean():+.4f} | {g.actual.mean():+.4f} |"

    panels = []
    for e in scale.experiments:
        ex = pairs[pairs.experiment == e.name]
        if not len(ex):
            continue
        c, row = cells(ex, ex.seed)
        body.append(f"| **{e.name}** | all | all | {row}")
        for m, g in ex.groupby("method"):
            body.append(f"| | {m} | all | {cells(g, g.seed)[1]}")
            for n, h in g.groupby("n_drops"):
                body.append(f"| | | {n} | {cells(h, h.seed)[1]}")
        panels.append((f"{e.label or e.name}", ex, c))
        sec.verdicts.append((f"5 ({e.label or e.name})", "measured",
                             f"{correlation_text(c)} over {c['n']} (trial, method, n) pairs from {c['clusters']} "
                             f"trials"))
    trials = pairs.experiment + "/" + pairs.seed.astype(str)  # trials of different experiments are distinct
    allc = stats.clustered_correlation(pairs.predicted, pairs.actual, trials)
    plot_prediction(panels, fig / "claim5_prediction.png")
    body += [
        "",
        f"Pooled over every experiment: {allc['n']} pairs from {allc['clusters']} trials, "
        f"{correlation_text(allc)}. A slope near 1 with high correlation means the first-order sum predicts "
        "the group removal; the per-n rows show where it holds (the estimators are first order in one removal).",
        "",
        "![claim 5](fig/claim5_prediction.png)",
        "",
        "One panel per experiment; the title quotes that experiment's row above.",
        "",
    ]
    write_csv_atomic(out / "claim5_pairs.csv", pairs)
    return sec


def not_covered_lines(scale: Scale) -> List[str]:
    """What this scale does not cover (data not downloadable here, the paper's sizes, the scale's notes)."""
    lines = [
        "## Not covered here",
        "",
        "* CIFAR-10 (Fig. 2b, 4b, 5e-h) and STL-10: their archives cannot be downloaded on this machine; "
        "`python reproduce.py --scale paper --data-dir DIR` runs the CIFAR-10 rows where "
        "`cifar-10-python.tar.gz` is present.",
        "* The paper's sizes (50,000 MNIST training samples): `--scale paper` (not run here; "
        "`bench/bench_graph.py` prints the projected hours from measured task costs).",
    ]
    lines += [f"* {note}" for note in scale.notes]
    return lines + [""]


def verdict_lines(rows: Sequence[VerdictRow]) -> List[str]:
    """The first table: one verdict per claim, each with its reason."""
    lines = ["## Verdicts", "", "| claim | verdict | reason (from the numbers below) |", "| --- | --- | --- |"]
    lines += [f"| {c} | **{lab}** | {reason} |" for c, lab, reason in rows]
    return lines + [""]


def build_report(scale: Scale, committed: Path, commit: str = "", out: Optional[Path] = None) -> Path:
    """Write ``<committed>/report/index.md`` (and ``index.html``, ``claim5_pairs.csv``,
    ``report/fig/*.png``) from ``<committed>/runs``, each file atomically; returns the path of ``index.md``."""
    from .html import markdown_to_html

    out = out or committed / "report"
    fig = out / "fig"
    fig.mkdir(parents=True, exist_ok=True)
    runs = committed / "runs"
    datas = {e.name: load_experiment(e, runs / e.name) for e in scale.experiments}
    sections = [
        regime_section(scale, datas, committed),
        claim1_section(scale, datas, fig),
        claim2_section(scale, datas, fig),
        claim3_section(),
        claim4_section(scale, datas, fig),
        claim5_section(scale, datas, out, fig),
        Section(cost_lines(list(datas.values()))),
        Section(not_covered_lines(scale)),
    ]
    verdicts = [row for sec in sections for row in sec.verdicts]
    lines = header_lines(scale, datas, commit) + verdict_lines(verdicts)
    for sec in sections:
        lines += sec.lines
    text = "\n".join(lines) + "\n"
    index = out / "index.md"
    write_text_atomic(index, text)
    write_text_atomic(out / "index.html", markdown_to_html(text, f"reproduction report, scale {scale.name}"))
    return index
