"""The run as a task graph, executed in this process or on Dask workers.

Tasks (each one's output is the file it has always written, so a task whose output is complete
does nothing and an interrupted run resumes unchanged):

* ``train-head``       per trial: the epochs before the last (what every retraining starts from);
* ``train``            per trial: the last epoch (and Hara's cache when a method needs it);
* ``validation-grad``  per trial, when an estimator reads it: ``u``, the validation loss gradient
                       at the final parameters (computed once, not once per estimator and worker);
* ``artefact``         per trial and artefact an estimator declares (a turn-over-dropout network);
* ``estimate``         per trial and estimator: the influence CSV, after the artefacts it reads
                       and the estimators whose scores it reuses (``Estimator.after``);
* ``trial-reports``    per trial: galleries, cleansed datasets, error explanations;
* ``validate``         per trial and repeat of the leave-one-out truth, then ``validate-pairs``;
* ``baseline``         per trial: the scores without removal ("No_Removal"): the final model's, after
                       ``train`` (retraining with nothing removed replays the last epoch exactly);
* ``retrain``          per trial, method and n of ``-r``, after ``train-head`` and the method's estimate
                       (so the Random control's retrainings run beside the last training epoch);
* ``run-reports``      once: summaries, figures and tables of the whole run.

Every task's result depends only on its inputs and seeds (files written by the tasks it depends
on), never on where or in which order it runs: 1 worker, N workers and workers on other hosts
sharing the output folder write the same bytes. Workers are processes with one thread each
(nnabla's CPU kernels use one core and hold global state). Tasks return their timings; the
process that runs the graph records them, so no two processes write one file.
"""
from __future__ import annotations

import collections
import functools
import heapq
import logging
import os
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


def build_graph(plan, seeds: Sequence[int], n_train: Optional[int] = None) -> List[Task]:
    """The tasks of a run, in an order that respects their dependencies (also the sequential order);
    ``n_train`` (default: read from the first trial's data) bounds the -r list."""
    from . import pipeline as p
    cfg = plan.cfg
    tasks: List[Task] = []
    removals = p.planned_removals(cfg, n_train)
    for seed in seeds:
        head, train = f"train-head-{seed}", f"train-{seed}"
        discard = functools.partial(p.discard_training, plan, seed)
        tasks.append(Task(head, "train", p.train_head_task, (plan, seed), priority=1, on_error=discard))
        tasks.append(Task(train, "train", p.train_task, (plan, seed), [head], priority=1, on_error=discard))
        grad = f"validation-grad-{seed}"
        if any(e.needs_validation_grad for e in plan.estimators):
            tasks.append(Task(grad, "estimate", p.validation_grad_task, (plan, seed), [train], priority=1))
        for a in plan.artefacts():
            tasks.append(Task(f"artefact-{seed}-{a.name}", "train", p.artefact_task, (plan, seed, a.name), [train],
                              priority=1))
        estimates = []
        for est in plan.estimators:
            key = f"estimate-{seed}-{est.name}"
            deps = [train] if est.needs_final_model else []
            deps += [grad] if est.needs_validation_grad else []
            deps += [f"artefact-{seed}-{a.name}" for a in plan.artefacts(est)]
            deps += [f"estimate-{seed}-{name}" for name in est.after]
            tasks.append(Task(key, "estimate", p.estimate_task, (plan, seed, est.name), deps, priority=1))
            estimates.append(key)
        tasks.append(Task(f"trial-reports-{seed}", "reports", p.trial_reports_task, (plan, seed), [train] + estimates))
        if cfg.removal.validate > 0:
            repeats = [f"validate-{seed}-{r}" for r in range(max(1, cfg.removal.validate_repeats))]
            for r, key in enumerate(repeats):
                tasks.append(Task(key, "validate", p.validation_repeat_task, (plan, seed, r), [train] + estimates))
            tasks.append(Task(f"validate-pairs-{seed}", "validate", p.validation_pairs_task, (plan, seed), repeats))
        baseline = f"baseline-{seed}"
        tasks.append(Task(baseline, "retrain", p.baseline_task, (plan, seed), [train]))
        for n in removals:
            for est in plan.estimators:
                deps = [baseline] if n == 0 else [head, f"estimate-{seed}-{est.name}"]
                tasks.append(Task(f"retrain-{seed}-{est.name}-{n}", "retrain", p.retrain_task,
                                  (plan, seed, est.name, n), deps))
    tasks.append(Task("run-reports", "reports", p.run_reports_task, (plan, list(seeds)),
                      [t.key for t in tasks]))
    return tasks


def _record(plan, timings: List[Timing]) -> None:
    from .paths import RunPaths
    from .pipeline import Timings
    for seed, stage, method, seconds in timings:
        Timings(RunPaths(plan.cfg.out), seed).add(stage, method, seconds)


def _progress(tasks: Sequence[Task], show: bool):
    totals = collections.Counter(t.kind for t in tasks)
    bar = tqdm(total=len(tasks), desc="tasks", disable=not show, unit="task")
    done: collections.Counter = collections.Counter()

    def advance(task: Task) -> None:
        done[task.kind] += 1
        bar.set_postfix_str(" ".join(f"{k} {done[k]}/{totals[k]}" for k in totals))
        bar.update(1)
    return bar, advance


def run_sequential(plan, tasks: Sequence[Task]):
    """Every task in this process, in graph order (the default with one worker: no server)."""
    bar, advance = _progress(tasks, plan.cfg.runtime.show_progress)
    result = None
    try:
        for t in tasks:
            try:
                result, timings = t.fn(*t.args)
            except BaseException:
                _failed(t)
                raise
            _record(plan, timings)
            advance(t)
    finally:
        bar.close()
    return result


def _remote(fn: Callable, context: Optional[str], device_id: int, args: tuple):
    """What a Dask worker runs: the nnabla context of the run, then the task."""
    from common.context import set_context
    _quiet_dask()
    _untrim_malloc()
    set_context(context, device_id)
    return fn(*args)


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
            return Client(scheduler, timeout="20s"), None
        except OSError as exc:
            raise UserError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); start it with "
                            f"'dask scheduler' or leave --scheduler out for a local cluster") from None
    import dask
    with dask.config.set({_MALLOC_ENV: None, **QUIET}):  # glibc's malloc defaults: see _untrim_malloc
        cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.CRITICAL)
    return Client(cluster), cluster


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


def run_dask(plan, tasks: Sequence[Task], jobs: int, scheduler: Optional[str] = None):
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
    rt = plan.cfg.runtime
    if rt.show_progress and client.dashboard_link:
        print(f"Dask dashboard: {client.dashboard_link}")
    order = ReleaseOrder(tasks)
    running: Dict[str, Task] = {}
    futures = as_completed()
    bar, advance = _progress(tasks, rt.show_progress)

    def release() -> None:
        try:
            slots = max(1, sum(client.nthreads().values())) - len(running)
        except lost as exc:
            raise _lost(exc) from None
        while order.ready and (slots > 0 or not running):
            t = order.pop()
            fut = client.submit(_remote, t.fn, rt.context, rt.device_id, t.args,
                                key=f"{t.key}-{os.getpid()}-{time.time_ns()}", pure=False)
            running[fut.key] = t
            futures.add(fut)
            slots -= 1
    result, finished = None, 0
    try:
        try:
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
                except BaseException:  # the task's own error (a UserError is one line)
                    _failed(t)
                    raise
                _record(plan, timings)
                advance(t)
                finished += 1
                if t.key == "run-reports":
                    result = value
                order.done(t)
                release()
        finally:
            bar.close()
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
