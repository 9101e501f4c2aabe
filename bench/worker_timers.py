"""What Dask's worker timers cost once every core runs a task: the same three last-epoch retrainings
per core, run side by side in plain processes, in Dask workers with Dask's default settings, and in
the workers ``cleansing.graph.start_client`` starts (``graph.QUIET``); prints the ratios.

    python bench/worker_timers.py [--work /tmp/bench_timers] [--jobs 2]

One cnn6 trial on digits (4 epochs, Random's ranking) is trained first; each configuration then
retrains it without Random's 10, 40 and 100 first samples, ``--jobs`` copies at once (one per core).
Per configuration: the wall time, and per worker the CPU seconds of the thread that ran the
retrainings and of the process's other threads. Results go to bench/results_worker_timers.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["-ds", "digits", "-m", "cnn6", "-e", "4", "--methods", "Random", "-r", "0", "--gallery", "0",
        "--no-progress", "-j", "1"]
REMOVALS = (10, 40, 100)


def retrain(out: str) -> dict:
    """Retrain trial 0 of ``out`` without Random's first 10, 40 and 100 samples (its score CSVs are
    removed first); the seconds of each, and the CPU seconds of this thread and of the others."""
    import psutil
    sys.path.insert(0, str(ROOT))
    from cleansing.config import make_config
    from cleansing.paths import RunPaths
    from cleansing.pipeline import Plan, retrain_task
    from common.context import set_context
    from estimators import REGISTRY
    set_context(None, 0)
    cfg = make_config(REGISTRY, dataset="digits", model="cnn6", out=out, methods=("Random",), epochs=4,
                      remove=(0,) + REMOVALS, gallery=0, show_progress=False)
    plan, paths = Plan.of(cfg, REGISTRY), RunPaths(out)
    me = psutil.Process()
    before = {t.id: t.user_time + t.system_time for t in me.threads()}
    cpu0, t0, seconds = time.thread_time(), time.time(), []
    for n in REMOVALS:
        paths.score_csv("Random", n, 0).unlink(missing_ok=True)
        t = time.time()
        retrain_task(plan, 0, "Random", n)
        seconds.append(round(time.time() - t, 2))
    own = time.thread_time() - cpu0
    others = sum(t.user_time + t.system_time - before.get(t.id, 0.0) for t in me.threads()) - own
    return {"seconds": seconds, "wall": round(time.time() - t0, 2), "task_thread_cpu": round(own, 2),
            "other_threads_cpu": round(max(others, 0.0), 2)}


def plain(folders) -> list:
    """``retrain`` in one fresh process per folder, all at once."""
    procs = [subprocess.Popen([sys.executable, __file__, "--child", str(f)], stdout=subprocess.PIPE, text=True)
             for f in folders]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def on_dask(folders, quiet: bool) -> list:
    """``retrain`` on a local cluster of one single-threaded worker per folder: the project's
    (``quiet``: ``start_client``) or one with Dask's default timers (otherwise the same settings)."""
    sys.path.insert(0, str(ROOT))
    import dask

    from cleansing.graph import MALLOC_ENV, quiet_dask, start_client
    quiet_dask()
    if quiet:
        client, cluster = start_client(len(folders), None)
    else:
        import logging

        from distributed import Client, LocalCluster
        with dask.config.set({MALLOC_ENV: None}):
            cluster = LocalCluster(n_workers=len(folders), threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=logging.CRITICAL)
        client = Client(cluster)
    try:
        futures = [client.submit(retrain, str(f), pure=False) for f in folders]
        return client.gather(futures)
    finally:
        client.close()
        cluster.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/bench_timers")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--results", default=str(ROOT / "bench" / "results_worker_timers.json"))
    a = p.parse_args()
    if a.child:
        print(json.dumps(retrain(a.child)))
        return 0
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run([sys.executable, str(ROOT / "eval_sgd_influence.py"), "-o", str(work / "run"), *ARGS], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL)
    folders = [work / f"w{i}" for i in range(a.jobs)]
    for f in folders:
        shutil.copytree(work / "run", f)
    rows = {}
    for name, run in (("plain processes", plain), ("Dask workers, default timers", lambda f: on_dask(f, False)),
                      ("Dask workers, graph.QUIET", lambda f: on_dask(f, True))):
        t0 = time.time()
        per_worker = run(folders)
        rows[name] = {"wall_s": round(time.time() - t0, 1), "workers": per_worker}
        print(f"{name:>30}: {rows[name]['wall_s']:6.1f} s; per worker: " + "; ".join(
            f"retrainings {w['seconds']}, task thread {w['task_thread_cpu']} s CPU, other threads "
            f"{w['other_threads_cpu']} s" for w in per_worker), flush=True)
    base = rows["plain processes"]["wall_s"]
    for name in list(rows)[1:]:
        rows[name]["over_plain"] = round(rows[name]["wall_s"] / base, 3)
        print(f"{name:>30}: {rows[name]['over_plain']:.3f} of the plain processes' wall time")
    rows.update({"jobs": a.jobs, "date": time.strftime("%Y-%m-%d"),
                 "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                          text=True).stdout.strip()})
    Path(a.results).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
