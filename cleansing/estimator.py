"""The estimator interface: what an influence estimator gives the pipeline and what it gets back.

An estimator is pure computation. It reads a trained ``Trial`` and returns an ``Estimate`` (one
score per training sample plus tables and figures as objects); the pipeline writes every file,
resumes, times and schedules. Sign convention (docs/SPEC.md section 2): a score approximates the
change of the mean validation loss when the sample is removed, divided by nothing else: negative
means harmful (removing it lowers the loss), and the lowest scores are removed first.

An estimator declares

* ``name``: its folder and CSV name, and its ``--methods`` value; ``ranks``: what its number ranks
  by, in one line (the drivers' help lists it);
* ``options``: an ``Options`` dataclass (shared by a family of estimators) whose fields become one
  argument group of every driver (``--field-name``) and keys of the run manifest;
* ``needs_step_params``: the training must keep the per-step parameters of its last epoch
  (Hara et al.'s cache); ``needs_epoch_params``: it must keep the parameters after every epoch
  (``Trial.epoch_params``: TracIn's checkpoints); ``artefacts(trial, options)``: further trained
  objects it needs (e.g. a turn-over-dropout network), each a task of its own whose parameters the pipeline stores;
* ``needs_validation_grad``: it reads ``trial.u`` (computed once per trial, before it);
* ``after``: estimators whose scores it reuses (they run first);
* ``explain(trial, options, max_errors)`` with ``explains_errors = True`` when it can explain test
  errors, and ``control`` for a
  baseline that is not an estimate (Random: compared against, never validated);
* ``summary_logs``: its per-trial logs that the run's reports gather into one summary table, and
  ``run_tables(facts)``: tables of the whole run (e.g. SGD-influence's Table 1 of cache sizes).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from common.errors import UserError


@dataclass
class Estimate:
    """What an estimator returns for one trial.

    ``scores``: one value per training sample, in training-set order (negative = harmful).
    ``tables``: name -> frame, written to ``summary/<name>_<seed>.csv``; ``figures``: name ->
    matplotlib figure, written to ``fig/<name>_<seed>.png``; ``logs``: name -> frame, written to
    ``logs/<name>_seed_<seed>.csv``.
    """

    scores: np.ndarray
    tables: Dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: Dict[str, Any] = field(default_factory=dict)
    logs: Dict[str, pd.DataFrame] = field(default_factory=dict)


@dataclass
class Explanation:
    """Influence of every training sample towards the wrong prediction of some test images:
    ``wrong`` test positions, ``preds`` every test image's predicted class, ``influence``
    (n_train, len(wrong)), positive = the sample pushes towards the error; ``formula`` says what
    the number means (printed on the figure)."""

    wrong: np.ndarray
    preds: np.ndarray
    influence: np.ndarray
    formula: str


@dataclass
class Trained:
    """A trained artefact: parameters (name -> array), the ``config`` that identifies it (a stored
    artefact with another config is trained again) and its training ``log``."""

    params: Dict[str, np.ndarray]
    config: dict
    log: pd.DataFrame


@dataclass(frozen=True)
class RunSettings:
    """The settings an estimator may read (``Trial.settings``, and the ``run`` argument of
    ``Options.check``/``Options.manifest`` and ``Estimator.artefacts``), never the whole run
    configuration. ``train``: the training's settings (network, epochs, batch, lr, augmentation),
    for estimators that train a network of their own."""

    dataset: str
    model: str
    epochs: int
    batch_size: int
    lr: float
    augment: bool
    label_noise: float
    show_progress: bool
    train: Any

    @classmethod
    def of(cls, cfg: Any) -> RunSettings:
        """The settings of a run configuration (``cleansing.config.RunConfig``)."""
        t = cfg.train
        return cls(cfg.data.dataset, t.model, t.epochs, t.batch_size, t.lr, t.augment, cfg.data.label_noise,
                   cfg.runtime.show_progress, t)


@dataclass(frozen=True)
class RunFacts:
    """What an estimator's run-level tables may draw on: the setting, the size of one parameter
    file (``param_file_bytes``) and the measured caches (``cache_sizes``: method, seed, files, bytes)."""

    dataset: str
    n_train: int
    batch_size: int
    epochs: int
    param_file_bytes: int
    cache_sizes: pd.DataFrame


@dataclass(frozen=True)
class Artefact:
    """A trained object an estimator needs beside the trial's training, stored by the pipeline
    under ``weights/seed_NN/<name>/`` (one task per artefact and trial, shared by every estimator
    that names it).

    ``config(trial) -> dict``: identifies it (compared with the stored one); ``train(trial) -> Trained``;
    ``report(trial, trained) -> (tables, figures)``: checks drawn once it exists, named in advance by
    ``report_names`` (written to ``summary/`` and ``fig/`` as ``Estimate``'s; not redrawn while
    they exist).
    """

    name: str
    config: Callable[[Any], dict]
    train: Callable[[Any], Trained]
    report: Optional[Callable[[Any, Trained], Tuple[Dict[str, pd.DataFrame], Dict[str, Any]]]] = None
    report_names: Tuple[Tuple[str, ...], Tuple[str, ...]] = ((), ())  # (table stems, figure stems)


# ---------------------------------------------------------------------------- options
def option(default: Any, help: str, *, type: Optional[Callable] = None, choices: Optional[Sequence] = None,
           nargs: Optional[str] = None, metavar: Optional[str] = None) -> Any:
    """A field of an ``Options`` dataclass: its default and the argparse details of ``--<name>``."""
    meta = {"help": help, "type": type, "choices": choices, "nargs": nargs, "metavar": metavar}
    return field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


@dataclass(frozen=True)
class Options:
    """Options of a family of estimators: each field is a flag ``--<field-name>`` and a manifest key.

    ``title``: the argument group's title. ``manifest_defaults``: values of keys that manifests
    written before the key existed lack (others are taken as today's value: the estimator never
    ran there). ``weights_tag``: prefix of the artefact folders the options invalidate.
    ``title``, ``manifest_defaults``, ``weights_tag`` and ``scopes`` are class attributes.
    """

    title: ClassVar[str] = ""
    manifest_defaults: ClassVar[Dict[str, Any]] = {}
    weights_tag: ClassVar[Optional[str]] = None
    #: manifest key -> the outputs it invalidates, where narrower than all of the family's outputs
    scopes: ClassVar[Dict[str, Callable]] = {}

    def manifest(self, run: RunSettings) -> Dict[str, Any]:
        """The manifest keys of these options for ``run`` (override to record resolved values)."""
        return dataclasses.asdict(self)

    def check(self, run: RunSettings) -> None:
        """Raise a UserError when the options do not fit ``run`` (called before any task)."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(cls.title or cls.__name__)
        for f in dataclasses.fields(cls):
            meta = dict(f.metadata)
            kwargs = {k: meta[k] for k in ("type", "choices", "nargs", "metavar") if k in meta}
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
            if isinstance(default, bool) and "type" not in kwargs:
                group.add_argument(_flag(f.name), action="store_true", dest=f.name, help=meta.get("help"))
                continue
            if isinstance(default, tuple):
                default = list(default)
            group.add_argument(_flag(f.name), dest=f.name, default=default, help=meta.get("help"), **kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        values = {}
        for f in dataclasses.fields(cls):
            v = getattr(args, f.name)
            values[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**values)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ---------------------------------------------------------------------------- flag types
# The argument types of options (``option(..., type=positive_int)``) and of the drivers' own flags.
def _integer(text: str, low: int, what: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"{v} {what}")
    return v


def positive_int(text: str) -> int:
    return _integer(text, 1, "must be at least 1")


def nonneg_int(text: str) -> int:
    return _integer(text, 0, "must not be negative")


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return v


# ---------------------------------------------------------------------------- estimators
class Estimator:
    """Base class of an influence estimator (see the module docstring)."""

    name: str = ""
    #: what its number ranks by, in one line (the drivers' list of methods)
    ranks: str = ""
    options: Optional[type] = None
    needs_step_params: bool = False
    #: True: the training keeps the parameters after every epoch (``Trial.epoch_params``), which it
    #: otherwise deletes once the last epoch is trained
    needs_epoch_params: bool = False
    #: False: ``estimate`` reads only ``trial.data`` and ``trial.seed`` (``trial.trace`` and
    #: ``trial.learner`` are None) and may run beside the training (the Random control)
    needs_final_model: bool = True
    #: True: ``estimate`` reads ``trial.u`` (and ``trial.u_stats``); a task of their own computes them
    #: once per trial for every such estimator, which then reads them from the trial's folder
    needs_validation_grad: bool = False
    after: Tuple[str, ...] = ()
    control: bool = False
    #: the estimate task's expected cost in training epochs (weighs the run's progress bar only)
    cost_epochs: float = 3.0
    #: log stem -> summary table: ``logs/<stem>_seed_<k>.csv`` of every trial gathered into
    #: ``summary/<table>.csv`` by the run's reports (e.g. the solvers' reports)
    summary_logs: Dict[str, str] = {}

    #: True: ``explain`` explains test errors (``--explain-max``); a capability declared, not inferred
    explains_errors: bool = False
    #: True: the scores do not depend on the validation set (the free rankings, the self-influences,
    #: Random), so ``estimate_targets`` estimates once for every target
    target_free: bool = False

    def artefacts(self, cfg: RunSettings, options: Optional[Options]) -> List[Artefact]:
        """Trained objects beside each trial's training that ``estimate`` reads (``trial.artefact``)."""
        return []

    def estimate(self, trial: Any, options: Optional[Options]) -> Estimate:
        raise NotImplementedError

    def estimate_targets(self, targets: Sequence[Any], options: Optional[Options]) -> np.ndarray:
        """(n_train, K): the scores with each of the K ``targets`` as the run's target: the trial with
        one test image as its whole validation set (``Trial.with_validation``), as ``--lds-targets``
        asks. By default one ``estimate`` per target (one in all when ``target_free``); an estimator
        whose work is shared between targets overrides it, with the same numbers."""
        if self.target_free:
            scores = np.asarray(self.estimate(targets[0], options).scores, np.float64)
            return np.repeat(scores[:, None], len(targets), axis=1)
        return np.stack([np.asarray(self.estimate(t, options).scores, np.float64) for t in targets], axis=1)

    def run_tables(self, facts: RunFacts) -> Dict[str, pd.DataFrame]:
        """Tables of the whole run (name -> frame, written to ``summary/<name>.csv``; estimators
        that return the same name return the same table)."""
        return {}

    def explain(self, trial: Any, options: Optional[Options], max_errors: int) -> Explanation:
        """The influence of every training sample towards the first ``max_errors`` test errors."""
        raise NotImplementedError


class Registry:
    """The estimators a run may use, by name, in registration order (one explicit list)."""

    def __init__(self, estimators: Iterable[Estimator] = ()):
        self._by_name: Dict[str, Estimator] = {}
        for e in estimators:
            self.register(e)

    def register(self, estimator: Estimator) -> Estimator:
        if not estimator.name or estimator.name in self._by_name:
            raise ValueError(f"estimator name {estimator.name!r} is empty or registered twice")
        if estimator.options is not None and not (dataclasses.is_dataclass(estimator.options)
                                                  and issubclass(estimator.options, Options)):
            raise TypeError(f"{estimator.name}: options must be an Options dataclass")
        self._by_name[estimator.name] = estimator
        return estimator

    def unregister(self, name: str) -> None:
        self._by_name.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Estimator]:
        return iter(list(self._by_name.values()))

    def __getitem__(self, name: str) -> Estimator:
        return self._by_name[name]

    @property
    def names(self) -> List[str]:
        return list(self._by_name)

    def option_types(self, names: Optional[Iterable[str]] = None) -> List[type]:
        """The distinct options classes of the named estimators (all when None), in registration order."""
        chosen = self.names if names is None else list(names)
        seen: List[type] = []
        for e in self:
            if e.name in chosen and e.options is not None and e.options not in seen:
                seen.append(e.options)
        return seen

    def check_methods(self, methods: Sequence[str]) -> None:
        unknown = [m for m in methods if m not in self._by_name]
        if unknown:
            raise UserError(f"unknown method(s) {' '.join(unknown)}; choose from {', '.join(self.names)}")
        for m in methods:
            missing = [a for a in self[m].after if a not in methods[:list(methods).index(m)]]
            if missing:
                raise UserError(f"{m} reuses the {' and '.join(missing)} scores: list {' '.join(missing)} "
                                f"before it in --methods")


# ---------------------------------------------------------------------------- what estimators may use
# The pipeline's pieces an estimator package may use, so that it imports ``cleansing.estimator`` and
# nothing else from ``cleansing`` (tests/test_architecture.py): the recorded training trace and the
# training step (to replay training), the training settings and a fresh learner (to train a network
# of its own), the misclassified test images (to explain errors), the scope of its own options.
from .explain import misclassified  # noqa: E402
from .outdir import method_scope  # noqa: E402
from .trace import Trace  # noqa: E402
from .train import TrainConfig, new_learner, run_steps  # noqa: E402

__all__ = ["Artefact", "Estimate", "Estimator", "Explanation", "Options", "Registry", "RunFacts", "RunSettings",
           "Trace", "TrainConfig", "Trained", "method_scope", "misclassified", "new_learner", "nonneg_int", "option",
           "positive_float", "positive_int", "run_steps"]
