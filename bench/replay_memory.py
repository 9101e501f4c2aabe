"""Peak resident memory of Hara_all_epochs' replay against keeping every step's parameters (issue 37).

Trains one run whose training keeps the epoch checkpoints (``--methods Hara_all_epochs``), then, each
in a fresh process so that each peak is its own, traces every epoch of trial 0:

* ``replay S``: ``sgd_influence.replay.replayed_sgd_influence`` with ``--replay-segment`` S;
* ``all steps stored``: the training replayed once from the initial parameters with every step's
  parameters kept in memory, then the same recursion over them (what Hara's method costs without
  replay; its disk cache would be the same size).

Each child reports its peak resident set (``ru_maxrss``) and the scores' checksum (all must agree):

    .venv/bin/python bench/replay_memory.py --work /tmp/replay_mem -- -ds digits -e 6
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(work: Path, driver_args: list, mode: str) -> dict:
    """In this process: the trial's scores by ``mode`` ('all' or a segment size) and the peak RSS."""
    sys.path.insert(0, str(ROOT))
    import hashlib

    import numpy as np

    import eval_sgd_influence as driver
    from cleansing.train import run_steps
    from cleansing.trial import trial_context
    from datasets.batches import training_batch
    from estimators import REGISTRY
    from sgd_influence.replay import replayed_sgd_influence

    cfg = driver.DRIVER.config(driver_args + ["-o", str(work), "--methods", "Hara_all_epochs"], REGISTRY)
    trial = trial_context(cfg, 0)
    learner, trace, E = trial.learner, trial.trace, cfg.train.epochs
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "all":
        final = learner.state()
        learner.set_state(trial.epoch_params(0, "bench"))
        states = []
        for t in range(trace.n_steps):  # the training's own step, every theta_t kept
            states.append(learner.state())
            run_steps(learner, trial.data, trace, [t], cfg.train.augment, report=False)
        infl = np.zeros(len(trial.data.train))
        u = {k: np.asarray(v, np.float64) for k, v in trial.u.items()}
        u_stats = {k: np.asarray(v, np.float64) for k, v in trial.u_stats.items()}
        for t in reversed(range(trace.n_steps)):
            learner.set_state(states[t])
            idx, seeds = trace.batch(t)
            x, y = training_batch(trial.data, idx, seeds, cfg.train.augment)
            delta, u, u_stats = learner.step_backward(x, y, float(trace.lr[t]), u, u_stats)
            infl[idx] += delta
        learner.set_state(final)
        held = len(states)
    else:
        infl, _ = replayed_sgd_influence(learner, trial.data, trace, trial.u, cfg.train.augment,
                                         lambda e: trial.epoch_params(e, "bench"), range(E), int(mode),
                                         u_stats=trial.u_stats)
        held = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    set_mb = sum(v.nbytes for v in learner.state().values()) / 2 ** 20
    return {"mode": mode, "peak_rss_mb": peak / 1024, "before_mb": base / 1024, "steps": int(trace.n_steps),
            "steps_per_epoch": int(len(trace.epoch_steps(0))), "parameter_set_mb": set_mb, "sets_held": held,
            "checksum": hashlib.sha256(np.round(infl, 12).tobytes()).hexdigest()[:12]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--segments", nargs="+", default=["1", "4", "epoch"])
    p.add_argument("--child", help=argparse.SUPPRESS)
    a, rest = p.parse_known_args()
    driver_args = [x for x in rest if x != "--"]
    if a.child:
        print(json.dumps(child(a.work, driver_args, a.child)))
        return
    subprocess.run([sys.executable, str(ROOT / "eval_sgd_influence.py"), *driver_args, "-o", str(a.work), "-r", "0",
                    "--methods", "Hara_all_epochs", "-j", "1", "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    rows = []
    modes = [("100000" if s == "epoch" else s) for s in a.segments] + ["all"]  # 100000: a whole epoch a segment
    for mode in modes:
        out = subprocess.run([sys.executable, __file__, "--work", str(a.work), "--child", mode, "--", *driver_args],
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(rows[-1], flush=True)
    sums = {r["checksum"] for r in rows}
    print(f"scores agree across modes: {len(sums) == 1}")


if __name__ == "__main__":
    main()
