"""Wall time of one trial as a task graph: 2 Dask workers against 1 (tasks in this process), and
1 against the sequential pipeline of an earlier checkout, in one run; prints the ratios.

    python bench/bench_graph.py [--baseline DIR_OF_AN_EARLIER_CHECKOUT] [--epochs 4] [--trials 1] [--repeats K]

One trial of cnn6 on digits, Hara, Ours and Random, -r 0 10 40 100 (issue 19's setting), each
configuration from an empty output folder. Then projections (marked so) of the paper-size runs
(-ds mnist -nt 10 and Fig. 5's batch sizes) for 1, 2, 10 and 100 workers, from the measured task
costs and the run's task graph. Results go to bench/results_graph.json.
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


#: paper-size runs projected (Suzuki et al.'s MNIST setting: 50,000 samples, 20 epochs, lr 0.05,
#: 10 trials, the default -r list below 50,000, Hara, Ours and Random); Fig. 5 varies the batch
PAPER = {"n_train": 50000, "n_val": 10000, "n_test": 10000, "epochs": 20, "trials": 10,
         "methods": ("Hara", "Ours", "Random")}
N_VAL_DIGITS = 300  # the measured trial's validation images (datasets.digits.N_VAL)
N_EVAL_DIGITS = 600  # the images an epoch's evaluation scores (300 validation, 300 test)
RUNS = {"-ds mnist -nt 10 (batch 32)": 32, "Fig. 5, batch 64": 64, "Fig. 5, batch 128": 128,
        "Fig. 5, batch 256": 256}
WORKERS = (1, 2, 10, 100)
#: the GPU step costs bench/bench_influence.py assumes (no GPU measured): a cnn6 training step and
#: an influence step (Hara's or Ours') of the last epoch, host work included
GPU_STEP, GPU_INFL_STEP = 0.004, 0.013


def paper_graph(batch: int):
    """The task graph of the paper-size run at ``batch`` (``cleansing.graph.build_graph``)."""
    sys.path.insert(0, str(ROOT))
    from cleansing.config import make_config
    from cleansing.pipeline import Plan, build_graph
    from estimators import REGISTRY
    cfg = make_config(REGISTRY, dataset="mnist", out="/nonexistent", methods=PAPER["methods"],
                      epochs=PAPER["epochs"], batch_size=batch, n_trials=PAPER["trials"])
    return build_graph(Plan.of(cfg, REGISTRY), cfg.seeds, n_train=PAPER["n_train"])


def task_costs(timings: pd.DataFrame, n_train: int, epochs: int, batch: int, device: str) -> dict:
    """Seconds of each kind of task of the paper-size run. CPU: the measured trial's task costs
    scaled by the samples each touches (a training epoch, an estimator and a last-epoch retraining:
    the training samples; an epoch's evaluation: the validation and test images), per-sample costs
    taken as independent of the batch. GPU: the assumed step costs times the steps (an epoch, an
    estimator or a retraining T, with T = ceil(n / batch); an evaluation one step per batch); the
    validation gradient scales with the validation images (GPU: one training step per batch)."""
    n = PAPER["n_train"]
    n_eval = PAPER["n_val"] + PAPER["n_test"]
    if device == "gpu":
        T = -(-n // batch)
        est = {m: (0.0 if m == "Random" else T * GPU_INFL_STEP) for m in PAPER["methods"]}
        return {"epoch": T * GPU_STEP, "eval": -(-n_eval // batch) * GPU_STEP, "last": T * GPU_STEP,
                "estimate": est, "retrain": T * GPU_STEP, "validation_grad": -(-PAPER["n_val"] // batch) * GPU_STEP}
    trials = timings.seed.nunique()
    grow = n / n_train / trials  # per trial
    train = timings[timings.stage == "train"]
    evals = train[train.method.str.startswith("eval_")]
    epochs_before_last = train[train.method.str.startswith("epoch_")]
    infl = timings[timings.stage == "infl"].groupby("method").seconds.sum()
    est = infl * grow
    retrain = float(timings[timings.stage.str.startswith("eval_n")].seconds.mean()) * n / n_train
    return {"epoch": float(epochs_before_last.seconds.mean()) * n / n_train,
            "eval": float(evals.seconds.mean()) * n_eval / N_EVAL_DIGITS,
            "last": float(train[train.method == "last_epoch"].seconds.sum()) * grow, "retrain": retrain,
            "estimate": {m: float(est.get(m, 0.0)) for m in PAPER["methods"]},
            "validation_grad": float(infl.get("validation_grad", 0.0)) / trials * PAPER["n_val"] / N_VAL_DIGITS}


def duration(task, costs: dict) -> float:
    """Seconds of one task of the graph under ``costs``, by the pipeline function it runs (reports,
    No_Removal's scoring of the final model and the n = 0 copies: 0)."""
    from cleansing import pipeline as p
    if task.fn is p.train_epoch_task:
        return costs["epoch"]
    if task.fn is p.train_eval_task:
        return costs["eval"]
    if task.fn is p.train_task:
        return costs["last"]
    if task.fn is p.estimate_task:
        return costs["estimate"][task.args[2]]
    if task.fn is p.validation_grad_task:
        return costs["validation_grad"]
    if task.fn is p.retrain_task and task.args[3] != 0:
        return costs["retrain"]
    return 0.0


def simulate(tasks, seconds: dict, workers: int) -> float:
    """Makespan of the graph on ``workers`` single-task workers, tasks released in the driver's
    order (``cleansing.graph.ReleaseOrder``: ready, highest priority, then graph order)."""
    import heapq

    from cleansing.graph import ReleaseOrder
    order = ReleaseOrder(tasks)
    running: list = []  # (end time, graph index, task)
    index = {t.key: i for i, t in enumerate(tasks)}
    now, free = 0.0, workers
    while order.ready or running:
        while free and order.ready:
            t = order.pop()
            heapq.heappush(running, (now + seconds[t.key], index[t.key], t))
            free -= 1
        now, _, t = heapq.heappop(running)
        free += 1
        order.done(t)
    return now


def critical_path(tasks, seconds: dict) -> float:
    """The longest chain of dependent tasks (what no number of workers shortens)."""
    finish: dict = {}
    for t in tasks:  # graph order respects the dependencies
        finish[t.key] = seconds[t.key] + max((finish[d] for d in t.deps), default=0.0)
    return max(finish.values())


def projection(timings: pd.DataFrame, n_train: int, epochs: int) -> pd.DataFrame:
    """Hours of each paper-size run (``RUNS``) on ``WORKERS`` workers, CPU and GPU: total work, the
    critical path, and the wall time of the task graph scheduled on N workers (``simulate``)."""
    rows = []
    for run, batch in RUNS.items():
        tasks = paper_graph(batch)
        for device in ("cpu", "gpu"):
            costs = task_costs(timings, n_train, epochs, batch, device)
            seconds = {t.key: duration(t, costs) for t in tasks}
            row = {"run": run, "device": device, "tasks": len(tasks), "work_h": sum(seconds.values()) / 3600,
                   "critical_path_h": critical_path(tasks, seconds) / 3600}
            row.update({f"{w}_workers_h": simulate(tasks, seconds, w) / 3600 for w in WORKERS})
            rows.append(row)
    return pd.DataFrame(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default=None, help="checkout of the sequential pipeline to compare with")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--trials", type=int, default=1, help="trials of the run (-nt)")
    p.add_argument("--repeats", type=int, default=1,
                   help="pairs of (-j 1, -j 2) runs, one after the other: the ratio of each pair and their mean")
    p.add_argument("--work", default="/tmp/bench_graph")
    p.add_argument("--results", default=str(ROOT / "bench" / "results_graph.json"))
    a = p.parse_args()
    work = Path(a.work)
    nt = ("-nt", str(a.trials))
    pairs = []
    for r in range(a.repeats):  # the first pair's folders are kept for the byte comparison and projection
        suffix = "" if r == 0 else f"_{r}"
        one = timed(ROOT, work / f"one{suffix}", a.epochs, "-j", "1", *nt)
        two = timed(ROOT, work / f"two{suffix}", a.epochs, "-j", "2", *nt)
        pairs.append({"one_worker_s": round(one, 1), "two_workers_s": round(two, 1), "ratio": round(two / one, 3)})
    rows = {"one_worker_s": sum(p["one_worker_s"] for p in pairs) / len(pairs),
            "two_workers_s": sum(p["two_workers_s"] for p in pairs) / len(pairs)}
    rows["two_over_one"] = sum(p["ratio"] for p in pairs) / len(pairs)  # mean of the pairs' ratios
    if a.repeats > 1:
        rows["pairs"] = pairs
    if a.baseline:
        rows["sequential_baseline_s"] = timed(Path(a.baseline), work / "base", a.epochs, "-j", "1", *nt)
        rows["one_over_sequential"] = rows["one_worker_s"] / rows["sequential_baseline_s"]
    ref = csvs(work / "one")
    rows["csvs_compared"] = len(ref)
    rows["same_bytes_two_workers"] = all(csvs(work / f"two{'' if r == 0 else f'_{r}'}") == ref
                                         for r in range(a.repeats))
    if a.baseline:
        base = csvs(work / "base")
        rows["same_bytes_baseline"] = base == ref
        rows["baseline_differs"] = sorted(k for k in set(base) | set(ref) if base.get(k) != ref.get(k))
    rows.update({"epochs": a.epochs, "trials": a.trials, "date": time.strftime("%Y-%m-%d"),
                 "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                          text=True).stdout.strip(), "machine": platform.processor() or "cpu"})
    n_train = len(pd.read_csv(work / "one" / "influence" / "Hara" / "influence_hara_0.csv"))
    proj = projection(pd.read_csv(work / "one" / "summary" / "timings.csv"), n_train, a.epochs)
    rows["projection_hours"] = proj.round(2).to_dict("records")
    for k, v in rows.items():
        if k not in ("projection_hours", "pairs"):
            print(f"{k:>28}: {v:.3f}" if isinstance(v, float) else f"{k:>28}: {v}")
    for p_ in pairs if a.repeats > 1 else []:
        print(f"{'pair':>28}: -j 1 {p_['one_worker_s']} s, -j 2 {p_['two_workers_s']} s, ratio {p_['ratio']}")
    print("PROJECTIONS, not measurements: hours of the paper-size runs (50,000 MNIST samples, 20 epochs, 10 "
          "trials, Hara/Ours/Random, default -r list) as the task graph on N workers. cpu: this trial's task "
          f"costs scaled by samples; gpu: assumed {GPU_STEP * 1e3:.0f} ms per training step and "
          f"{GPU_INFL_STEP * 1e3:.0f} ms per influence step, one GPU per worker")
    print(proj.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    Path(a.results).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
