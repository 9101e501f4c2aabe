"""The pilot of issue 32: which training size has settled training (pure functions, plus the writer
of ``docs/reproduction/pilot/pilot.md``).

Criterion (``reproduction.scales.PILOT_*``, fixed before any claim is run): a size is *settled* when,
over its seeds, the median range (max - min) of the validation accuracy over the last 3 epochs is at
most 0.5 pp and No_Removal's test accuracy (the final model's) has a sample sd of at most 0.3 pp. The
study takes the smallest settled size; when none is settled, the one closest to the criterion (the
smallest ``max(median range / 0.5 pp, sd / 0.3 pp)``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from common.fileio import write_csv_atomic, write_text_atomic

from .scales import PILOT_LAST, PILOT_MAX_RANGE, PILOT_MAX_SD, Scale

TABLE_COLUMNS = ["n_train", "steps_per_epoch", "seeds", "median_val_range_pp", "mean_val_range_pp",
                 "test_accuracy_mean_pct", "test_accuracy_sd_pp", "settled"]


def val_range(log: pd.DataFrame, last: int = PILOT_LAST) -> float:
    """max - min of the validation accuracy over the last ``last`` epochs of one train log (a fraction)."""
    tail = log.sort_values("epoch").val_accuracy.tail(last)
    return float(tail.max() - tail.min())


def size_row(n_train: int, batch_size: int, logs: Dict[int, pd.DataFrame], test_accuracy: Dict[int, float],
             trials: int = 3) -> dict:
    """One row of the pilot's table from the trials (seed -> train log, seed -> final test accuracy);
    ``settled`` only once all ``trials`` seeds are there."""
    seeds = sorted(set(logs) & set(test_accuracy))
    ranges = [val_range(logs[s]) for s in seeds]
    acc = [test_accuracy[s] for s in seeds]
    sd = float(np.std(acc, ddof=1)) if len(acc) > 1 else math.nan
    med = float(np.median(ranges)) if ranges else math.nan
    settled = bool(len(seeds) >= max(trials, 2) and med <= PILOT_MAX_RANGE + 1e-12 and sd <= PILOT_MAX_SD + 1e-12)
    return {"n_train": n_train, "steps_per_epoch": math.ceil(n_train / batch_size), "seeds": len(seeds),
            "median_val_range_pp": 100 * med, "mean_val_range_pp": 100 * float(np.mean(ranges)) if ranges else math.nan,
            "test_accuracy_mean_pct": 100 * float(np.mean(acc)) if acc else math.nan,
            "test_accuracy_sd_pp": 100 * sd, "settled": settled}


def choose_size(table: pd.DataFrame, complete: int = 3) -> Optional[int]:
    """The smallest settled size; None while a smaller size (or, to call none settled, any size) lacks
    some of its ``complete`` seeds; when every size is complete and none settled, the closest to the
    criterion."""
    table = table.sort_values("n_train")
    for r in table.itertuples():
        if r.seeds < complete:
            return None
        if r.settled:
            return int(r.n_train)
    distance = np.maximum(table.median_val_range_pp / (100 * PILOT_MAX_RANGE),
                          table.test_accuracy_sd_pp / (100 * PILOT_MAX_SD))
    return int(table.n_train.iloc[int(np.argmin(distance.to_numpy()))])


def load_pilot(scale: Scale, committed: Path) -> pd.DataFrame:
    """The pilot's table from the committed runs (complete trials only: those with a marker)."""
    rows = []
    for exp in scale.experiments:
        folder = committed / "runs" / exp.name
        logs, acc = {}, {}
        for marker in sorted((folder / "trials").glob("seed_*.json")):
            seed = int(marker.stem.split("_")[1])
            log = folder / "train_log" / f"train_log_seed_{seed}.csv"
            score = folder / "score" / "No_Removal" / f"score_delete_worst_0_seed_{seed}.csv"
            if log.is_file() and score.is_file():
                logs[seed] = pd.read_csv(log)
                acc[seed] = float(pd.read_csv(score).test_accuracy.iloc[0])
        rows.append(size_row(exp.n_train, exp.batch_size, logs, acc, exp.trials))
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def compute_hours(scale: Scale, committed: Path) -> float:
    """Core-hours of the finished trials (``compute_s`` of their markers: the sum of stage timings,
    interrupted calls included)."""
    seconds = 0.0
    for exp in scale.experiments:
        for marker in (committed / "runs" / exp.name / "trials").glob("seed_*.json"):
            info = json.loads(marker.read_text())
            seconds += float(info.get("compute_s", info.get("wall_s", 0.0)))
    return seconds / 3600


def criterion_line() -> str:
    """The pilot's criterion, as the pilot's table and the settled scale's report state it."""
    return (f"**Criterion (fixed before any claim runs):** a size is settled when, over its seeds, the median range "
            f"of the validation accuracy over the last {PILOT_LAST} epochs is at most {100 * PILOT_MAX_RANGE:.1f} pp "
            f"and No_Removal's test accuracy has a sample sd of at most {100 * PILOT_MAX_SD:.1f} pp. The study takes "
            "the smallest settled size; if none is settled, the one closest to the criterion "
            "(smallest max(range / 0.5 pp, sd / 0.3 pp)).")


def size_table_lines(table: pd.DataFrame, trials: int) -> List[str]:
    """The pilot's table (``load_pilot``) in markdown; 'settled' is '-' while a size lacks seeds."""
    lines = [
        "| training size | steps / epoch | seeds | median last-3 val range (pp) | mean (pp) | "
        "No_Removal test accuracy (%) | sd (pp) | settled |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in table.itertuples():
        def f(x, d=2):
            return "-" if not np.isfinite(x) else f"{x:.{d}f}"
        lines.append(f"| {r.n_train:,} | {r.steps_per_epoch} | {r.seeds} | {f(r.median_val_range_pp)} | "
                     f"{f(r.mean_val_range_pp)} | {f(r.test_accuracy_mean_pct)} | {f(r.test_accuracy_sd_pp)} | "
                     f"{'yes' if r.settled else ('no' if r.seeds >= trials else '-')} |")
    return lines


def chosen_line(table: pd.DataFrame, chosen: Optional[int], trials: int) -> str:
    """The pilot's choice (``choose_size``) in one line."""
    if chosen is None:
        short = table.sort_values("n_train")
        short = short[short.seeds < trials].iloc[0]
        return (f"**Chosen size:** not yet: {int(short.n_train):,} has {int(short.seeds)} of its {trials} seeds, and "
                "no smaller size is settled.")
    settled = bool(table[table.n_train == chosen].settled.iloc[0])
    return f"**Chosen size:** {chosen:,}" + ("" if settled else " (no size is settled; the closest)") + "."


def write_pilot(scale: Scale, committed: Path, commit: str = "") -> Path:
    """``<committed>/pilot.md`` and ``pilot.csv``: the criterion, the table and the chosen size."""
    table = load_pilot(scale, committed)
    chosen = choose_size(table, scale.experiments[0].trials)
    write_csv_atomic(committed / "pilot.csv", table)
    lines = [
        "# Pilot: the training size where training has settled (issue 32)",
        "",
        f"Built by `python reproduce.py --scale pilot --report-only`{f' at {commit}' if commit else ''}. "
        "cnn6, lr 0.05, 20 epochs, batch 32, the SPEC's augmentation, clean labels, 10,000 validation "
        "images, the full 10,000-image test set; training only (No_Removal is the final model).",
        "",
        criterion_line(),
        "",
        *size_table_lines(table, scale.experiments[0].trials),
        "",
        chosen_line(table, chosen, scale.experiments[0].trials),
    ]
    lines += ["", "Each trial:", "", "| training size | seed | last-3 val range (pp) | final val accuracy (%) | "
              "No_Removal test accuracy (%) | code |", "| ---: | ---: | ---: | ---: | ---: | --- |"]
    for exp in scale.experiments:
        folder = committed / "runs" / exp.name
        for marker in sorted((folder / "trials").glob("seed_*.json")):
            seed = int(marker.stem.split("_")[1])
            log = folder / "train_log" / f"train_log_seed_{seed}.csv"
            score = folder / "score" / "No_Removal" / f"score_delete_worst_0_seed_{seed}.csv"
            if log.is_file() and score.is_file():
                tl = pd.read_csv(log)
                acc = float(pd.read_csv(score).test_accuracy.iloc[0])
                lines.append(f"| {exp.n_train:,} | {seed} | {100 * val_range(tl):.2f} | "
                             f"{100 * float(tl.sort_values('epoch').val_accuracy.iloc[-1]):.2f} | {100 * acc:.2f} | "
                             f"{json.loads(marker.read_text()).get('commit', '-')} |")
    missing = int(sum(max(0, e.trials - s) for e, s in zip(scale.experiments, table.seeds)))
    hours = compute_hours(scale, committed)
    lines.append(f"\nProgress: {int(table.seeds.sum())} trials done, {missing} remaining, {hours:.1f} core-hours spent "
                 f"(the trials' stage timings).")
    out = committed / "pilot.md"
    write_text_atomic(out, "\n".join(lines) + "\n")
    return out
