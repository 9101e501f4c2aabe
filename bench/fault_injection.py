"""Seeded fault injection: SIGKILL, then SIGINT (Ctrl-C), a small run at many moments over every
stage, rerun after each, and compare every influence, score and summary CSV byte for byte with an
uninterrupted run.

A kill lands inside an atomic write (temporary file complete, not yet renamed: the worst moment),
at the J-th write of a path containing a stage's marker (``DATA_CLEANSING_KILL_ON`` / ``_NTH``,
``common/fileio.py``); J is drawn with the seed from the writes an uninterrupted run makes there.
Each rerun resumes from what the previous processes left; a last rerun without a kill finishes. With
SIGINT the run must end as a Ctrl-C does (exit 130, "rerun the same command to continue") and keep
what a kill keeps (issue 38).

    python bench/fault_injection.py [--seed 0] [--signals KILL INT] [--work /tmp/fault_injection]

(logistic regression on digits, Hara, Ours, Influence_functions and Random, validation, label
noise and cleansing: about 2 minutes here.)
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DRIVER = "eval_influence_functions.py"
ARGS = ["-ds", "digits", "-m", "logreg", "-e", "2", "--n-train", "300", "--n-val", "100", "--n-test", "100",
        "--methods", "Influence_functions", "Hara", "Ours", "Random", "-r", "0", "10", "40",
        "--label-noise", "0.1", "--validate", "6", "--cleanse", "10", "--gallery", "8", "--solver", "cg",
        "--cg-iters", "5", "--no-progress", "-j", "1"]
#: (stage, marker of the paths written in it), in pipeline order
TARGETS: List[Tuple[str, str]] = [
    ("training", "weights/seed_00/initial.h5"),
    ("training", "weights/seed_00/trace.npz"),
    ("training", "weights/seed_00/hara/step_"),
    ("training", "weights/seed_00/final.h5"),
    ("training", "score/No_Removal/"),  # the final model's scores, written by the training task
    ("estimator Influence_functions", "influence/Influence_functions/"),
    ("estimator Hara", "influence/Hara/"),
    ("estimator Ours", "influence/Ours/"),
    ("estimator Random", "influence/Random/"),
    ("reports", "/fig/harmful_"),
    ("reports", "/cleansed/"),
    ("validation", "logs/validation_progress_seed_0_repeat_0"),  # inside the left-out retrainings
    ("validation", "logs/validation_actual_seed_0_repeat_0"),
    ("validation", "logs/validation_pairs_seed_0"),
    ("retraining", "score/Hara/score_delete_worst_10"),
    ("retraining", "score/Ours/score_delete_worst_40"),
    ("reports", "summary/summary.csv"),
    ("reports", "summary/detection.csv"),
]


def run(out: Path, env_extra: Dict[str, str], args: Sequence[str] = ARGS) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, str(ROOT / DRIVER), "-o", str(out), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, preexec_fn=ctrl_c_default)


def ctrl_c_default() -> None:
    """In the child: SIGINT with its default action, so Python turns it into KeyboardInterrupt even
    when this process was started in the background (where SIGINT is ignored and stays ignored)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


#: summary tables with a column derived from wall-clock time, different by nature: file -> that column
WALL_TIME_COLUMNS = {"solver.csv": "seconds", "detection_at.csv": "cost_epochs"}


def _content(path: Path) -> bytes:
    if path.name in WALL_TIME_COLUMNS:
        return pd.read_csv(path).drop(columns=WALL_TIME_COLUMNS[path.name]).to_csv(index=False).encode()
    return path.read_bytes()


def results(out: Path) -> Dict[str, str]:
    """sha256 of every influence, score and summary CSV (timings.csv and ``WALL_TIME_COLUMNS``: wall time)."""
    files = [p for d in ("influence", "score", "summary") for p in (out / d).rglob("*.csv")]
    return {str(p.relative_to(out)): hashlib.sha256(_content(p)).hexdigest() for p in sorted(files)
            if p.name != "timings.csv"}


def fault_injection(work: Path, seed: int = 0, targets: Sequence[Tuple[str, str]] = TARGETS,
                    args: Sequence[str] = ARGS, signal: str = "KILL") -> dict:
    """Run the check in ``work`` with ``signal`` (KILL or INT); returns the interruptions made, stages
    covered and the differing files."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ref, log = work / "reference", work / "writes.log"
    res = run(ref, {"DATA_CLEANSING_WRITE_LOG": str(log)}, args)
    assert res.returncode == 0, res.stderr
    written = list(dict.fromkeys(line.split(" ", 1)[1] for line in log.read_text().splitlines()))
    expected = results(ref)
    rng = np.random.default_rng(seed)
    out, kills = work / "killed", []
    for stage, marker in targets:
        # the writes still to come: a resumed run skips what earlier processes completed
        count = sum(marker in w and not (out / Path(w).relative_to(ref)).exists() for w in written)
        if count == 0:
            raise AssertionError(f"no write of {marker!r} left to kill")
        nth = int(rng.integers(1, count + 1))
        res = run(out, {"DATA_CLEANSING_KILL_ON": marker, "DATA_CLEANSING_KILL_NTH": str(nth),
                        "DATA_CLEANSING_KILL_SIGNAL": signal}, args)
        if signal == "INT" and (res.returncode != 130 or "rerun the same command to continue" not in res.stderr):
            raise AssertionError(f"the run did not stop as a Ctrl-C does at {marker!r} #{nth} "
                                 f"(exit {res.returncode}): {res.stderr}")
        if signal == "KILL" and res.returncode != -9:
            raise AssertionError(f"the run was not killed at {marker!r} #{nth} (exit {res.returncode}): {res.stderr}")
        kills.append({"stage": stage, "marker": marker, "nth": nth, "of": count})
    res = run(out, {}, args)
    assert res.returncode == 0, res.stderr
    got = results(out)
    differing = sorted(k for k in set(expected) | set(got) if expected.get(k) != got.get(k))
    return {"kills": kills, "stages": sorted({k["stage"] for k in kills}), "files": len(expected),
            "differing": differing, "partials_left": [str(p) for p in out.rglob("*.partial*")]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="/tmp/fault_injection")
    p.add_argument("--signals", nargs="+", choices=["KILL", "INT"], default=["KILL", "INT"])
    a = p.parse_args()
    bad = 0
    for sig in a.signals:
        report = fault_injection(Path(a.work) / sig.lower(), a.seed, signal=sig)
        for k in report["kills"]:
            print(f"SIG{sig} in {k['stage']:<30} at write {k['nth']} of {k['of']} of {k['marker']}")
        print(f"SIG{sig}: {len(report['kills'])} interruptions over {len(report['stages'])} stages "
              f"({', '.join(report['stages'])}); {report['files']} CSVs compared, {len(report['differing'])} differ "
              f"{report['differing']}; temporary files left: {len(report['partials_left'])}")
        bad += bool(report["differing"] or report["partials_left"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
