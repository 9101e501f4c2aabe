"""Wall time of one trial as a task graph: 2 Dask workers against 1 (tasks in this process), and
1 against the sequential pipeline of an earlier checkout, in one run; prints the ratios.

    python bench/bench_graph.py [--baseline DIR_OF_AN_EARLIER_CHECKOUT] [--epochs 4]

One trial of cnn6 on digits, Hara, Ours and Random, -r 0 10 40 100 (issue 19's setting), each
configuration from an empty output folder. Results go to bench/results_graph.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["-ds", "digits", "-m", "cnn6", "--methods", "Hara", "Ours", "Random", "-r", "0", "10", "40", "100",
        "--gallery", "0", "--no-progress"]


def timed(repo: Path, out: Path, epochs: int, *extra: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    subprocess.run([sys.executable, str(repo / "eval_sgd_influence.py"), "-o", str(out), "-e", str(epochs), *ARGS,
                    *extra], cwd=repo, check=True, stdout=subprocess.DEVNULL)
    return time.time() - t0


def csvs(out: Path) -> dict:
    """Every influence, score and summary CSV but the wall-clock timings, as bytes."""
    files = [f for d in ("influence", "score", "summary") for f in sorted((out / d).rglob("*.csv"))]
    return {str(f.relative_to(out)): f.read_bytes() for f in files if f.name != "timings.csv"}


#: paper-size runs projected (Suzuki et al.'s MNIST setting, the default -r list below 50,000)
PAPER = {"n_train": 50000, "epochs": 20, "trials": 10, "removals": 11, "methods": ("Hara", "Ours", "Random")}


def projection(timings: pd.DataFrame, n_train: int, epochs: int, workers=(1, 2, 16, 64)) -> pd.DataFrame:
    """Hours of ``eval_sgd_influence.py -ds mnist -nt 10`` on N workers, from one measured trial: each
    task's seconds scaled by the samples it touches (training by samples x epochs, an estimator and a
    last-epoch retraining by samples), the run's time max(total work / N, one trial's critical path:
    training, the slowest estimator, the slowest retraining)."""
    grow = PAPER["n_train"] / n_train
    train = float(timings[timings.stage == "train"].seconds.sum()) * grow * PAPER["epochs"] / epochs
    infl = timings[timings.stage == "infl"].groupby("method").seconds.sum() * grow
    retrain = timings[timings.stage.str.startswith("eval")].seconds.mean() * grow
    per_trial = train + float(infl.sum()) + retrain * (1 + PAPER["removals"] * len(PAPER["methods"]))
    total = per_trial * PAPER["trials"]
    critical = train + float(infl.max()) + retrain
    rows = [{"workers": n, "hours": max(total / n, critical) / 3600} for n in workers]
    return pd.DataFrame(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default=None, help="checkout of the sequential pipeline to compare with")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--work", default="/tmp/bench_graph")
    a = p.parse_args()
    work = Path(a.work)
    rows = {"one_worker_s": timed(ROOT, work / "one", a.epochs, "-j", "1"),
            "two_workers_s": timed(ROOT, work / "two", a.epochs, "-j", "2")}
    rows["two_over_one"] = rows["two_workers_s"] / rows["one_worker_s"]
    if a.baseline:
        rows["sequential_baseline_s"] = timed(Path(a.baseline), work / "base", a.epochs, "-j", "1")
        rows["one_over_sequential"] = rows["one_worker_s"] / rows["sequential_baseline_s"]
    ref = csvs(work / "one")
    rows["csvs_compared"] = len(ref)
    rows["same_bytes_two_workers"] = csvs(work / "two") == ref
    if a.baseline:
        rows["same_bytes_baseline"] = csvs(work / "base") == ref
    rows.update({"epochs": a.epochs, "date": time.strftime("%Y-%m-%d"),
                 "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                          text=True).stdout.strip(), "machine": platform.processor() or "cpu"})
    n_train = len(pd.read_csv(work / "one" / "influence" / "Hara" / "influence_hara_0.csv"))
    proj = projection(pd.read_csv(work / "one" / "summary" / "timings.csv"), n_train, a.epochs)
    rows["projection_mnist_nt10_hours"] = {int(r.workers): round(float(r.hours), 1) for r in proj.itertuples()}
    for k, v in rows.items():
        print(f"{k:>28}: {v:.3f}" if isinstance(v, float) else f"{k:>28}: {v}")
    print("projected hours of eval_sgd_influence.py -ds mnist -nt 10 (this CPU's per-task costs, scaled):")
    print(proj.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    (ROOT / "bench" / "results_graph.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
