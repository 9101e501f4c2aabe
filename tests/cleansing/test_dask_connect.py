"""Connecting to Dask as a user does (issue 38): a scheduler or worker that cannot import the project,
an address that is no Dask scheduler's, and -j beyond the cores, each one line on stderr."""
import os
import signal
import socket
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import ROOT, assert_one_line_error, run_cli

SMALL = ["-ds", "digits", "-m", "logreg", "-e", "1", "--n-train", "60", "--n-val", "30", "--n-test", "30",
         "--gallery", "0", "-r", "0", "--methods", "Random"]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Processes:
    """``dask scheduler`` and ``dask worker`` processes on localhost, each with or without the
    repository on its PYTHONPATH (started outside it, as on another host)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.log = open(tmp / "cluster.log", "w")
        self.procs = []

    def env(self, project: bool) -> dict:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["DASK_LOGGING__DISTRIBUTED"] = "error"
        if project:
            env["PYTHONPATH"] = str(ROOT)
        return env

    def scheduler(self, project: bool) -> None:
        port = self.address.rsplit(":", 1)[1]
        self.procs.append(subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", port, "--dashboard-address", ":0"],
            env=self.env(project), cwd=self.tmp, stdout=self.log, stderr=self.log))

    def worker(self, project: bool, n: int) -> None:
        """One more worker (one thread), then wait until the scheduler has ``n``."""
        self.procs.append(subprocess.Popen(
            [str(BIN / "dask"), "worker", self.address, "--nthreads", "1", "--nworkers", "1", "--host", "127.0.0.1",
             "--dashboard-address", ":0"], env=self.env(project), cwd=self.tmp, stdout=self.log, stderr=self.log))
        from distributed import Client
        with Client(self.address, timeout="60s") as c:
            c.wait_for_workers(n, timeout=120)

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.log.close()


@pytest.mark.slow
@pytest.mark.parametrize("scheduler_has_project", [False, True])
def test_scheduler_and_workers_without_the_project_are_one_line(tmp_path, scheduler_has_project):
    """The README's multi-host recipe, on localhost: a scheduler started without the repository on its
    PYTHONPATH cannot unpickle the task graph, which the driver finds when it connects; with it the run
    finishes. A worker without it, joining that cluster, is named the same way."""
    cluster = Processes(tmp_path)
    try:
        cluster.scheduler(project=scheduler_has_project)
        cluster.worker(project=True, n=1)
        res = run_cli("-o", str(tmp_path / "o"), *SMALL, "--scheduler", cluster.address)
        if not scheduler_has_project:
            assert res.returncode == 2, res.stderr
            assert_one_line_error(res, f"the Dask scheduler at {cluster.address} cannot import this project "
                                       f"(No module named 'cleansing')", f"PYTHONPATH={ROOT} dask scheduler")
            assert not (tmp_path / "o" / "weights").exists()
            return
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "o" / "summary").is_dir()
        cluster.worker(project=False, n=2)
        res = run_cli("-o", str(tmp_path / "p"), *SMALL, "--scheduler", cluster.address)
        assert res.returncode == 2, res.stderr
        assert_one_line_error(res, "the Dask worker at tcp://127.0.0.1:", "cannot import this project "
                              "(No module named 'cleansing')", f"PYTHONPATH={ROOT} dask worker {cluster.address}")
    finally:
        cluster.close()


class FakeClient:
    """What ``_check_cluster`` asks of a client: the probe's results on the scheduler and workers."""

    def __init__(self, scheduler, workers):
        self.scheduler, self.workers = scheduler, workers

    def run_on_scheduler(self, fn, *args):
        if isinstance(self.scheduler, BaseException):
            raise self.scheduler
        return self.scheduler

    def run(self, fn, *args, on_error="raise"):
        assert on_error == "return"
        return self.workers


def test_other_package_versions_on_a_worker_are_one_line():
    from cleansing.graph import _PROBE, _check_cluster
    from common.errors import UserError
    here = eval(_PROBE)
    _check_cluster(FakeClient(here, {"tcp://w:1": dict(here)}), "tcp://s:1")  # the same: no error
    patch = dict(here, python=here["python"].rsplit(".", 1)[0] + ".999")
    _check_cluster(FakeClient(patch, {"tcp://w:1": patch}), "tcp://s:1")  # Python's patch level may differ
    old = dict(here, numpy="1.0.0")
    with pytest.raises(UserError, match=rf"^the Dask worker at tcp://w:2 has numpy 1\.0\.0, this process "
                                        rf"{here['numpy']}; install the same versions"):
        _check_cluster(FakeClient(here, {"tcp://w:1": here, "tcp://w:2": old}), "tcp://s:1")
    with pytest.raises(UserError, match=r"^the Dask scheduler at tcp://s:1 cannot import this project "
                                        r"\(No module named 'nnabla'\); start it with PYTHONPATH="):
        _check_cluster(FakeClient(ModuleNotFoundError("No module named 'nnabla'"), {}), "tcp://s:1")


def test_malformed_scheduler_address_is_one_line(tmp_path):
    res = run_cli("-o", str(tmp_path / "o"), *SMALL, "--scheduler", "tcp://127.0.0.1")
    assert res.returncode == 2, res.stderr
    assert_one_line_error(res, "--scheduler tcp://127.0.0.1 is not the address of a Dask scheduler",
                          "missing port number")


def test_http_server_as_scheduler_is_one_line(tmp_path):
    """A server that answers, but not as Dask does (its reply was read as a 5 EiB frame: MemoryError)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    address = f"tcp://127.0.0.1:{server.server_address[1]}"
    try:
        res = run_cli("-o", str(tmp_path / "o"), *SMALL, "--scheduler", address)
    finally:
        server.shutdown()
        server.server_close()
    assert res.returncode == 2, res.stderr
    assert_one_line_error(res, f"--scheduler {address} is not the address of a Dask scheduler",
                          "does not answer as a Dask scheduler does")
    assert "MemoryError" not in res.stderr


@pytest.mark.slow
def test_silent_server_as_scheduler_is_one_line(tmp_path):
    """A server that accepts the connection and never answers: Dask would wait for its handshake
    forever; the driver gives up after 20 s."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        res = run_cli("-o", str(tmp_path / "o"), *SMALL, "--scheduler", address)
    assert res.returncode == 2, res.stderr
    assert_one_line_error(res, f"cannot reach the Dask scheduler at {address} (no answer within 20 s)",
                          "leave --scheduler out")


def test_jobs_beyond_the_cores_are_capped_with_a_warning(tmp_path):
    jobs = max(64, cores() + 1)
    res = run_cli("-o", str(tmp_path / "o"), *SMALL, "-j", str(jobs))
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    n = cores()
    assert f"warning: -j {jobs} capped at {n} workers: this machine has {n} cores" in lines \
        or f"warning: -j {jobs} capped at {n} workers: this process may run on {n} of" in res.stderr, res.stderr
    assert (tmp_path / "o" / "summary").is_dir()


def test_jobs_help_says_it_is_capped():
    res = subprocess.run([sys.executable, str(ROOT / "eval_sgd_influence.py"), "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    assert "capped at that number" in " ".join(res.stdout.split())
