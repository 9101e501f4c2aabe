"""A run killed with SIGKILL and rerun gives the same bytes as an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["-ds", "digits", "-m", "cnn6", "-e", "1", "--n-train", "200", "--n-val", "100", "--n-test", "100",
        "-r", "0", "1", "10", "40", "--no-progress", "-j", "1"]


def start(out):
    return subprocess.Popen([sys.executable, str(ROOT / "eval_sgd_influence.py"), "-o", str(out), *ARGS],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when(proc, path, timeout=600):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f"run ended before {path} appeared: {proc.stderr.read()}"
        assert time.time() - t0 < timeout
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def results(out):
    files = sorted(p for p in out.rglob("*.csv") if p.parts[-2] in ("Hara", "Ours", "Random", "No_Removal"))
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def test_sigkill_during_influence_and_retraining_then_rerun_matches(tmp_path):
    ref = tmp_path / "ref"
    p = start(ref)
    assert p.wait() == 0, p.stderr.read()
    expected = results(ref)
    assert len(expected) == 3 + 3 * 4 + 1  # influence CSVs, score CSVs, the shared baseline

    out = tmp_path / "killed"
    # 1) killed while Ours is being computed (Hara's CSV is done, Ours' is not)
    p = start(out)
    kill_when(p, out / "influence" / "Hara" / "influence_hara_0.csv")
    assert not (out / "influence" / "Ours" / "influence_ours_0.csv").exists()
    # 2) killed during retraining
    p = start(out)
    kill_when(p, out / "score" / "Hara" / "score_delete_worst_1_seed_0.csv")
    assert not (out / "summary" / "summary.csv").exists()
    # 3) rerun to the end
    p = start(out)
    assert p.wait() == 0, p.stderr.read()
    assert results(out) == expected
    assert not list(out.rglob("*.partial*"))


def test_stale_partial_files_of_dead_processes_are_removed(tmp_path):
    # a SIGKILL can land inside an atomic write: its temporary file stays until the next run
    # starts; files of processes still running are left alone
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from common.fileio import partial_path, remove_stale_partials
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "logs").mkdir()
    stale = tmp_path / "logs" / f"timings_seed_0.partial-{dead.pid}.csv"
    stale.write_text("half")
    mine = partial_path(tmp_path / "influence.csv")
    mine.write_text("being written")
    done = tmp_path / "logs" / "timings_seed_0.csv"
    done.write_text("stage\n")
    where = (["logs"], [".csv"])
    assert remove_stale_partials(tmp_path, *where) == 1
    assert not stale.exists() and mine.exists() and done.read_text() == "stage\n"
    assert remove_stale_partials(tmp_path, *where) == 0


@pytest.mark.e2e  # bench/fault_injection.py runs the driver in subprocesses
@pytest.mark.parametrize("sig", ["KILL", "INT"])
def test_seeded_fault_injection_short(tmp_path, sig):
    """The short version of bench/fault_injection.py: one kill (or Ctrl-C) in each stage, same bytes
    at the end."""
    sys.path.insert(0, str(ROOT / "bench"))
    from fault_injection import TARGETS, fault_injection
    stages = {}
    for stage, marker in TARGETS:  # the first target of each stage, in pipeline order
        stages.setdefault(stage.split()[0], (stage, marker))
    report = fault_injection(tmp_path / "work", seed=3, targets=list(stages.values()), signal=sig)
    assert [k["stage"].split()[0] for k in report["kills"]] == ["training", "estimator", "reports", "validation",
                                                                "retraining"]
    assert report["files"] >= 20 and report["differing"] == [] and report["partials_left"] == []
