"""Trials in parallel: time `-j 1` against `-j 2` for two trials of a small cnn6 configuration.

    .venv/bin/python bench/bench_jobs.py [--n-train 320]

Each run starts in a fresh output folder; the ratio t(-j 2) / t(-j 1) is printed (target <= 0.6)
and written to bench/results_jobs.json. Both runs go through `cleansing.pipeline.run`, the
same code as `eval_sgd_influence.py -nt 2 -j N`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=320)
    args = ap.parse_args()
    import logging
    logging.getLogger("nnabla").setLevel(logging.WARNING)
    from cleansing.config import make_config
    from cleansing.pipeline import run
    from cleansing.train import TrainConfig
    from estimators import REGISTRY
    tmp = Path(tempfile.mkdtemp(prefix="bench_jobs_"))
    times = {}
    try:
        for jobs in (1, 2):
            cfg = make_config(dataset="digits", out=str(tmp / f"j{jobs}"), n_trials=2, jobs=jobs,
                              n_train=args.n_train, methods=("Ours", "Random"), remove=(0, 10),
                              train=TrainConfig(model="cnn6", epochs=1, batch_size=32, lr=0.05),
                              show_progress=False)
            t0 = time.perf_counter()
            run(cfg, REGISTRY)
            times[jobs] = time.perf_counter() - t0
            print(f"-j {jobs}: {times[jobs]:.1f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = times[2] / times[1]
    res = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "load": os.getloadavg()[0],
           "config": f"digits cnn6, n_train {args.n_train}, 1 epoch, 2 trials, Ours+Random, remove 0 10",
           "seconds_j1": round(times[1], 2), "seconds_j2": round(times[2], 2), "ratio": round(ratio, 3),
           "target_met": ratio <= 0.6}
    (ROOT / "bench" / "results_jobs.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
