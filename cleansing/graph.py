"""A task graph and its executors: in this process, or on Dask workers (a local cluster or the
user's). Generic: a ``Task`` is a function, its arguments, the keys of the tasks it waits for, a
priority and an expected cost; the pipeline's own graph is built in ``cleansing.pipeline``
(``build_graph``), and nothing here imports it.

A graph whose tasks depend only on their inputs (files written by the tasks they wait for) and
seeds gives the same bytes with 1 worker, N workers or workers on other hosts sharing the output
folder. Workers are processes with one thread each (nnabla's CPU kernels use one core and hold
global state). Tasks return ``(value, timings)``; the process that runs the graph hands the timings
to its ``record`` callback, so no two processes write one file.
"""
from __future__ import annotations

import collections
import functools
import heapq
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from common.errors import UserError

Timing = Tuple[int, str, str, float]  # (seed, stage, method, seconds)


@dataclass
class Task:
    """One node: ``fn(*args)`` after the tasks named in ``deps``; ``kind`` groups the progress bar;
    among the tasks ready at once, Dask starts those of higher ``priority`` first."""

    key: str
    kind: str
    fn: Callable
    args: tuple
    deps: List[str] = field(default_factory=list)
    priority: int = 0
    on_error: Optional[Callable[[], None]] = None  # run by the driver when the task fails
    cost: float = 0.05  # expected work in training epochs of this trial (weighs the progress bar)



class _Progress:
    """One bar over the run, weighed by each task's expected cost in training epochs (``Task.cost``),
    so its time estimate is honest; the postfix counts the tasks of each kind and shows the steps of
    the running tasks (``common.progress``, from Dask workers too)."""

    def __init__(self, tasks: Sequence[Task], show: bool):
        self.totals = collections.Counter(t.kind for t in tasks)
        self.done: collections.Counter = collections.Counter()
        self.running: Dict[str, str] = {}
        self.finished: set = set()
        self.bar = tqdm(total=round(sum(t.cost for t in tasks), 2), desc="work (epochs)", disable=not show,
                        unit="epoch", bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} "
                                                 "[{elapsed}<{remaining}]{postfix}")

    def _postfix(self) -> None:
        counts = " ".join(f"{k} {self.done[k]}/{self.totals[k]}" for k in self.totals)
        steps = "; ".join(f"{k} {v}" for k, v in sorted(self.running.items()))
        self.bar.set_postfix_str(counts + (f" | {steps}" if steps else ""), refresh=True)

    def steps(self, key: str, text: str) -> None:
        if key in self.finished:  # a late event of a task already done
            return
        self.running[key] = text
        self._postfix()

    def advance(self, task: Task) -> None:
        self.done[task.kind] += 1
        self.finished.add(task.key)
        self.running.pop(task.key, None)
        self._postfix()
        self.bar.update(task.cost)

    def close(self) -> None:
        self.bar.close()


Record = Callable[[List[Timing]], None]


def run_sequential(tasks: Sequence[Task], record: Record, show_progress: bool = True,
                   on_start: Optional[Callable[[], None]] = None):
    """Every task in this process, in graph order (the default with one worker: no server); each
    task's timings go to ``record``; ``on_start()`` just before the first task; returns the last
    task's value. A task's error runs its ``on_error``; an interrupt (Ctrl-C) does not: it keeps what
    a kill keeps."""
    from common.progress import set_sink
    progress = _Progress(tasks, show_progress)
    result = None
    if on_start is not None:
        on_start()
    try:
        for t in tasks:
            set_sink(functools.partial(progress.steps, t.key))
            try:
                result, timings = t.fn(*t.args)
            except Exception:
                _failed(t)
                raise
            record(timings)
            progress.advance(t)
    finally:
        set_sink(None)
        progress.close()
    return result


PROGRESS_TOPIC = "cleansing-steps"


def _remote(fn: Callable, context: Optional[str], device_id: int, args: tuple, key: str = ""):
    """What a Dask worker runs: the nnabla context of the run, then the task, whose steps go to the
    driver as events of ``PROGRESS_TOPIC``."""
    from common.context import set_context
    from common.progress import set_sink
    _quiet_dask()
    _untrim_malloc()
    set_context(context, device_id)
    try:
        from distributed import get_worker
        worker = get_worker()
        set_sink(lambda text: worker.log_event(PROGRESS_TOPIC, {"task": key, "text": text}))
    except (ImportError, ValueError):  # not in a worker
        set_sink(None)
    try:
        return fn(*args)
    finally:
        set_sink(None)


#: Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also fixes glibc's mmap
#: threshold at 128 KiB: nnabla's arrays are then mapped and unmapped on every step, and training
#: ran 15% slower in a worker than in the driver (33.4 s against 29.1 s, cnn6 on digits, 2 epochs).
_MALLOC_ENV = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


@functools.lru_cache(maxsize=None)  # once per worker process
def _untrim_malloc() -> None:
    """In a worker whose nanny set ``MALLOC_TRIM_THRESHOLD_`` (one the user started): raise glibc's
    trim and mmap thresholds back to sizes at which nnabla's arrays stay on the heap."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to undo
        pass


#: Dask's timers that wake each worker's event loop (stack profiler every 10 ms, loop tick 20 ms,
#: system monitor 500 ms, the nanny's memory check 100 ms) cost 7 to 9% of a run's wall time once
#: every core is busy with a task: two retrainings at once in two workers took 49 to 50 s, 46 s in
#: two plain processes, 46 s in workers with these settings (bench/NOTES.md). They serve Dask's
#: dashboard and diagnostics, not results; a user's own workers take them as environment variables
#: (README, "Scale-out with Dask").
QUIET = {"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s",
         "distributed.admin.system-monitor.interval": "5s", "distributed.worker.memory.monitor-interval": "2s"}


def _quiet_dask() -> None:
    """Dask's own INFO lines and task-failure reports stay out of the user's stderr: a failing task
    reaches the user as its one-line error (``DASK_LOGGING__DISTRIBUTED`` reaches spawned workers)."""
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
    names = ["distributed", "tornado", "asyncio"] + [n for n in logging.root.manager.loggerDict
                                                     if n.startswith(("distributed.", "tornado."))]
    for name in names:  # distributed's config gives some child loggers levels of their own
        logging.getLogger(name).setLevel(logging.CRITICAL)


def start_client(jobs: int, scheduler: Optional[str]):
    """A Dask client: of the scheduler at ``scheduler`` (workers started by the user), else of a
    local cluster of ``jobs`` worker processes with one thread each."""
    _quiet_dask()
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - a requirement
        raise UserError("Dask is not installed; pip install 'dask[distributed]' (make does)") from None
    _quiet_dask()  # again: importing distributed configures its loggers
    if scheduler:
        try:
            _handshake(scheduler, 20)
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise UserError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); start it with "
                            f"'dask scheduler' or leave --scheduler out for a local cluster") from None
        except Exception as exc:  # a malformed address, or a server that is not Dask's (an HTTP server:
            # its reply read as a frame length, "MemoryError: Unable to allocate 5.02 EiB")
            why = _first_line(exc) if isinstance(exc, (ValueError, TypeError)) and _first_line(exc) else \
                "it does not answer as a Dask scheduler does"
            raise UserError(f"--scheduler {scheduler} is not the address of a Dask scheduler ({why}); give "
                            f"tcp://HOST:PORT of a running 'dask scheduler' or leave --scheduler out for a "
                            f"local cluster") from None
        try:
            _check_cluster(client, scheduler)
        except BaseException:
            client.close()
            raise
        return client, None
    import dask
    jobs = _cap_jobs(jobs)
    with dask.config.set({_MALLOC_ENV: None, **QUIET}):  # glibc's malloc defaults: see _untrim_malloc
        cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.CRITICAL)
    return Client(cluster), cluster


def _handshake(address: str, seconds: float) -> None:
    """Connect to ``address`` and exchange Dask's handshake, within about ``seconds``; raise what
    connecting raised, or TimeoutError. Dask's own connect waits for the other side's handshake
    without a limit: a server that accepts the connection and says nothing would hang the run. In a
    thread of its own, so a caller with a running event loop (a notebook) can call it."""
    import asyncio
    import threading

    from distributed.comm import connect
    from distributed.security import Security
    args = Security().get_connection_args("client")

    async def exchange() -> None:
        comm = await asyncio.wait_for(connect(address, timeout=seconds, **args), seconds + 2)
        await comm.close()
    failed: List[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(exchange())
        except asyncio.TimeoutError:
            failed.append(TimeoutError(f"no answer within {seconds:g} s"))
        except BaseException as exc:
            failed.append(exc)
    thread = threading.Thread(target=run, name="dask-handshake", daemon=True)
    thread.start()
    thread.join(seconds + 10)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if failed:
        raise failed[0]


def _cap_jobs(jobs: int) -> int:
    """``jobs`` local workers, at most one per core this process may run on (more only share the
    cores and take a trial's memory each); a warning on stderr when ``jobs`` is capped."""
    machine = os.cpu_count() or 1
    try:
        cores = len(os.sched_getaffinity(0)) or machine
    except AttributeError:  # not Linux
        cores = machine
    if jobs <= cores:
        return jobs
    where = f"this machine has {cores} cores" if cores == machine else \
        f"this process may run on {cores} of the machine's {machine} cores"
    print(f"warning: -j {jobs} capped at {cores} workers: {where}", file=sys.stderr, flush=True)
    return cores


#: What a scheduler or worker of the user's cluster evaluates to show it can run the tasks: it imports
#: the module the tasks' functions live in (as unpickling the task graph does on the scheduler, and
#: running a task on a worker), then returns the versions of Python and of the packages whose pickles
#: cross between processes. A builtin (``eval``) with a string: the scheduler unpickles it without
#: this project, whatever its Python (a function of this module would be pickled by reference).
_PROBE = ("(__import__('importlib').import_module('cleansing.pipeline'), "
          "dict(python='%d.%d.%d' % __import__('sys').version_info[:3], "
          "**{m: __import__('importlib').import_module(m).__version__ "
          "for m in ('numpy', 'nnabla', 'dask', 'distributed')}))[1]")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check_cluster(client, scheduler: str) -> None:
    """A one-line UserError unless the scheduler at ``scheduler`` and every worker connected now can
    import this project and run the Python and packages of this process (the same versions but
    Python's patch level). Workers that join later are not checked."""
    here = eval(_PROBE)  # a constant expression: this process's versions
    where = f"the Dask scheduler at {scheduler}"
    try:
        found = {where: client.run_on_scheduler(eval, _PROBE)}
    except ImportError as exc:
        found = {where: exc}
    except Exception as exc:  # a scheduler that cannot run the check at all
        raise UserError(f"{where} cannot run this project's check ({type(exc).__name__}: "
                        f"{_first_line(exc)}); start it with the Python and packages of this process "
                        f"(make) and PYTHONPATH={_ROOT}") from None
    workers = client.run(eval, _PROBE, on_error="return")
    found.update((f"the Dask worker at {addr}", res) for addr, res in sorted(workers.items()))
    for who, res in found.items():
        if isinstance(res, BaseException):
            why = _first_line(res) if isinstance(res, ImportError) else f"{type(res).__name__}: {_first_line(res)}"
            command = "dask scheduler" if who == where else f"dask worker {scheduler}"
            raise UserError(f"{who} cannot import this project ({why}); start it with PYTHONPATH={_ROOT} "
                            f"{command} ... (README, \"Scale-out with Dask\")")
        for name, version in here.items():
            theirs = res.get(name)
            if theirs != version and (name != "python" or str(theirs).split(".")[:2] != version.split(".")[:2]):
                raise UserError(f"{who} has {name} {theirs}, this process {version}; install the same "
                                f"versions on every host (make installs the locked ones)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


class ReleaseOrder:
    """Which tasks to hand to Dask next: those whose dependencies are done, highest ``priority``
    first, then graph order (the order ``run_sequential`` follows)."""

    def __init__(self, tasks: Sequence[Task]):
        self.waiting = {t.key: len(t.deps) for t in tasks}
        self.children: Dict[str, List[Task]] = {t.key: [] for t in tasks}
        for t in tasks:
            for d in t.deps:
                self.children[d].append(t)
        self.rank = {t.key: (-t.priority, i) for i, t in enumerate(tasks)}
        self.ready = [self.rank[t.key] + (t,) for t in tasks if not t.deps]
        heapq.heapify(self.ready)

    def pop(self) -> Task:
        return heapq.heappop(self.ready)[-1]

    def done(self, task: Task) -> None:
        for c in self.children[task.key]:
            self.waiting[c.key] -= 1
            if self.waiting[c.key] == 0:
                heapq.heappush(self.ready, self.rank[c.key] + (c,))


def run_dask(tasks: Sequence[Task], record: Record, jobs: int, scheduler: Optional[str] = None,
             context: Optional[str] = None, device_id: int = 0, show_progress: bool = True,
             on_start: Optional[Callable[[], None]] = None):
    """Run the graph on Dask, recording timings as tasks finish. A task is submitted once the tasks
    it depends on are done, and no more are in flight than the cluster has threads, so Dask places
    each on a free worker (a dependency passed as a future would tie it to the worker that ran the
    dependency, which may be busy) and the priorities hold. A task's UserError stops the run with
    that one line; a lost scheduler with a line that says how to resume."""
    from asyncio import CancelledError
    from concurrent.futures import CancelledError as FuturesCancelledError

    from distributed import as_completed
    from distributed.comm.core import CommClosedError
    try:
        from distributed.client import FutureCancelledError
    except ImportError:  # distributed < 2024.6 (Python 3.8) cancels with concurrent.futures' error
        FutureCancelledError = FuturesCancelledError
    lost = (CancelledError, FuturesCancelledError, FutureCancelledError, CommClosedError, OSError, TimeoutError)
    client, cluster = start_client(jobs, scheduler)
    if show_progress and client.dashboard_link:
        print(f"Dask dashboard: {client.dashboard_link}")
    order = ReleaseOrder(tasks)
    running: Dict[str, Task] = {}
    futures = as_completed()
    progress = _Progress(tasks, show_progress)
    if show_progress:
        client.subscribe_topic(PROGRESS_TOPIC, lambda event: progress.steps(event[1]["task"], event[1]["text"]))

    def release() -> None:
        try:
            slots = max(1, sum(client.nthreads().values())) - len(running)
        except lost as exc:
            raise _lost(exc) from None
        while order.ready and (slots > 0 or not running):
            t = order.pop()
            fut = client.submit(_remote, t.fn, context, device_id, t.args, t.key,
                                key=f"{t.key}-{os.getpid()}-{time.time_ns()}", pure=False)
            running[fut.key] = t
            futures.add(fut)
            slots -= 1
    result, finished = None, 0
    try:
        try:
            if on_start is not None:  # connected: the first tasks go out now
                on_start()
            release()
            for fut in futures:
                t = running.pop(fut.key)
                try:
                    value, timings = fut.result()
                except lost as exc:
                    if isinstance(exc, OSError) and not isinstance(exc, CommClosedError) and \
                            "scheduler" not in str(exc).lower():
                        _failed(t)
                        raise  # a task's own OSError (a full disk, say): the driver reports it
                    raise _lost(exc) from None
                except Exception:  # the task's own error (a UserError is one line)
                    _failed(t)
                    raise
                record(timings)
                progress.advance(t)
                finished += 1
                if finished == len(tasks):
                    result = value  # the last task's value, as run_sequential returns
                order.done(t)
                release()
        finally:
            progress.close()
        if finished != len(tasks):  # pragma: no cover - a graph with a cycle; build_graph makes none
            raise RuntimeError(f"{len(tasks) - finished} tasks never became ready")
        return result
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _lost(exc: BaseException) -> UserError:
    return UserError(f"lost the Dask scheduler ({type(exc).__name__}); rerun the same command to continue "
                     f"where it stopped")


def _failed(task: Task) -> None:
    if task.on_error is not None:
        task.on_error()


# ---------------------------------------------------------------------------- public names
#: The Dask setting of the malloc environment of spawned workers (``start_client`` clears it).
MALLOC_ENV = _MALLOC_ENV
#: Keep Dask's own INFO lines and task-failure reports out of stderr (as ``start_client`` does).
quiet_dask = _quiet_dask
