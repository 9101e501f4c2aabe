"""The four stages chained per trial (train, infl, eval, analyze), resumable and parallel.

Every stage reads its inputs from and writes its outputs to the output folder; an output that
exists is complete (all files are written atomically) and is not computed again.

With ``label_noise`` a seeded fraction of each trial's training labels is flipped (influence CSVs
then get a ``noisy`` column). After the influence stage each method gets its harmful-sample gallery
and cleansed datasets (``report``); after the analysis the run gets ``summary/cache_table.csv`` and,
with label noise, the mislabel-detection curves.
"""
from __future__ import annotations

import argparse
import collections
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from cleansing.explain import plot_explanations
from cleansing.influence_csv import influence_frame, read_influence_csv, scores_by_position, write_influence_csv
from cleansing.outdir import (
    LOCK,
    SCOPE_TEXT,
    SCOPES,
    FolderLock,
    check_deletable,
    check_output_arg,
    manifest_diff,
    read_manifest,
    remove_outputs,
    write_manifest,
)
from cleansing.paths import RunPaths
from common.errors import UserError
from common.fileio import remove_stale_partials, write_csv_atomic
from common.params_io import load_params
from datasets import DataBundle, load_dataset
from datasets.loader import input_fingerprints, input_paths
from datasets.noise import apply_label_noise, check_fraction
from models.autodiff import Learner
from sgd_influence.explain import SGD_FORMULA, explain_errors
from sgd_influence.infl import sgd_influence, validation_loss_grad, validation_loss_stats_grad

from . import analyze as analysis, report
from .retrain import SCORE_COLUMNS, read_score_csv, removal_mask, retrain_scores
from .trace import Trace, load_trace
from .train import TrainConfig, load_training, train_with_trace, training_complete
from .validate import actual_influence, pick_validation_samples

DEFAULT_REMOVE = [0, 1, 10, 40, 100, 200, 600, 1000, 3000, 5000, 10000, 30000]
#: Manifest keys added after runs had been made: an old manifest without them had these values.
MANIFEST_DEFAULTS = {"label_noise": 0.0, "retrain_all": False, "train_data": None, "val_data": None,
                     "test_data": None}
#: Report settings added to the manifest later: an old manifest without them takes today's values.
ADOPTED_IF_MISSING = ("gallery", "explain_k", "explain_max", "explain_same_label")


@dataclass
class RunConfig:
    """Everything a run needs; the fields in ``MANIFEST_KEYS`` decide whether old outputs are valid."""

    dataset: str = "digits"
    out: str = "output_sgd_influence"
    train: TrainConfig = field(default_factory=TrainConfig)
    n_trials: int = 1
    first_seed: int = 0
    methods: Sequence[str] = ("Hara", "Ours", "Random")
    remove: Sequence[int] = tuple(DEFAULT_REMOVE)
    retrain_all: bool = False
    data_dir: Optional[str] = None
    n_train: Optional[int] = None
    n_val: Optional[int] = None
    n_test: Optional[int] = None
    val_csv: Optional[str] = None
    test_csv: Optional[str] = None
    context: Optional[str] = None
    device_id: int = 0
    jobs: int = 1
    scheduler: Optional[str] = None
    show_progress: bool = True
    validate: int = 0
    validate_repeats: int = 1
    label_noise: float = 0.0
    gallery: int = 32
    cleanse: Sequence[int] = ()
    explain_k: int = 5
    explain_max: int = 0
    explain_same_label: bool = False

    @property
    def seeds(self) -> List[int]:
        return list(range(self.first_seed, self.first_seed + self.n_trials))

    def manifest(self) -> dict:
        """Every setting that changes a result (``manifest_scopes`` says which outputs each one
        invalidates), with the content fingerprints of own CSV data."""
        return {"dataset": self.dataset, **asdict(self.train), "n_train": self.n_train,
                "n_val": self.n_val, "n_test": self.n_test, "label_noise": float(self.label_noise),
                "retrain_all": bool(self.retrain_all), "gallery": int(self.gallery),
                "explain_k": int(self.explain_k), "explain_max": int(self.explain_max),
                "explain_same_label": bool(self.explain_same_label),
                **input_fingerprints(self.dataset, self.val_csv, self.test_csv,
                                     (self.n_train, self.n_val, self.n_test))}

    def manifest_defaults(self) -> dict:
        """Values of keys that older manifests lack (they were recorded later)."""
        return dict(MANIFEST_DEFAULTS)

    def manifest_scopes(self) -> Dict[str, Callable]:
        """Manifest key -> the outputs a change of it invalidates (``cleansing.outdir.SCOPES``)."""
        scopes = {k: SCOPES["train"] for k in ("dataset", *asdict(self.train), "n_train", "label_noise", "train_data")}
        scopes.update({k: SCOPES["influence"] for k in ("n_val", "val_data")})
        scopes.update({k: SCOPES["eval"] for k in ("n_test", "test_data", "retrain_all")})
        scopes["gallery"] = lambda rel: rel.name.startswith("harmful_")
        for k in ("explain_k", "explain_max", "explain_same_label"):
            scopes[k] = lambda rel: rel.name.startswith("explain_errors")
        return scopes

    def inputs(self) -> List[Path]:
        """Files and folders the run reads its data from."""
        return input_paths(self.dataset, self.data_dir, self.val_csv, self.test_csv)


def config_fields(a: argparse.Namespace) -> dict:
    """``RunConfig`` keyword arguments from the flags of ``cleansing.cli.add_run_arguments`` and ``--methods``."""
    train = TrainConfig(model=a.model, epochs=a.epochs, batch_size=a.batch_size, lr=a.learning_rate,
                        augment=not a.no_augment)
    return dict(dataset=a.dataset, out=a.output, train=train, n_trials=a.n_trials, methods=a.methods,
                remove=a.remove, retrain_all=a.retrain_all, data_dir=a.data_dir, n_train=a.n_train,
                n_val=a.n_val, n_test=a.n_test, val_csv=a.val_csv, test_csv=a.test_csv, context=a.context,
                device_id=a.device_id, jobs=a.jobs, scheduler=a.scheduler, show_progress=not a.no_progress,
                validate=a.validate,
                validate_repeats=a.validate_repeats,
                label_noise=a.label_noise, gallery=a.gallery, cleanse=a.cleanse, explain_k=a.explain_k,
                explain_max=a.explain_max, explain_same_label=a.explain_same_label)


@dataclass
class Trial:
    """What the estimators of one trial may use: the data, the trace and the final model."""

    cfg: RunConfig
    seed: int
    data: DataBundle
    paths: RunPaths
    trace: Trace
    learner: Learner
    noisy: Optional[np.ndarray] = None          # training positions whose label was flipped (label noise)
    true_labels: Optional[np.ndarray] = None    # training labels before flipping
    _u: Optional[dict] = None
    _u_stats: Optional[dict] = None

    @property
    def u(self) -> dict:
        """Gradient of the mean validation loss at the final parameters (computed once)."""
        if self._u is None:
            self._u = validation_loss_grad(self.learner, self.data)
        return self._u

    @property
    def u_stats(self) -> dict:
        """Its gradient w.r.t. batch norm's running statistics (computed once; empty without)."""
        if self._u_stats is None:
            self._u_stats = validation_loss_stats_grad(self.learner, self.data)
        return self._u_stats


@dataclass(frozen=True)
class Method:
    """An influence estimator: its name (folder and CSV name) and how it scores a trial."""

    name: str
    compute: Callable[[Trial], np.ndarray]
    needs_hara_cache: bool = False
    #: ``compute`` follows ``trial.u``, so restarting it from a test loss's gradient explains an error
    explains_errors: bool = False
    #: methods of one group share a trained artefact or each other's scores: a trial runs them in
    #: ``--methods`` order, one after another (methods of no group run side by side)
    group: Optional[str] = None


def _hara(trial: Trial) -> np.ndarray:
    paths, seed = trial.paths, trial.seed
    return sgd_influence(trial.learner, trial.data, trial.trace, trial.u, trial.cfg.train.augment,
                         state_at=lambda t: load_params(paths.hara_step(seed, t)), u_stats=trial.u_stats,
                         show_progress=trial.cfg.show_progress, desc=f"Hara seed {seed}")


def _ours(trial: Trial) -> np.ndarray:
    return sgd_influence(trial.learner, trial.data, trial.trace, trial.u, trial.cfg.train.augment,
                         u_stats=trial.u_stats, show_progress=trial.cfg.show_progress,
                         desc=f"Ours seed {trial.seed}")


def _random(trial: Trial) -> np.ndarray:
    return np.random.default_rng([trial.seed, 7]).random(len(trial.data.train))


METHODS: Dict[str, Method] = {
    "Hara": Method("Hara", _hara, needs_hara_cache=True, explains_errors=True),
    "Ours": Method("Ours", _ours, explains_errors=True),
    "Random": Method("Random", _random),
}


def register_method(method: Method) -> None:
    """Make an estimator available to the pipeline under ``method.name``."""
    METHODS[method.name] = method


# ---------------------------------------------------------------------------- bookkeeping
@dataclass
class OutputFolder:
    """The checked output folder of a run: its paths, the lock this process holds on it, and
    whether this run created its manifest (a run that fails before any training then leaves the
    folder as it found it)."""

    paths: RunPaths
    lock: FolderLock
    created: bool
    made_dir: bool = False
    started: bool = False  # set when the first task starts: from then on a failure keeps the folder

    def close(self, failed: bool) -> None:
        """Release the lock; after a failed first run that started no task, remove what it wrote."""
        root = self.paths.root
        undo = failed and self.created and not self.started
        if undo:
            remove_outputs(root, SCOPES["train"])
            self.paths.manifest.unlink(missing_ok=True)
        self.lock.release()
        if undo:
            (root / LOCK).unlink(missing_ok=True)
            if self.made_dir and not any(root.iterdir()):
                root.rmdir()


def prepare_output(cfg: RunConfig, overwrite: bool) -> OutputFolder:
    """Check (or start) the output folder: lock it, compare its manifest with ``cfg``'s settings
    (refuse other settings; with ``overwrite`` remove only the outputs the changed settings
    invalidate), and delete the temporary files a killed run left behind."""
    root = check_output_arg(cfg.out, overwrite)
    paths = RunPaths(root)
    wanted = cfg.manifest()
    created = made_dir = False
    if paths.manifest.is_file():
        lock = _lock(root)  # first: the folder may be in use by a running run
        try:
            old = read_manifest(paths.manifest)
            old = {**cfg.manifest_defaults(), **{k: wanted[k] for k in ADOPTED_IF_MISSING if k in wanted}, **old}
            diff = manifest_diff(old, wanted, paths.manifest)
            scopes = cfg.manifest_scopes()
            if diff and not overwrite:
                what = ", ".join(f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in diff.items())
                raise UserError(f"output folder {root} holds a run with other settings ({what}); use another -o "
                                f"or add --overwrite to recompute {_redo_text(diff, scopes)}")
            if diff:
                check_deletable(root, cfg.inputs())
                remove_outputs(root, lambda rel: any(scopes.get(k, SCOPES["train"])(rel) for k in diff))
        except BaseException:
            lock.release()
            raise
    elif root.exists() and any(root.iterdir()):
        raise UserError(f"output folder {root} is not empty and holds no manifest of this tool; "
                        f"choose a new or empty folder with -o (the tool never deletes files it did not write)")
    else:
        made_dir = not root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot write to output folder {root} ({exc.strerror}); choose another -o") from None
        lock, created = _lock(root), True
    try:
        write_manifest(paths.manifest, wanted)
    except OSError as exc:
        lock.release()
        raise UserError(f"cannot write to output folder {root} ({exc.strerror}); choose another -o") from None
    remove_stale_partials(root)  # temporary files of a killed run
    return OutputFolder(paths, lock, created, made_dir)


def _lock(root: Path) -> FolderLock:
    try:
        return FolderLock(root).acquire()
    except PermissionError as exc:
        raise UserError(f"cannot write to output folder {root} ({exc.strerror}); choose another -o") from None


def _redo_text(diff: dict, scopes: dict) -> str:
    """What --overwrite recomputes for these changed keys: the widest scope among them."""
    names = [next((n for n, s in SCOPES.items() if s is scopes.get(k, SCOPES["train"])), None) for k in diff]
    widest = next((n for n in SCOPES if n in names), None)
    if widest is not None:
        return SCOPE_TEXT[widest]
    return "the outputs of " + ", ".join(diff)


def _short(v) -> str:
    text = str(v)
    return text[:12] + "..." if len(text) > 15 else text


def load_noisy_trial_data(cfg: RunConfig, seed: int) -> Tuple[DataBundle, np.ndarray, np.ndarray]:
    """(data of trial ``seed`` with ``cfg.label_noise`` of its training labels flipped, noisy mask,
    training labels before flipping); validation and test are never flipped."""
    data = load_dataset(cfg.dataset, seed, data_dir=cfg.data_dir, n_train=cfg.n_train, n_val=cfg.n_val,
                        n_test=cfg.n_test, val_csv=cfg.val_csv, test_csv=cfg.test_csv)
    if cfg.train.batch_size > len(data.train):
        raise UserError(f"batch size {cfg.train.batch_size} is larger than the {len(data.train)} training "
                        f"samples; lower -bs")
    true_labels = data.train.labels
    data, noisy = apply_label_noise(data, cfg.label_noise, seed)
    return data, noisy, true_labels


def load_trial_data(cfg: RunConfig, seed: int) -> DataBundle:
    """The data trial ``seed`` trains on (label noise applied)."""
    return load_noisy_trial_data(cfg, seed)[0]


def write_timings(paths: RunPaths) -> None:
    """``summary/timings.csv``: every trial's ``logs/timings_seed_<k>.csv`` (complete files only)."""
    logs = [f for f in sorted((paths.root / "logs").glob("timings_seed_*.csv"))
            if re.fullmatch(r"timings_seed_\d+\.csv", f.name)]
    if logs:
        write_csv_atomic(paths.summary / "timings.csv", pd.concat([pd.read_csv(f) for f in logs], ignore_index=True))


class Timings:
    """Seconds per (stage, method) of one trial, kept in ``logs/timings_seed_<k>.csv``."""

    def __init__(self, paths: RunPaths, seed: int):
        self.path = paths.root / "logs" / f"timings_seed_{seed}.csv"
        self.seed = seed

    def add(self, stage: str, method: str, seconds: float) -> None:
        """Record (or replace) the row of (stage, method); rows written by others are kept."""
        rows = pd.read_csv(self.path, keep_default_na=False).to_dict("records") if self.path.is_file() else []
        rows = [r for r in rows if (r["stage"], r["method"]) != (stage, method)]
        rows.append({"stage": stage, "method": method, "seed": self.seed, "seconds": round(seconds, 3)})
        write_csv_atomic(self.path, pd.DataFrame(rows, columns=["stage", "method", "seed", "seconds"]))


def remove_list(cfg: RunConfig, n_train: int, log=print) -> List[int]:
    """The -r values below the training size (others skipped with a message, as the original)."""
    keep = sorted({int(n) for n in cfg.remove if int(n) < n_train})
    skipped = sorted({int(n) for n in cfg.remove if int(n) >= n_train})
    if skipped:
        log(f"note: skipping removal of {skipped} samples: not below the training size {n_train}")
    return keep


def check_cleanse(cfg: RunConfig, n_train: int) -> List[int]:
    """The --cleanse sizes, sorted; a UserError (before any training) when one is not below ``n_train``."""
    ns = sorted({int(n) for n in cfg.cleanse})
    bad = [n for n in ns if not 0 <= n < n_train]
    if bad:
        raise UserError(f"--cleanse {' '.join(map(str, bad))}: cannot remove that many of the {n_train} training "
                        f"samples; choose 0 <= N < {n_train}")
    return ns


# ---------------------------------------------------------------------------- tasks
# Each task function returns (value, timings) and does nothing when its output is complete; the
# graph of them (``graph.build_graph``) is the run. Trials are rebuilt from the output folder in
# each process (cached per process: estimators of one trial share its validation gradient).
_TRIALS: collections.OrderedDict[tuple, Trial] = collections.OrderedDict()


def trial_context(cfg: RunConfig, seed: int) -> Trial:
    """The trained trial ``seed`` (data, trace, final learner), built once per process."""
    paths = RunPaths(cfg.out)
    final = paths.params(seed, "final")
    key = (repr(cfg), seed, final.stat().st_mtime_ns if final.is_file() else None)
    if key not in _TRIALS:
        data, noisy, true_labels = load_noisy_trial_data(cfg, seed)
        trace, learner = load_training(cfg.train, data, paths, seed)
        _TRIALS[key] = Trial(cfg, seed, data, paths, trace, learner, noisy, true_labels)
        while len(_TRIALS) > 2:
            _TRIALS.popitem(last=False)
    return _TRIALS[key]


def planned_removals(cfg: RunConfig, n_train: Optional[int] = None, log=None) -> List[int]:
    """The -r values the run retrains for (below the training size)."""
    if n_train is None:
        n_train = len(load_trial_data(cfg, cfg.seeds[0]).train)
    return remove_list(cfg, n_train, log or (lambda *_: None))


def check_run(cfg: RunConfig, log=print) -> int:
    """Checks that need the data, made once before any task: returns the training size."""
    n_train = len(load_trial_data(cfg, cfg.seeds[0]).train)
    check_cleanse(cfg, n_train)
    ns = remove_list(cfg, n_train, log)
    if cfg.remove and not ns:
        raise UserError(f"every -r value ({' '.join(map(str, sorted(set(cfg.remove))))}) is at or above the "
                        f"{n_train} training samples; choose values below {n_train}")
    return n_train


def train_task(cfg: RunConfig, seed: int):
    """Training with trace of trial ``seed`` (and Hara's per-step cache when a method needs it)."""
    paths = RunPaths(cfg.out)
    data = load_trial_data(cfg, seed)
    hara = any(METHODS[m].needs_hara_cache for m in cfg.methods)
    steps_last = -(-len(data.train) // cfg.train.batch_size)
    if training_complete(paths, seed, hara, steps_last):
        return len(data.train), []
    t0 = time.time()
    try:
        train_with_trace(cfg.train, data, paths, seed, save_hara=hara, show_progress=cfg.show_progress)
    except BaseException:
        shutil.rmtree(paths.weights(seed), ignore_errors=True)  # keep nothing of a failed stage
        raise
    return len(data.train), [(seed, "train", "", time.time() - t0)]


def estimate_task(cfg: RunConfig, seed: int, name: str):
    """The influence CSV of method ``name`` for trial ``seed``."""
    paths = RunPaths(cfg.out)
    csv = paths.influence_csv(name, seed)
    if csv.is_file():
        return None, []
    trial = trial_context(cfg, seed)
    t0 = time.time()
    scores = METHODS[name].compute(trial)
    if not np.all(np.isfinite(scores)):
        raise UserError(f"{name} produced non-finite influence for seed {seed}; "
                        f"lower the learning rate (-lr) or check the training log")
    write_influence_csv(csv, influence_frame(trial.data.train.ids, trial.data.train.labels, scores,
                                             trial.noisy if cfg.label_noise > 0 else None))
    return None, [(seed, "infl", name, time.time() - t0)]


def _frames(cfg: RunConfig, seed: int, n_train: int) -> Dict[str, pd.DataFrame]:
    paths = RunPaths(cfg.out)
    return {m: read_influence_csv(paths.influence_csv(m, seed), n_train) for m in cfg.methods}


def trial_reports_task(cfg: RunConfig, seed: int):
    """Galleries, cleansed datasets and error explanations of trial ``seed``."""
    trial = trial_context(cfg, seed)
    n_train = len(trial.data.train)
    write_trial_reports(trial, _frames(cfg, seed, n_train), check_cleanse(cfg, n_train))
    timings = []
    for name in cfg.methods:
        m = METHODS[name]
        if cfg.explain_max > 0 and m.explains_errors:
            seconds = explain_trial(trial, m)
            if seconds is not None:
                timings.append((seed, "explain", name, seconds))
    return None, timings


def _validation_samples(cfg: RunConfig, seed: int) -> Tuple[Dict[str, np.ndarray], Optional[np.ndarray]]:
    n_train = len(load_trial_data(cfg, seed).train)
    estimators = {name: scores_by_position(f) for name, f in _frames(cfg, seed, n_train).items() if name != "Random"}
    if not estimators:
        return estimators, None
    return estimators, pick_validation_samples(estimators, cfg.validate, seed)


def _cached_repeat(paths: RunPaths, seed: int, r: int, samples: np.ndarray) -> Optional[np.ndarray]:
    f = _repeat_file(paths, seed, r)
    if not f.is_file():
        return None
    d = pd.read_csv(f)
    return d.actual.to_numpy() if np.array_equal(d.datasource_index.to_numpy(), samples) else None


def validation_repeat_task(cfg: RunConfig, seed: int, repeat: int):
    """Repeat ``repeat`` of the leave-one-out truth on the samples picked from the estimates (see
    ``validation_pairs_task``), kept in ``logs/validation_actual_seed_<k>_repeat_<r>.csv``."""
    paths = RunPaths(cfg.out)
    _, samples = _validation_samples(cfg, seed)
    if samples is None or _cached_repeat(paths, seed, repeat, samples) is not None:
        return None, []
    t0 = time.time()
    trial = trial_context(cfg, seed)
    actual = actual_influence(cfg.train, trial.data, paths, seed, trial.trace, samples, cfg.retrain_all, repeat,
                              show_progress=cfg.show_progress)
    write_csv_atomic(_repeat_file(paths, seed, repeat),
                     pd.DataFrame({"datasource_index": samples, "actual": actual}))
    return None, [(seed, "validate", f"repeat_{repeat}", time.time() - t0)]


def validation_pairs_task(cfg: RunConfig, seed: int):
    """Every method's estimate beside the actual leave-one-out change of the validation loss
    (counterfactual retraining of the last epoch, or of all epochs with -ra) on the samples picked
    by ``pick_validation_samples``, averaged over ``cfg.validate_repeats`` repeats (see
    ``actual_influence``): ``logs/validation_pairs_seed_<k>.csv``."""
    paths = RunPaths(cfg.out)
    out = paths.root / "logs" / f"validation_pairs_seed_{seed}.csv"
    repeats = max(1, cfg.validate_repeats)
    if out.is_file() and int(pd.read_csv(out, nrows=1).get("repeats", pd.Series([1])).iloc[0]) == repeats:
        return None, []
    estimators, samples = _validation_samples(cfg, seed)
    if samples is None:
        return None, []
    table = np.stack([_cached_repeat(paths, seed, r, samples) for r in range(repeats)])
    spread = table.std(axis=0, ddof=1) if repeats > 1 else np.full(len(samples), np.nan)
    rows = [pd.DataFrame({"method": name, "seed": seed, "datasource_index": samples, "estimate": s[samples],
                          "actual": table.mean(axis=0), "actual_sd": spread, "repeats": repeats})
            for name, s in estimators.items()]
    write_csv_atomic(out, pd.concat(rows, ignore_index=True))
    return None, []


def baseline_task(cfg: RunConfig, seed: int):
    """The retraining without removal (``No_Removal``, n = 0), shared by every method."""
    paths = RunPaths(cfg.out)
    base = paths.score_csv(analysis.NO_REMOVAL, 0, seed)
    if 0 not in planned_removals(cfg) or base.is_file():
        return None, []
    t0 = time.time()
    data = load_trial_data(cfg, seed)
    trace = load_trace(paths.trace(seed), len(data.train))
    rows = retrain_scores(cfg.train, data, paths, seed, trace, removal_mask(len(data.train), [], 0), cfg.retrain_all)
    write_csv_atomic(base, pd.DataFrame(rows, columns=SCORE_COLUMNS))
    return None, [(seed, "eval", analysis.NO_REMOVAL, time.time() - t0)]


def retrain_task(cfg: RunConfig, seed: int, name: str, n: int):
    """The scores after retraining trial ``seed`` without the ``n`` most harmful samples by ``name``."""
    paths = RunPaths(cfg.out)
    out = paths.score_csv(name, n, seed)
    if out.is_file():
        return None, []
    if n == 0:
        write_csv_atomic(out, read_score_csv(paths.score_csv(analysis.NO_REMOVAL, 0, seed)))
        return None, []
    t0 = time.time()
    data = load_trial_data(cfg, seed)
    trace = load_trace(paths.trace(seed), len(data.train))
    order = read_influence_csv(paths.influence_csv(name, seed), len(data.train))["datasource_index"].to_numpy()
    rows = retrain_scores(cfg.train, data, paths, seed, trace, removal_mask(len(data.train), order, n),
                          cfg.retrain_all)
    write_csv_atomic(out, pd.DataFrame(rows, columns=SCORE_COLUMNS))
    return None, [(seed, f"eval_n{n}", name, time.time() - t0)]


def run_reports_task(cfg: RunConfig, seeds: List[int]):
    """Summary, figures and tables of the whole run (``analysis.analyze``, ``write_run_reports``);
    ``summary/timings.csv`` is written by the process that records the timings, after every task."""
    paths = RunPaths(cfg.out)
    title = f"{cfg.dataset} / {cfg.train.model}, {len(seeds)} trial(s)"
    summary = analysis.analyze(paths, seeds, list(cfg.methods), title)
    write_run_reports(cfg, paths, len(load_trial_data(cfg, seeds[0]).train), title)
    return summary, []


def run_trial(cfg: RunConfig, seed: int, methods: Sequence[Method], log=print) -> int:
    """Every task of trial ``seed`` in this process, in graph order (resumable); returns the number
    of training samples."""
    from .graph import build_graph, run_sequential
    n_train = check_run(cfg, log)
    one = replace(cfg, first_seed=seed, n_trials=1, methods=tuple(m.name for m in methods))
    run_sequential(one, [t for t in build_graph(one, [seed], methods) if t.key != "run-reports"])
    return n_train


def write_trial_reports(trial: Trial, frames: Dict[str, pd.DataFrame], cleanse: Sequence[int]) -> None:
    """Per method (Random included, as a control): the harmful-sample gallery (``cfg.gallery`` images,
    0: none) and the cleansed datasets without the ``cleanse`` most harmful samples (sizes checked by
    ``check_cleanse``). Existing files are kept."""
    cfg, seed, paths = trial.cfg, trial.seed, trial.paths
    true_labels = trial.true_labels if cfg.label_noise > 0 else None
    roots = report.image_roots(cfg.dataset, cfg.val_csv, cfg.test_csv)
    for name, frame in frames.items():
        path = report.gallery_path(paths.root, name, seed)
        if cfg.gallery > 0 and not (path.is_file() or path.with_suffix(".csv").is_file()):
            what = "Random (control: a random order, not an influence)" if name == "Random" else name.replace("_", " ")
            title = f"{what}: {cfg.dataset} / {cfg.train.model}, seed {seed}{_noise_text(cfg)}"
            report.harmful_gallery(trial.data, frame, path, n=cfg.gallery, title=title, true_labels=true_labels)
        for n in cleanse:
            report.write_cleansed_csv(trial.data, frame, n, paths.root, roots, method=name, seed=seed)


def explain_trial(trial: Trial, method: Method) -> Optional[float]:
    """``summary/explain_errors_<method>_<seed>.csv`` and ``fig/explain_errors_<method>_<seed>.png``:
    the first ``cfg.explain_max`` misclassified test images and their ``cfg.explain_k`` most
    influential training images by ``method`` (one influence recursion per image); returns the
    seconds it took (None when both files existed)."""
    cfg, seed, paths = trial.cfg, trial.seed, trial.paths
    csv = paths.summary / f"explain_errors_{method.name}_{seed}.csv"
    png = paths.fig / f"explain_errors_{method.name}_{seed}.png"
    if csv.is_file() and png.is_file():
        return None
    t0 = time.time()
    table = explain_errors(trial, method.compute, cfg.explain_k, cfg.explain_max, cfg.explain_same_label)
    write_csv_atomic(csv, table)
    title = f"{method.name}: {cfg.dataset} / {cfg.train.model}, seed {seed}{_noise_text(cfg)}"
    plot_explanations(table, trial.data, png, title, SGD_FORMULA)
    return time.time() - t0


def write_run_reports(cfg: RunConfig, paths: RunPaths, n_train: int, title: str) -> None:
    """``summary/cache_table.csv`` (the paper's Table 1 for this run's setting, beside the measured
    ``cache_size.csv``) and, with label noise, ``summary/detection.csv`` and ``fig/detection.png``."""
    seeds = cfg.seeds
    measured = pd.read_csv(paths.summary / "cache_size.csv")
    report.write_cache_table(paths.root, paths.params(seeds[0], "final"), cfg.dataset, n_train,
                             cfg.train.batch_size, cfg.train.epochs, measured=measured)
    if cfg.label_noise > 0:
        frames = report.collect_detection_frames(paths.root, list(cfg.methods), seeds)
        if frames:
            report.write_detection(paths.root, frames, title + _noise_text(cfg))


def _noise_text(cfg: RunConfig) -> str:
    return f", {100 * cfg.label_noise:g}% of training labels flipped" if cfg.label_noise > 0 else ""


def _repeat_file(paths: RunPaths, seed: int, repeat: int):
    return paths.root / "logs" / f"validation_actual_seed_{seed}_repeat_{repeat}.csv"


def run(cfg: RunConfig, overwrite: bool = False) -> pd.DataFrame:
    """Run the task graph of every trial (in this process, or on ``cfg.jobs`` local Dask workers, or on the
    cluster of ``cfg.scheduler``), then the analysis and the run's reports."""
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    check_fraction(cfg.label_noise)
    if cfg.gallery < 0:
        raise UserError(f"gallery size must not be negative, got {cfg.gallery}")
    folder = prepare_output(cfg, overwrite)
    failed = True
    try:
        summary = _run_trials(cfg, folder)
        write_timings(folder.paths)
        failed = False
    finally:
        folder.close(failed)
    return summary


def _run_trials(cfg: RunConfig, folder: OutputFolder) -> pd.DataFrame:
    from .graph import build_graph, run_dask, run_sequential
    check_run(cfg)
    folder.started = True
    methods = [METHODS[m] for m in cfg.methods]
    if cfg.scheduler or cfg.jobs > 1:  # one progress bar over the tasks, none inside them
        return run_dask(cfg, build_graph(replace(cfg, show_progress=False), cfg.seeds, methods), cfg.jobs,
                        cfg.scheduler)
    tasks = build_graph(cfg, cfg.seeds, methods)
    from common.context import set_context
    set_context(cfg.context, cfg.device_id)
    return run_sequential(cfg, tasks)
