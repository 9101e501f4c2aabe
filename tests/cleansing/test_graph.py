"""The run as a task graph on Dask: the same bytes whatever the placement, faults survived or
reported in one line."""
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from tests.helpers import ROOT, assert_one_line_error, run_cli

ARGS = ["-m", "logreg", "-e", "2", "--n-train", "200", "--n-val", "60", "--n-test", "60", "--gallery", "0",
        "--methods", "Hara", "Ours", "Random", "-r", "0", "10", "40", "--validate", "6", "--validate-repeats", "2"]
BIN = Path(sys.executable).parent


def results(out: Path) -> dict:
    """sha256 of every influence, score and summary CSV but the wall-clock timings."""
    files = [p for d in ("influence", "score", "summary") for p in sorted((out / d).rglob("*.csv"))]
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
            if p.name != "timings.csv"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_jobs(out: Path, *extra: str, script: str = "eval_sgd_influence.py") -> subprocess.CompletedProcess:
    """The driver with ``extra`` flags (e.g. its own -j: run_cli's -j 1 comes first, a later -j wins)."""
    return run_cli("-o", str(out), *ARGS, *extra, script=script)


class TcpCluster:
    """A Dask scheduler and two workers (one thread each) started as separate processes on localhost."""

    def __init__(self, tmp: Path):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DASK_LOGGING__DISTRIBUTED": "error"}
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self.log = open(tmp / "cluster.log", "w")
        self.scheduler = subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                           "--dashboard-address", ":0"], env=env, stdout=self.log, stderr=self.log)
        self.workers = [subprocess.Popen([str(BIN / "dask"), "worker", self.address, "--nthreads", "1",
                                          "--nworkers", "1", "--host", "127.0.0.1", "--dashboard-address", ":0"],
                                         env=env, cwd=ROOT, stdout=self.log, stderr=self.log) for _ in range(2)]
        from distributed import Client
        with Client(self.address, timeout="60s") as c:
            c.wait_for_workers(2, timeout=120)

    def worker_processes(self):
        """The worker processes (children of the nannies), which run the tasks."""
        return [c for w in self.workers for c in psutil.Process(w.pid).children(recursive=True)]

    def close(self):
        for p in self.workers + [self.scheduler]:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.workers + [self.scheduler]:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.log.close()


def start_on(cluster: TcpCluster, out: Path) -> subprocess.Popen:
    """The driver on ``cluster``, returned once its training is under way (the trace is written)."""
    cmd = [sys.executable, str(ROOT / "eval_sgd_influence.py"), "-o", str(out), *ARGS, "--scheduler",
           cluster.address, "--no-progress"]
    run = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (out / "weights" / "seed_00" / "trace.npz").exists():
        assert run.poll() is None and time.time() - t0 < 300, run.stderr.read() if run.poll() is not None else ""
        time.sleep(0.01)
    return run


def test_controls_wait_only_for_the_epochs_before_the_last_and_no_removal_for_the_training(tmp_path):
    from cleansing.config import make_config
    from cleansing.pipeline import Plan, build_graph
    from estimators import REGISTRY
    cfg = make_config(REGISTRY, dataset="digits", out=str(tmp_path), methods=("Hara", "Random"), remove=(0, 10))
    tasks = {t.key: t for t in build_graph(Plan.of(cfg, REGISTRY), [3])}
    deps = {k: t.deps for k, t in tasks.items()}
    head = [f"train-epoch-3-{e}" for e in range(1, 20)]  # 20 epochs: 19 before the last
    evals = [f"train-eval-3-{e}" for e in range(1, 20)]
    assert deps[head[0]] == [] and all(deps[head[i]] == [head[i - 1]] for i in range(1, 19))
    assert all(deps[evals[i]] == [head[i]] for i in range(19))
    assert deps["train-3"] == [head[-1]] + evals
    assert deps["validation-grad-3"] == ["train-3"]
    assert deps["estimate-3-Hara"] == ["train-3", "validation-grad-3"] and deps["estimate-3-Random"] == []
    assert deps["baseline-3"] == ["train-3"]
    assert deps["retrain-3-Random-10"] == [head[-1], "estimate-3-Random"]
    assert deps["retrain-3-Hara-10"] == [head[-1], "estimate-3-Hara"]
    assert deps["retrain-3-Hara-0"] == ["baseline-3"]
    assert deps["trial-reports-3"] == ["train-3", "estimate-3-Hara", "estimate-3-Random"]
    assert {k for k, t in tasks.items() if t.priority > 0} == {*head, *evals, "train-3", "validation-grad-3",
                                                               "estimate-3-Hara", "estimate-3-Random"}
    # released in this order when the previous epoch is done: the next epoch before the evaluation
    order = list(tasks)
    assert order.index(head[1]) < order.index(evals[0]) < order.index(head[2])
    order = list(tasks)
    assert all(order.index(d) < order.index(k) for k in order for d in deps[k])
    random_only = make_config(REGISTRY, dataset="digits", out=str(tmp_path), methods=("Random",), remove=(0, 10))
    assert not any(t.key.startswith("validation-grad") for t in build_graph(Plan.of(random_only, REGISTRY), [3]))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "o"
    res = run_jobs(out)
    assert res.returncode == 0, res.stderr
    return results(out)


def test_same_bytes_with_one_worker_two_workers_and_a_tcp_cluster(reference, tmp_path):
    assert len(reference) == 1 + 3 + 3 * 3 + 5  # No_Removal, influence, scores, 5 summaries
    res = run_jobs(tmp_path / "two", "-j", "2")
    assert res.returncode == 0, res.stderr
    assert results(tmp_path / "two") == reference
    cluster = TcpCluster(tmp_path)
    try:
        res = run_jobs(tmp_path / "tcp", "--scheduler", cluster.address)
        assert res.returncode == 0, res.stderr
    finally:
        cluster.close()
    assert results(tmp_path / "tcp") == reference
    timings = pd.read_csv(tmp_path / "tcp" / "summary" / "timings.csv")
    # No_Removal's scores come with the training (its last log row): no "eval" stage of their own
    assert {"train", "infl", "validate", "eval_n10", "eval_n40"} <= set(timings.stage)
    assert "eval" not in set(timings.stage)


def test_worker_killed_mid_task_run_finishes_with_the_same_bytes(reference, tmp_path):
    cluster = TcpCluster(tmp_path)
    out = tmp_path / "o"
    try:
        run = start_on(cluster, out)
        killed = cluster.worker_processes()
        for p in killed:
            p.send_signal(signal.SIGKILL)
        assert run.wait(timeout=600) == 0, run.stderr.read()
    finally:
        cluster.close()
    assert killed and results(out) == reference
    assert not list(out.rglob("*.partial*"))


def test_bad_input_inside_a_task_is_one_line(tmp_path):
    # a learning rate that makes the training loss overflow: the training task (on a Dask worker)
    # raises the one-line error, which the run reports as it is
    res = run_cli("-o", str(tmp_path / "o"), "-m", "logreg", "-e", "1", "--n-train", "100", "-r", "0", "10",
                  "-lr", "1e38", "--methods", "Random", "-j", "2")
    assert res.returncode == 2
    assert_one_line_error(res, "the training diverged: its loss became", "lower the learning rate")
    # an order the registry knows to be impossible is refused before any task
    res = run_cli("-o", str(tmp_path / "p"), "-m", "logreg", "-e", "1", "--n-train", "100", "-r", "0",
                  "--methods", "Influence_functions_original_sign", "Random", "-j", "2",
                  script="eval_influence_functions.py")
    assert res.returncode == 2
    assert_one_line_error(res, "Influence_functions_original_sign reuses the Influence_functions scores")
    assert not (tmp_path / "p").exists()


def test_unreachable_scheduler_is_one_line(tmp_path):
    res = run_jobs(tmp_path / "o", "--scheduler", f"tcp://127.0.0.1:{free_port()}")
    assert res.returncode == 2
    assert_one_line_error(res, "cannot reach the Dask scheduler", "leave --scheduler out")


def test_lost_scheduler_is_one_line_and_the_rerun_finishes(reference, tmp_path):
    cluster = TcpCluster(tmp_path)
    out = tmp_path / "o"
    try:
        run = start_on(cluster, out)
        cluster.scheduler.kill()
        assert run.wait(timeout=300) == 2
        lines = [ln for ln in run.stderr.read().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: lost the Dask scheduler (")
        assert lines[0].endswith("rerun the same command to continue where it stopped")
    finally:
        cluster.close()
    res = run_jobs(out)  # the same command, here on one worker, finishes the run
    assert res.returncode == 0, res.stderr
    assert results(out) == reference


def test_local_workers_run_without_the_dashboard_timers():
    """The local cluster's workers start with the stack profiler off and slow ticks (graph.QUIET):
    with every core busy those timers cost 7 to 9% of the wall time."""
    from cleansing.graph import QUIET, start_client
    client, cluster = start_client(2, None)
    try:
        def seen(dask_worker):
            import dask
            return ("profile" in dask_worker.periodic_callbacks, dask_worker._tick_interval,
                    {k: dask.config.get(k) for k in QUIET})
        states = client.run(seen)
    finally:
        client.close()
        cluster.close()
    assert len(states) == 2
    for profiled, tick, config in states.values():
        assert not profiled
        assert tick == 1.0
        assert config == QUIET


def test_task_costs_are_epochs_of_work(tmp_path):
    """Issue 38 (19): the progress bar weighs each task by its expected cost in training epochs. Digits
    (seed 3): 1,197 training, 300 validation, 300 test images; an evaluated image costs 1/3 of a trained
    sample, so an evaluation of the validation set is 300 / 1197 / 3 = 0.0835 epochs."""
    from cleansing.config import make_config
    from cleansing.pipeline import EVAL_COST, Plan, build_graph
    from estimators import REGISTRY
    cfg = make_config(REGISTRY, dataset="digits", out=str(tmp_path), methods=("Hara", "Random"), remove=(0, 10),
                      epochs=5)
    cost = {t.key: t.cost for t in build_graph(Plan.of(cfg, REGISTRY), [3])}
    val = EVAL_COST * 300 / 1197
    assert EVAL_COST == pytest.approx(1 / 3) and val == pytest.approx(0.08354, rel=1e-3)
    assert [cost[f"train-epoch-3-{e}"] for e in range(1, 5)] == [1.0] * 4
    assert cost["train-eval-3-1"] == pytest.approx(val)
    assert cost["train-3"] == pytest.approx(1 + 2 * val)  # the last epoch, then validation and test
    assert cost["retrain-3-Hara-10"] == pytest.approx(1 + 2 * val) and cost["retrain-3-Hara-0"] == 0.01
    assert cost["estimate-3-Hara"] == 2.8 and cost["estimate-3-Random"] == 0.01
    assert sum(cost.values()) == pytest.approx(4 + 4 * val + (1 + 2 * val) + 3 * val + 2.8 + 0.01 + 2 * (1 + 2 * val)
                                               + 2 * val + 2 * 0.01 + 0.05 + 0.05, rel=1e-9)
