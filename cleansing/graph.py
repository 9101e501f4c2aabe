"""The run as a task graph, executed in this process or on Dask workers.

Tasks (each one's output is the file it has always written, so a task whose output is complete
does nothing and an interrupted run resumes unchanged):

* ``train``            per trial: training with trace (and Hara's cache when a method needs it);
* ``artefact``         per trial and artefact an estimator declares (a turn-over-dropout network);
* ``estimate``         per trial and estimator: the influence CSV, after the artefacts it reads
                       and the estimators whose scores it reuses (``Estimator.after``);
* ``trial-reports``    per trial: galleries, cleansed datasets, error explanations;
* ``validate``         per trial and repeat of the leave-one-out truth, then ``validate-pairs``;
* ``baseline``         per trial: the retraining without removal ("No_Removal");
* ``retrain``          per trial, method and n of ``-r``;
* ``run-reports``      once: summaries, figures and tables of the whole run.

Every task's result depends only on its inputs and seeds (files written by the tasks it depends
on), never on where or in which order it runs: 1 worker, N workers and workers on other hosts
sharing the output folder write the same bytes. Workers are processes with one thread each
(nnabla's CPU kernels use one core and hold global state). Tasks return their timings; the
process that runs the graph records them, so no two processes write one file.
"""
from __future__ import annotations

import collections
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
    """One node: ``fn(*args)`` after the tasks named in ``deps``; ``kind`` groups the progress bar."""

    key: str
    kind: str
    fn: Callable
    args: tuple
    deps: List[str] = field(default_factory=list)


def build_graph(plan, seeds: Sequence[int]) -> List[Task]:
    """The tasks of a run, in an order that respects their dependencies (also the sequential order)."""
    from . import pipeline as p
    cfg = plan.cfg
    tasks: List[Task] = []
    for seed in seeds:
        train = f"train-{seed}"
        tasks.append(Task(train, "train", p.train_task, (plan, seed)))
        for a in plan.artefacts():
            tasks.append(Task(f"artefact-{seed}-{a.name}", "train", p.artefact_task, (plan, seed, a.name), [train]))
        estimates = []
        for est in plan.estimators:
            key = f"estimate-{seed}-{est.name}"
            deps = [train] + [f"artefact-{seed}-{a.name}" for a in plan.artefacts(est)]
            deps += [f"estimate-{seed}-{name}" for name in est.after]
            tasks.append(Task(key, "estimate", p.estimate_task, (plan, seed, est.name), deps))
            estimates.append(key)
        tasks.append(Task(f"trial-reports-{seed}", "reports", p.trial_reports_task, (plan, seed), list(estimates)))
        if cfg.removal.validate > 0:
            repeats = [f"validate-{seed}-{r}" for r in range(max(1, cfg.removal.validate_repeats))]
            for r, key in enumerate(repeats):
                tasks.append(Task(key, "validate", p.validation_repeat_task, (plan, seed, r), list(estimates)))
            tasks.append(Task(f"validate-pairs-{seed}", "validate", p.validation_pairs_task, (plan, seed), repeats))
        baseline = f"baseline-{seed}"
        tasks.append(Task(baseline, "retrain", p.baseline_task, (plan, seed), [train]))
        for n in p.planned_removals(cfg):
            for est in plan.estimators:
                deps = [baseline] if n == 0 else [f"estimate-{seed}-{est.name}"]
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
            result, timings = t.fn(*t.args)
            _record(plan, timings)
            advance(t)
    finally:
        bar.close()
    return result


def _remote(fn: Callable, context: Optional[str], device_id: int, args: tuple, *_deps):
    """What a Dask worker runs: the nnabla context of the run, then the task (dependencies are only
    waited for; their results stay where they are)."""
    from common.context import set_context
    _quiet_dask()
    set_context(context, device_id)
    return fn(*args)


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
    cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.CRITICAL)
    return Client(cluster), cluster


def run_dask(plan, tasks: Sequence[Task], jobs: int, scheduler: Optional[str] = None):
    """Submit the graph to Dask and wait, recording timings as tasks finish. A task's UserError
    stops the run with that one line; a lost scheduler with a line that says how to resume."""
    from asyncio import CancelledError
    from concurrent.futures import CancelledError as FuturesCancelledError

    from distributed import as_completed
    from distributed.comm.core import CommClosedError
    try:
        from distributed.client import FutureCancelledError
    except ImportError:  # distributed < 2024.6 (Python 3.8) cancels with concurrent.futures' error
        FutureCancelledError = FuturesCancelledError
    client, cluster = start_client(jobs, scheduler)
    rt = plan.cfg.runtime
    if rt.show_progress and client.dashboard_link:
        print(f"Dask dashboard: {client.dashboard_link}")
    futures: Dict[str, object] = {}
    by_future = {}
    try:
        for t in tasks:
            fut = client.submit(_remote, t.fn, rt.context, rt.device_id, t.args, *[futures[d] for d in t.deps],
                                key=f"{t.key}-{os.getpid()}-{time.time_ns()}", pure=False)
            futures[t.key] = fut
            by_future[fut.key] = t
        bar, advance = _progress(tasks, rt.show_progress)
        result = None
        try:
            for fut in as_completed(list(futures.values())):
                try:
                    value, timings = fut.result()
                except UserError:
                    raise
                except (CancelledError, FuturesCancelledError, FutureCancelledError, CommClosedError, OSError,
                        TimeoutError) as exc:
                    if isinstance(exc, OSError) and not isinstance(exc, CommClosedError) and \
                            "scheduler" not in str(exc).lower():
                        raise  # a task's own OSError (a full disk, say): the driver reports it
                    raise UserError(f"lost the Dask scheduler ({type(exc).__name__}); rerun the same command to "
                                    f"continue where it stopped") from None
                _record(plan, timings)
                t = by_future[fut.key]
                advance(t)
                if t.key == "run-reports":
                    result = value
        finally:
            bar.close()
        return result
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
