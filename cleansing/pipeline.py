"""The run: training with trace, the estimators, retraining without the most harmful samples,
validation, analysis and reports, as tasks (``cleansing.graph``), resumable and parallel.

Every task reads its inputs from and writes its outputs to the output folder; an output that
exists is complete (all files are written atomically) and is not computed again. Estimators
(``cleansing.estimator``) compute; this module does every write.

With ``label_noise`` a seeded fraction of each trial's training labels is flipped (influence CSVs
then get a ``noisy`` column). After the influence stage each method gets its harmful-sample gallery
and cleansed datasets (``report``); after the analysis the run gets ``summary/cache_table.csv`` and,
with label noise, the mislabel-detection curves.
"""
from __future__ import annotations

import contextlib
import functools
import re
import shutil
import time
from dataclasses import dataclass, replace
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from common.errors import UserError
from common.figures import save_figure
from common.fileio import read_csv_exact, write_csv_atomic
from datasets import DataBundle

from . import analyze as analysis, lds, report
from .config import RunConfig, check_settings
from .estimator import Artefact, Estimate, Estimator, Registry, RunFacts, RunSettings
from .explain import EXPLAIN_COLUMNS, explanation_table, plot_explanations
from .folder import OutputFolder, prepare_output
from .graph import Task, Timing, run_dask, run_sequential
from .influence_csv import influence_frame, read_influence_csv, scores_by_position, write_influence_csv
from .paths import RunPaths
from .retrain import SCORE_COLUMNS, read_score_csv, removal_mask, retrain_scores, save_learner_nnp
from .trace import load_trace
from .train import (
    evaluate_head_epoch,
    evaluate_splits,
    head_complete,
    head_epochs,
    learner_from_file,
    train_head_epoch,
    train_last_epoch,
    training_complete,
)
from .trial import (
    Trial,
    load_artefact,
    load_trial_data,
    save_artefact,
    trial_context,
    untrained_trial,
)
from .validate import actual_influence, pick_validation_samples


@dataclass(frozen=True)
class Plan:
    """A run's configuration with its estimators resolved from the registry (``--methods`` order)."""

    cfg: RunConfig
    estimators: Tuple[Estimator, ...]

    @classmethod
    def of(cls, cfg: RunConfig, registry: Registry) -> Plan:
        registry.check_methods(list(cfg.methods))
        return cls(cfg, tuple(registry[m] for m in cfg.methods))

    def estimator(self, name: str) -> Estimator:
        return next(e for e in self.estimators if e.name == name)

    def options(self, est: Estimator):
        return self.cfg.option(est.options) if est.options is not None else None

    def artefacts(self, est: Optional[Estimator] = None) -> List[Artefact]:
        """The distinct artefacts of ``est`` (all estimators when None), in first-use order."""
        found: Dict[str, Artefact] = {}
        for e in self.estimators if est is None else (est,):
            for a in e.artefacts(RunSettings.of(self.cfg), self.options(e)):
                found.setdefault(a.name, a)
        return list(found.values())


# ---------------------------------------------------------------------------- bookkeeping
def write_timings(paths: RunPaths) -> None:
    """``summary/timings.csv``: every trial's ``logs/timings_seed_<k>.csv`` (complete files only)."""
    logs = [f for f in sorted(paths.logs.glob("timings_seed_*.csv"))
            if re.fullmatch(r"timings_seed_\d+\.csv", f.name)]
    if logs:
        write_csv_atomic(paths.run_table("timings"), pd.concat([read_csv_exact(f) for f in logs], ignore_index=True))


class Timings:
    """Seconds per (stage, method) of one trial, kept in ``logs/timings_seed_<k>.csv``."""

    def __init__(self, paths: RunPaths, seed: int):
        self.path = paths.timings(seed)
        self.seed = seed

    def add(self, stage: str, method: str, seconds: float) -> None:
        """Record (or replace) the row of (stage, method); rows written by others are kept."""
        rows = pd.read_csv(self.path, keep_default_na=False).to_dict("records") if self.path.is_file() else []
        rows = [r for r in rows if (r["stage"], r["method"]) != (stage, method)]
        rows.append({"stage": stage, "method": method, "seed": self.seed, "seconds": round(seconds, 3)})
        write_csv_atomic(self.path, pd.DataFrame(rows, columns=["stage", "method", "seed", "seconds"]))


def recorder(plan: Plan):
    """The ``record`` callback of the executors: each timing into its trial's ``Timings``."""
    def record(timings: List[Timing]) -> None:
        for seed, stage, method, seconds in timings:
            Timings(RunPaths(plan.cfg.out), seed).add(stage, method, seconds)
    return record


def remove_list(cfg: RunConfig, n_train: int, log=print) -> List[int]:
    """The -r values below the training size (others skipped with a message, as the original)."""
    keep = sorted({int(n) for n in cfg.removal.remove if int(n) < n_train})
    skipped = sorted({int(n) for n in cfg.removal.remove if int(n) >= n_train})
    if skipped:
        log(f"note: skipping removal of {skipped} samples: not below the training size {n_train}")
    return keep


def check_cleanse(cfg: RunConfig, n_train: int) -> List[int]:
    """The --cleanse sizes, sorted; a UserError (before any training) when one is not below ``n_train``."""
    ns = sorted({int(n) for n in cfg.reports.cleanse})
    bad = [n for n in ns if not 0 <= n < n_train]
    if bad:
        raise UserError(f"--cleanse {' '.join(map(str, bad))}: cannot remove that many of the {n_train} training "
                        f"samples; choose 0 <= N < {n_train}")
    return ns


def planned_removals(cfg: RunConfig, n_train: Optional[int] = None, log=None) -> List[int]:
    """The -r values the run retrains for (below the training size)."""
    if n_train is None:
        n_train = len(load_trial_data(cfg, cfg.seeds[0]).train)
    return remove_list(cfg, n_train, log or (lambda *_: None))


def check_run(plan: Plan, log=print) -> int:
    """Checks that need the data or the options, made once before any task: returns the training size."""
    cfg = plan.cfg
    for est in plan.estimators:
        if est.options is not None:
            plan.options(est).check(RunSettings.of(cfg))
    data = load_trial_data(cfg, cfg.seeds[0])
    n_train = len(data.train)
    check_cleanse(cfg, n_train)
    if cfg.removal.lds_targets > len(data.test):
        raise UserError(f"--lds-targets {cfg.removal.lds_targets}: there are only {len(data.test)} test images; "
                        f"choose at most {len(data.test)}")
    ns = remove_list(cfg, n_train, log)
    if cfg.removal.remove and not ns:
        raise UserError(f"every -r value ({' '.join(map(str, sorted(set(cfg.removal.remove))))}) is at or above "
                        f"the {n_train} training samples; choose values below {n_train}")
    return n_train


def _write_objects(paths: RunPaths, seed: int, tables: dict, figures: dict, logs: Optional[dict] = None) -> None:
    for stem, frame in tables.items():
        write_csv_atomic(paths.table(stem, seed), frame)
    for stem, fig in figures.items():
        save_figure(fig, paths.figure(stem, seed), dpi=130)
    for stem, frame in (logs or {}).items():
        write_csv_atomic(paths.log(stem, seed), frame)


# ---------------------------------------------------------------------------- tasks
# Each task function returns (value, timings) and does nothing when its output is complete; the
# graph of them (``build_graph``) is the run. Trials are rebuilt from the output folder in
# each process (cached per process: estimators of one trial share its validation gradient).
def train_epoch_task(plan: Plan, seed: int, epoch: int):
    """Epoch ``epoch`` of the epochs before the last of trial ``seed`` (``train.train_head_epoch``);
    the last of them writes ``start_last_epoch.h5``: all a last-epoch retraining needs."""
    cfg = plan.cfg
    paths = RunPaths(cfg.out)
    if head_complete(paths, seed) or paths.epoch_log(seed, epoch, "train").is_file():
        return None, []
    data = load_trial_data(cfg, seed)
    t0 = time.time()
    train_head_epoch(cfg.train, data, paths, seed, epoch, show_progress=cfg.runtime.show_progress)
    return None, [(seed, "train", f"epoch_{epoch}", time.time() - t0)]


def train_eval_task(plan: Plan, seed: int, epoch: int):
    """The validation and test scores after epoch ``epoch`` (``train.evaluate_head_epoch``), beside
    the training of the next epoch."""
    cfg = plan.cfg
    paths = RunPaths(cfg.out)
    if head_complete(paths, seed) or paths.epoch_log(seed, epoch).is_file():
        return None, []
    data = load_trial_data(cfg, seed)
    t0 = time.time()
    evaluate_head_epoch(cfg.train, data, paths, seed, epoch)
    return None, [(seed, "train", f"eval_{epoch}", time.time() - t0)]


def train_task(plan: Plan, seed: int):
    """The last epoch of trial ``seed`` (``train.train_last_epoch``), with the per-step parameters
    when an estimator needs them; after it the training is complete."""
    cfg = plan.cfg
    paths = RunPaths(cfg.out)
    data = load_trial_data(cfg, seed)
    steps = any(e.needs_step_params for e in plan.estimators)
    steps_last = -(-len(data.train) // cfg.train.batch_size)
    if training_complete(paths, seed, steps, steps_last):
        return len(data.train), []
    t0 = time.time()
    train_last_epoch(cfg.train, data, paths, seed, save_hara=steps, show_progress=cfg.runtime.show_progress,
                     keep_epochs=any(e.needs_epoch_params for e in plan.estimators))
    base = paths.score_csv(analysis.NO_REMOVAL, 0, seed)
    if not cfg.removal.retrain_all and 0 in planned_removals(cfg, len(data.train)) and not base.is_file():
        # the final model's scores, just computed for the log's last row on the data of this run: the
        # baseline task's evaluation of the same parameters on the same data would repeat them exactly
        last = read_csv_exact(paths.train_log(seed)).iloc[-1]
        write_csv_atomic(base, pd.DataFrame([{k: float(last[k]) for k in SCORE_COLUMNS}], columns=SCORE_COLUMNS))
    return len(data.train), [(seed, "train", "last_epoch", time.time() - t0)]


def discard_training(plan: Plan, seed: int) -> None:
    """Keep nothing of a failed training (run by the driver when a training task of ``seed`` fails,
    after it has taken that task's error as the one to report: a task still reading the removed
    files cannot replace it)."""
    shutil.rmtree(RunPaths(plan.cfg.out).weights(seed), ignore_errors=True)


def validation_grad_task(plan: Plan, seed: int):
    """``u`` and ``u_stats`` of trial ``seed`` at its final parameters (``Trial.save_validation_grad``),
    read by every estimator with ``needs_validation_grad``; the same arrays a process would compute."""
    paths = RunPaths(plan.cfg.out)
    if paths.validation_grad(seed).is_file():
        return None, []
    t0 = time.time()
    trial_context(plan.cfg, seed).save_validation_grad()
    return None, [(seed, "infl", "validation_grad", time.time() - t0)]


def artefact_task(plan: Plan, seed: int, name: str):
    """Train and store artefact ``name`` of trial ``seed``, then write its report tables and figures."""
    paths = RunPaths(plan.cfg.out)
    art = next(a for a in plan.artefacts() if a.name == name)
    trial = trial_context(plan.cfg, seed)
    timings = []
    trained = load_artefact(paths, seed, name, art.config(trial))
    if trained is None:
        t0 = time.time()
        trained = art.train(trial)
        save_artefact(paths, seed, name, trained)
        timings.append((seed, f"artefact_{name}", "", time.time() - t0))
    tables, figures = art.report_names
    wanted = [paths.table(s, seed) for s in tables] + [paths.figure(s, seed) for s in figures]
    if art.report is not None and not all(p.is_file() for p in wanted):
        _write_objects(paths, seed, *art.report(trial, trained))
    return None, timings


def estimate_task(plan: Plan, seed: int, name: str):
    """The influence CSV of estimator ``name`` for trial ``seed`` (and its tables, figures, logs)."""
    cfg = plan.cfg
    paths = RunPaths(cfg.out)
    csv = paths.influence_csv(name, seed)
    if csv.is_file():
        return None, []
    est = plan.estimator(name)
    trial = trial_context(cfg, seed) if est.needs_final_model else untrained_trial(cfg, seed)
    t0 = time.time()
    result = est.estimate(trial, plan.options(est))
    if not isinstance(result, Estimate):
        result = Estimate(np.asarray(result))
    scores = np.asarray(result.scores, dtype=np.float64)
    if scores.shape != (len(trial.data.train),):
        raise UserError(f"{name} returned {scores.shape} scores for {len(trial.data.train)} training samples")
    if not np.all(np.isfinite(scores)):
        raise UserError(f"{name} produced non-finite influence for seed {seed}; "
                        f"lower the learning rate (-lr) or check the training log")
    _write_objects(paths, seed, result.tables, result.figures, result.logs)
    write_influence_csv(csv, influence_frame(trial.data.train.ids, trial.data.train.labels, scores,
                                             trial.noisy if cfg.data.label_noise > 0 else None))
    return None, [(seed, "infl", name, time.time() - t0)]


def _frames(cfg: RunConfig, seed: int, n_train: int) -> Dict[str, pd.DataFrame]:
    paths = RunPaths(cfg.out)
    return {m: read_influence_csv(paths.influence_csv(m, seed), n_train) for m in cfg.methods}


def save_final_nnp(plan: Plan, data: DataBundle, seed: int) -> None:
    """With ``--save-nnp``: ``weights/seed_NN/final.nnp``, the trained model, unless it exists (a
    report of the trial, not part of its training: a failed write never discards the training)."""
    paths = RunPaths(plan.cfg.out)
    if plan.cfg.reports.save_nnp and not paths.final_nnp(seed).is_file():
        save_learner_nnp(paths.final_nnp(seed), learner_from_file(plan.cfg.train, data, paths.params(seed, "final")))


def trial_reports_task(plan: Plan, seed: int):
    """Galleries, cleansed datasets, error explanations and (``--save-nnp``) the trained model as an
    .nnp of trial ``seed``."""
    cfg = plan.cfg
    trial = trial_context(cfg, seed)
    n_train = len(trial.data.train)
    save_final_nnp(plan, trial.data, seed)
    write_trial_reports(trial, _frames(cfg, seed, n_train), check_cleanse(cfg, n_train),
                        [e.name for e in plan.estimators if e.control])
    timings = []
    for est in plan.estimators:
        if cfg.reports.explain_max > 0 and est.explains_errors:
            seconds = explain_trial(plan, trial, est)
            if seconds is not None:
                timings.append((seed, "explain", est.name, seconds))
    return None, timings


def _validation_samples(plan: Plan, seed: int) -> Tuple[Dict[str, np.ndarray], Optional[np.ndarray]]:
    cfg = plan.cfg
    n_train = len(load_trial_data(cfg, seed).train)
    controls = {e.name for e in plan.estimators if e.control}
    estimators = {name: scores_by_position(f) for name, f in _frames(cfg, seed, n_train).items()
                  if name not in controls}
    if not estimators:
        return estimators, None
    return estimators, pick_validation_samples(estimators, cfg.removal.validate, seed)


def _cached_repeat(paths: RunPaths, seed: int, r: int, samples: np.ndarray) -> Optional[np.ndarray]:
    f = paths.validation_repeat(seed, r)
    if not f.is_file():
        return None
    d = read_csv_exact(f)
    return d.actual.to_numpy() if np.array_equal(d.datasource_index.to_numpy(), samples) else None


def validation_repeat_task(plan: Plan, seed: int, repeat: int):
    """Repeat ``repeat`` of the leave-one-out truth on the samples picked from the estimates (see
    ``validation_pairs_task``), kept in ``logs/validation_actual_seed_<k>_repeat_<r>.csv``."""
    cfg = plan.cfg
    paths = RunPaths(cfg.out)
    _, samples = _validation_samples(plan, seed)
    if samples is None or _cached_repeat(paths, seed, repeat, samples) is not None:
        return None, []
    t0 = time.time()
    trial = trial_context(cfg, seed)
    progress = paths.validation_progress(seed, repeat)
    actual = actual_influence(cfg.train, trial.data, paths, seed, trial.trace, samples, cfg.removal.retrain_all,
                              repeat, show_progress=cfg.runtime.show_progress, progress=progress)
    write_csv_atomic(paths.validation_repeat(seed, repeat),
                     pd.DataFrame({"datasource_index": samples, "actual": actual}))
    progress.unlink(missing_ok=True)
    return None, [(seed, "validate", f"repeat_{repeat}", time.time() - t0)]


def validation_pairs_task(plan: Plan, seed: int):
    """Every method's estimate beside the actual leave-one-out change of the validation loss
    (counterfactual retraining of the last epoch, or of all epochs with -ra) on the samples picked
    by ``pick_validation_samples``, averaged over ``validate_repeats`` repeats (see
    ``actual_influence``): ``logs/validation_pairs_seed_<k>.csv``."""
    cfg = plan.cfg
    paths = RunPaths(cfg.out)
    out = paths.validation_pairs(seed)
    repeats = max(1, cfg.removal.validate_repeats)
    if out.is_file() and int(pd.read_csv(out, nrows=1).get("repeats", pd.Series([1])).iloc[0]) == repeats:
        return None, []
    estimators, samples = _validation_samples(plan, seed)
    if samples is None:
        return None, []
    table = np.stack([_cached_repeat(paths, seed, r, samples) for r in range(repeats)])
    spread = table.std(axis=0, ddof=1) if repeats > 1 else np.full(len(samples), np.nan)
    rows = [pd.DataFrame({"method": name, "seed": seed, "datasource_index": samples, "estimate": s[samples],
                          "actual": table.mean(axis=0), "actual_sd": spread, "repeats": repeats})
            for name, s in estimators.items()]
    write_csv_atomic(out, pd.concat(rows, ignore_index=True))
    return None, []


def lds_task(plan: Plan, seed: int, subset: int):
    """LDS subset ``subset`` of trial ``seed`` retrained on the samples it keeps (``cleansing.lds``),
    shared by every method; its one-row table is its output."""
    cfg = plan.cfg
    paths = RunPaths(cfg.out)
    out = paths.lds_subset(seed, lds.lds_tag(cfg.removal), subset)
    if out.is_file():
        return None, []
    t0 = time.time()
    data = load_trial_data(cfg, seed)
    trace = load_trace(paths.trace(seed), len(data.train))
    write_csv_atomic(out, lds.run_subset(cfg.train, cfg.removal, data, paths, seed, trace, subset))
    return None, [(seed, "lds", f"subset_{subset}", time.time() - t0)]


def lds_targets_task(plan: Plan, seed: int, name: str):
    """Estimator ``name``'s scores with each of the first ``--lds-targets`` test images as its target
    (``Estimator.estimate_targets`` over ``lds.target_trials``)."""
    cfg = plan.cfg
    paths = RunPaths(cfg.out)
    count = cfg.removal.lds_targets
    out = paths.lds_target_scores(seed, name, count)
    if out.is_file():
        return None, []
    est = plan.estimator(name)
    trial = trial_context(cfg, seed) if est.needs_final_model else untrained_trial(cfg, seed)
    t0 = time.time()
    scores = est.estimate_targets(lds.target_trials(trial, count), plan.options(est))
    write_csv_atomic(out, pd.DataFrame(scores, columns=[f"target_{k}" for k in range(count)]))
    return None, [(seed, "lds", f"targets_{name}", time.time() - t0)]


def baseline_task(plan: Plan, seed: int):
    """The scores without removal (``No_Removal``, n = 0), shared by every method. Retraining the
    last epoch with nothing removed replays the training's exactly (same start, batches, seeds and
    arithmetic: the same parameters, ``tests/cleansing/test_train.py``), so the final model is scored
    instead; with ``retrain_all`` (a row per epoch) every epoch is retrained."""
    cfg = plan.cfg
    paths = RunPaths(cfg.out)
    base = paths.score_csv(analysis.NO_REMOVAL, 0, seed)
    if 0 not in planned_removals(cfg) or base.is_file():
        return None, []
    t0 = time.time()
    data = load_trial_data(cfg, seed)
    if cfg.removal.retrain_all:
        trace = load_trace(paths.trace(seed), len(data.train))
        rows = retrain_scores(cfg.train, data, paths, seed, trace, removal_mask(len(data.train), [], 0), True)
    else:  # the current validation and test data (the training log's may be older)
        rows = [evaluate_splits(learner_from_file(cfg.train, data, paths.params(seed, "final")), data)]
    write_csv_atomic(base, pd.DataFrame(rows, columns=SCORE_COLUMNS))
    return None, [(seed, "eval", analysis.NO_REMOVAL, time.time() - t0)]


def retrain_task(plan: Plan, seed: int, name: str, n: int):
    """The scores after retraining trial ``seed`` without the ``n`` most harmful samples by ``name``."""
    cfg = plan.cfg
    paths = RunPaths(cfg.out)
    out = paths.score_csv(name, n, seed)
    model_file = paths.retrained_nnp(name, n, seed) if cfg.reports.save_nnp and n > 0 else None
    if out.is_file() and (model_file is None or model_file.is_file()):
        return None, []
    if n == 0:
        write_csv_atomic(out, read_score_csv(paths.score_csv(analysis.NO_REMOVAL, 0, seed)))
        return None, []
    t0 = time.time()
    data = load_trial_data(cfg, seed)
    trace = load_trace(paths.trace(seed), len(data.train))
    order = read_influence_csv(paths.influence_csv(name, seed), len(data.train))["datasource_index"].to_numpy()
    # the model is written before the scores: a run stopped between them redoes this retraining
    rows = retrain_scores(cfg.train, data, paths, seed, trace, removal_mask(len(data.train), order, n),
                          cfg.removal.retrain_all,
                          keep=None if model_file is None else lambda learner: save_learner_nnp(model_file, learner))
    if out.is_file():  # --save-nnp added to a finished run: the same retraining, for its model only
        return None, [(seed, f"eval_n{n}", name, time.time() - t0)]
    write_csv_atomic(out, pd.DataFrame(rows, columns=SCORE_COLUMNS))
    return None, [(seed, f"eval_n{n}", name, time.time() - t0)]


def run_reports_task(plan: Plan, seeds: List[int]):
    """Summary, figures and tables of the whole run (``analysis.analyze``, ``write_run_reports``);
    ``summary/timings.csv`` is written by the process that records the timings, after every task."""
    cfg = plan.cfg
    paths = RunPaths(cfg.out)
    title = f"{cfg.data.dataset} / {cfg.train.model}, {len(seeds)} trial(s)"
    caches = {e.name: "steps" if e.needs_step_params else "epochs" if e.needs_epoch_params else "none" if e.control
              else "final" for e in plan.estimators}
    summary = analysis.analyze(paths, seeds, list(cfg.methods), title, caches=caches,
                               removals=planned_removals(cfg), epochs=cfg.train.epochs)
    write_run_reports(plan, paths, len(load_trial_data(cfg, seeds[0]).train), title)
    merge_logs(plan, paths, seeds)
    return summary, []


def merge_logs(plan: Plan, paths: RunPaths, seeds: Sequence[int]) -> None:
    """``summary/<table>.csv`` from the estimators' per-trial logs (``Estimator.summary_logs``), in
    ``--methods`` then seed order."""
    tables: Dict[str, List[pd.DataFrame]] = {}
    for est in plan.estimators:
        for stem, table in est.summary_logs.items():
            tables.setdefault(table, []).extend(read_csv_exact(f) for s in seeds if (f := paths.log(stem, s)).is_file())
    for table, frames in tables.items():
        if frames:
            write_csv_atomic(paths.run_table(table), pd.concat(frames, ignore_index=True))


# ---------------------------------------------------------------------------- the graph
#: An evaluated image costs about a third of a trained sample (cnn6, CPU: 234 against 80 a second).
EVAL_COST = 1 / 3


def build_graph(plan: Plan, seeds: Sequence[int], n_train: Optional[int] = None) -> List[Task]:
    """The tasks of a run, in an order that respects their dependencies (also the sequential order);
    ``n_train`` (default: read from the first trial's data) bounds the -r list.

    Tasks (each one's output is the file it has always written, so a task whose output is complete
    does nothing and an interrupted run resumes unchanged):

    * ``train-epoch``      per trial and epoch before the last, each after the one before (the last of
                           them writes what every retraining starts from);
    * ``train-eval``       per trial and epoch before the last: its validation and test scores (its
                           ``train_log.csv`` row), beside the training of the next epoch;
    * ``train``            per trial: the last epoch (and Hara's cache when a method needs it), after
                           the epochs before it and their evaluations;
    * ``validation-grad``  per trial, when an estimator reads it: ``u``, the validation loss gradient
                           at the final parameters (computed once, not once per estimator and worker);
    * ``artefact``         per trial and artefact an estimator declares (a turn-over-dropout network);
    * ``estimate``         per trial and estimator: the influence CSV, after the artefacts it reads
                           and the estimators whose scores it reuses (``Estimator.after``);
    * ``trial-reports``    per trial: galleries, cleansed datasets, error explanations, ``final.nnp``;
    * ``validate``         per trial and repeat of the leave-one-out truth, then ``validate-pairs``;
    * ``baseline``         per trial: the scores without removal ("No_Removal"): the final model's, after
                           ``train`` (retraining with nothing removed replays the last epoch exactly);
    * ``retrain``          per trial, method and n of ``-r``, after the last ``train-epoch`` and the method's estimate
                           (so the Random control's retrainings run beside the last training epoch);
    * ``lds``              per trial and ``--lds`` subset: the retraining on the samples it keeps (shared by
                           every method), after ``train``; ``lds-targets`` per trial and method with
                           ``--lds-targets``: its scores for each target test image, after its estimate;
    * ``run-reports``      once: summaries, figures and tables of the whole run (``summary/lds.csv``).
    """
    cfg = plan.cfg
    tasks: List[Task] = []
    if n_train is None:
        data = load_trial_data(cfg, seeds[0])
        sizes = (len(data.train), len(data.val), len(data.test))
    else:  # the graph of a run whose data are not here (bench_graph): the configured sizes
        sizes = (n_train, cfg.data.n_val or 0, cfg.data.n_test or 0)
    removals = planned_removals(cfg, sizes[0])
    # costs in training epochs: an epoch of training is 1, evaluating a split its size / the training size / 3
    n = max(1, sizes[0])
    val, test = EVAL_COST * sizes[1] / n, EVAL_COST * sizes[2] / n
    retrain = (cfg.train.epochs if cfg.removal.retrain_all else 1) * (1 + val + test)
    for seed in seeds:
        train = f"train-{seed}"
        discard = functools.partial(discard_training, plan, seed)
        epochs = head_epochs(cfg.train)
        heads = [f"train-epoch-{seed}-{e}" for e in epochs]
        evals = [f"train-eval-{seed}-{e}" for e in epochs if e]
        for i, e in enumerate(epochs):
            tasks.append(Task(heads[i], "train", train_epoch_task, (plan, seed, e), heads[i - 1:i] if i else [],
                              priority=1, on_error=discard, cost=1.0 if e else 0.01))
            if i:  # epoch e-1's evaluation after epoch e in graph order: the chain of epochs goes first
                tasks.append(Task(evals[i - 1], "train", train_eval_task, (plan, seed, e - 1), [heads[i - 1]],
                                  priority=1, cost=val))
        head = heads[-1]
        if epochs[-1]:
            tasks.append(Task(evals[-1], "train", train_eval_task, (plan, seed, epochs[-1]), [head], priority=1,
                              cost=val))
        tasks.append(Task(train, "train", train_task, (plan, seed), [head] + evals, priority=1, on_error=discard,
                          cost=1 + val + test))
        grad = f"validation-grad-{seed}"
        if any(e.needs_validation_grad for e in plan.estimators):
            tasks.append(Task(grad, "estimate", validation_grad_task, (plan, seed), [train], priority=1,
                              cost=val / EVAL_COST))
        for a in plan.artefacts():
            tasks.append(Task(f"artefact-{seed}-{a.name}", "train", artefact_task, (plan, seed, a.name), [train],
                              priority=1, cost=float(cfg.train.epochs)))
        estimates = []
        for est in plan.estimators:
            key = f"estimate-{seed}-{est.name}"
            deps = [train] if est.needs_final_model else []
            deps += [grad] if est.needs_validation_grad else []
            deps += [f"artefact-{seed}-{a.name}" for a in plan.artefacts(est)]
            deps += [f"estimate-{seed}-{name}" for name in est.after]
            tasks.append(Task(key, "estimate", estimate_task, (plan, seed, est.name), deps, priority=1,
                              cost=est.cost_epochs))
            estimates.append(key)
        tasks.append(Task(f"trial-reports-{seed}", "reports", trial_reports_task, (plan, seed), [train] + estimates))
        if cfg.removal.validate > 0:
            repeats = [f"validate-{seed}-{r}" for r in range(max(1, cfg.removal.validate_repeats))]
            for r, key in enumerate(repeats):
                tasks.append(Task(key, "validate", validation_repeat_task, (plan, seed, r), [train] + estimates,
                                  cost=cfg.removal.validate * (1 + val)))
            tasks.append(Task(f"validate-pairs-{seed}", "validate", validation_pairs_task, (plan, seed), repeats))
        lds_cost = (cfg.train.epochs if cfg.removal.lds_retrain_mode == "full" else 1) * (1 + val)
        for m in range(cfg.removal.lds):
            tasks.append(Task(f"lds-{seed}-{m}", "retrain", lds_task, (plan, seed, m), [train], cost=lds_cost))
        if cfg.removal.lds and cfg.removal.lds_targets:
            for est in plan.estimators:
                if not est.after:  # a method that reuses another's scores has no per-target scores of its own
                    tasks.append(Task(f"lds-targets-{seed}-{est.name}", "estimate", lds_targets_task,
                                      (plan, seed, est.name), [f"estimate-{seed}-{est.name}"],
                                      cost=est.cost_epochs * cfg.removal.lds_targets))
        baseline = f"baseline-{seed}"
        tasks.append(Task(baseline, "retrain", baseline_task, (plan, seed), [train],
                          cost=retrain if cfg.removal.retrain_all else val + test))
        for k in removals:
            for est in plan.estimators:
                deps = [baseline] if k == 0 else [head, f"estimate-{seed}-{est.name}"]
                tasks.append(Task(f"retrain-{seed}-{est.name}-{k}", "retrain", retrain_task,
                                  (plan, seed, est.name, k), deps, cost=retrain if k else 0.01))
    tasks.append(Task("run-reports", "reports", run_reports_task, (plan, list(seeds)),
                      [t.key for t in tasks]))
    return tasks



def run_trial(plan: Plan, seed: int, log=print) -> int:
    """Every task of trial ``seed`` in this process, in graph order (resumable); returns the number
    of training samples."""
    n_train = check_run(plan, log)
    one = Plan(replace(plan.cfg, first_seed=seed, n_trials=1), plan.estimators)
    run_sequential([t for t in build_graph(one, [seed]) if t.key != "run-reports"], recorder(one),
                   one.cfg.runtime.show_progress)
    return n_train


# ---------------------------------------------------------------------------- reports
def write_trial_reports(trial: Trial, frames: Dict[str, pd.DataFrame], cleanse: Sequence[int],
                        controls: Sequence[str] = ()) -> None:
    """Per method (``controls`` included, titled as such): the harmful-sample gallery (``gallery``
    images, 0: none) and the cleansed datasets without the ``cleanse`` most harmful samples (sizes
    checked by ``check_cleanse``). Existing files are kept."""
    cfg, seed, paths = trial.cfg, trial.seed, trial.paths
    true_labels = trial.true_labels if cfg.data.label_noise > 0 else None
    roots = report.image_roots(cfg.data.dataset, cfg.data.val_csv, cfg.data.test_csv)
    for name, frame in frames.items():
        path = report.gallery_path(paths.root, name, seed)
        if cfg.reports.gallery > 0 and not (path.is_file() or path.with_suffix(".csv").is_file()):
            what = f"{name} (control: a random order, not an influence)" if name in controls else name.replace("_", " ")
            title = f"{what}: {cfg.data.dataset} / {cfg.train.model}, seed {seed}{_noise_text(cfg)}"
            report.harmful_gallery(trial.data, frame, path, n=cfg.reports.gallery, title=title,
                                   true_labels=true_labels)
        for n in cleanse:
            report.write_cleansed_csv(trial.data, frame, n, paths.root, roots, method=name, seed=seed)


def explain_trial(plan: Plan, trial: Trial, est: Estimator) -> Optional[float]:
    """``summary/explain_errors_<method>_<seed>.csv`` and ``fig/explain_errors_<method>_<seed>.png``:
    the first ``explain_max`` misclassified test images and their ``explain_k`` most influential
    training images by ``est``; returns the seconds it took (None when both files existed)."""
    cfg, seed, paths = trial.cfg, trial.seed, trial.paths
    csv, png = paths.explain_csv(est.name, seed), paths.explain_png(est.name, seed)
    if csv.is_file() and png.is_file():
        return None
    t0 = time.time()
    rep = cfg.reports
    ex = est.explain(trial, plan.options(est), rep.explain_max)
    if len(ex.wrong) == 0:
        table = pd.DataFrame(columns=EXPLAIN_COLUMNS)
    else:
        table = explanation_table(trial.data, ex.wrong, ex.preds, ex.influence, rep.explain_k, rep.explain_same_label)
    write_csv_atomic(csv, table)
    title = f"{est.name}: {cfg.data.dataset} / {cfg.train.model}, seed {seed}{_noise_text(cfg)}"
    plot_explanations(table, trial.data, png, title, ex.formula)
    return time.time() - t0


def write_run_reports(plan: Plan, paths: RunPaths, n_train: int, title: str) -> None:
    """The estimators' run tables (``Estimator.run_tables``, e.g. ``summary/cache_table.csv``) and,
    with label noise, ``summary/detection.csv`` and ``fig/detection.png``."""
    cfg = plan.cfg
    seeds = cfg.seeds
    final = paths.params(seeds[0], "final")
    if not final.is_file():
        raise UserError(f"parameter file {final} is missing; rerun the same command")
    facts = RunFacts(cfg.data.dataset, n_train, cfg.train.batch_size, cfg.train.epochs, final.stat().st_size,
                     pd.read_csv(paths.run_table("cache_size")))
    tables: Dict[str, pd.DataFrame] = {}
    for est in plan.estimators:
        for name, frame in est.run_tables(facts).items():
            tables.setdefault(name, frame)
    for name, frame in tables.items():
        write_csv_atomic(paths.run_table(name), frame)
    if cfg.removal.lds:
        def base_targets(seed: int) -> np.ndarray:  # the final model's loss on each target test image
            data = load_trial_data(cfg, seed)
            final = learner_from_file(cfg.train, data, paths.params(seed, "final"))
            return lds.target_losses(final, data, cfg.removal.lds_targets)
        lds.write_lds(paths, cfg.removal, list(cfg.methods), seeds, n_train, base_targets)
    if cfg.data.label_noise > 0:
        frames = report.collect_detection_frames(paths.root, list(cfg.methods), seeds)
        if frames:
            report.write_detection(paths.root, frames, title + _noise_text(cfg), method_costs(plan, paths, seeds))


def method_costs(plan: Plan, paths: RunPaths, seeds: Sequence[int]) -> Dict[str, Dict[int, float]]:
    """method -> {seed: its measured cost in training epochs}: its estimate task, the validation gradient
    if it reads it and the artefacts it trains (``logs/timings_seed_<k>.csv``), over the mean seconds of
    one training epoch of that trial. Missing timings leave a seed out."""
    costs: Dict[str, Dict[int, float]] = {}
    for seed in seeds:
        if not paths.timings(seed).is_file():
            continue
        t = pd.read_csv(paths.timings(seed), keep_default_na=False)
        epochs = t[(t.stage == "train") & t.method.str.match(r"epoch_\d+$|last_epoch$")].seconds
        if not len(epochs):
            continue
        seconds = dict(zip(zip(t.stage, t.method), t.seconds))
        for est in plan.estimators:
            parts = [("infl", est.name)] + ([("infl", "validation_grad")] if est.needs_validation_grad else [])
            parts += [(f"artefact_{a.name}", "") for a in plan.artefacts(est)]
            if ("infl", est.name) in seconds:
                costs.setdefault(est.name, {})[seed] = sum(seconds.get(p, 0.0) for p in parts) / float(epochs.mean())
    return costs


def _noise_text(cfg: RunConfig) -> str:
    return f", {100 * cfg.data.label_noise:g}% of training labels flipped" if cfg.data.label_noise > 0 else ""


# ---------------------------------------------------------------------------- the run
@contextlib.contextmanager
def run_lifecycle(cfg: RunConfig, registry: Registry, overwrite: bool = False,
                  log=print) -> Iterator[Tuple[Plan, OutputFolder]]:
    """The one lifecycle of a run (drivers and API): every check that can refuse it (settings,
    estimator options, data, removal sizes, the nnabla context of local work) runs first, and only
    then is the output folder prepared (``prepare_output``: links, lock, manifest, ``--overwrite``),
    so a refused run deletes and records nothing. The body runs the tasks; the folder is closed after
    it (a new folder whose first task never finished is removed again)."""
    plan = Plan.of(cfg, registry)
    check_settings(cfg)
    check_run(plan, log)
    if not cfg.runtime.scheduler:  # local work: this machine must have the context
        from common.context import set_context
        set_context(cfg.runtime.context, cfg.runtime.device_id)
    folder = prepare_output(cfg, registry, overwrite)
    failed = True
    try:
        yield plan, folder
        failed = False
    finally:
        folder.close(failed)


def run_tasks(plan: Plan, folder: OutputFolder, tasks: Sequence) -> pd.DataFrame:
    """Run ``tasks`` (from ``build_graph``) in this process or on Dask (``runtime.jobs``,
    ``runtime.scheduler``); the folder counts as started once the first task is handed out (before
    that, a failure such as an unreachable scheduler leaves a new folder as it was found)."""
    def start() -> None:
        folder.started = True
    rt = plan.cfg.runtime
    if rt.scheduler or rt.jobs > 1:
        return run_dask(tasks, recorder(plan), rt.jobs, rt.scheduler, rt.context, rt.device_id, rt.show_progress,
                        on_start=start)
    return run_sequential(tasks, recorder(plan), rt.show_progress, on_start=start)


def run(cfg: RunConfig, registry: Registry, overwrite: bool = False) -> pd.DataFrame:
    """Run the task graph of every trial (in this process, or on ``runtime.jobs`` local Dask
    workers, or on the cluster of ``runtime.scheduler``), then the analysis and the run's reports;
    returns the summary table."""
    with run_lifecycle(cfg, registry, overwrite) as (plan, folder):
        rt = cfg.runtime
        graph_plan = plan
        if rt.scheduler or rt.jobs > 1:  # one progress bar over the tasks, none inside them
            graph_plan = Plan(replace(cfg, runtime=replace(rt, show_progress=False)), plan.estimators)
        summary = run_tasks(plan, folder, build_graph(graph_plan, cfg.seeds))
        write_timings(folder.paths)
    return summary
