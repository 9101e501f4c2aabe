"""The core settings of a run, each declared once: its group field (the dataclasses below; the
training's are ``cleansing.train.TrainConfig``) and its ``Setting`` in ``SETTINGS``, which carries
the command-line flag, help, type/choices, manifest key and scope (the outputs a change of it
invalidates, ``cleansing.outdir.SCOPES``). The drivers' parser (``add_arguments``), the parsed
settings (``values_from_args``), the manifest and its scopes (``RunConfig.manifest``,
``RunConfig.manifest_scopes``) are generated from them, as the estimators' options are from their
``Options`` fields (``cleansing.estimator``). Rules for manifests written by older versions:
``cleansing.compat``.

Adding a setting (README, "Adding a setting"): a field in its group below and a ``Setting`` of the
same name in ``SETTINGS`` (its place there is its place in ``--help``).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from common.errors import UserError

from .estimator import nonneg_int, positive_float, positive_int
from .outdir import SCOPES

DEFAULT_REMOVE = (0, 1, 10, 40, 100, 200, 600, 1000, 3000, 5000, 10000, 30000)


# ---------------------------------------------------------------------------- groups
@dataclass(frozen=True)
class DataConfig:
    """Which samples: a built-in dataset name or an NNC train CSV (``val_csv``/``test_csv``
    beside it by default), the first ``n_*`` of each seeded split, and label noise."""

    dataset: str = "digits"
    data_dir: Optional[str] = None
    n_train: Optional[int] = None
    n_val: Optional[int] = None
    n_test: Optional[int] = None
    val_csv: Optional[str] = None
    test_csv: Optional[str] = None
    label_noise: float = 0.0


@dataclass(frozen=True)
class RemovalConfig:
    """Which retrainings: the numbers of most harmful samples removed (``-r``), retraining every
    epoch (``retrain_all``) or the last, the leave-one-out validation (``--validate``) and the
    linear datamodeling score (``--lds``: ``cleansing.lds``)."""

    remove: Sequence[int] = DEFAULT_REMOVE
    retrain_all: bool = False
    validate: int = 0
    validate_repeats: int = 1
    lds: int = 0
    lds_fraction: float = 0.5
    lds_retrain: Optional[str] = None
    lds_seeds: str = "same"
    lds_targets: int = 0

    @property
    def lds_retrain_mode(self) -> str:
        """``--lds-retrain`` resolved: as ``-ra`` unless given."""
        return self.lds_retrain or ("full" if self.retrain_all else "last-epoch")


@dataclass(frozen=True)
class ReportConfig:
    """Which reports: harmful galleries, cleansed datasets, explained test errors, the models as
    ``.nnp`` files (``save_nnp``)."""

    gallery: int = 32
    cleanse: Sequence[int] = ()
    explain_k: int = 5
    explain_max: int = 0
    explain_same_label: bool = False
    save_nnp: bool = False


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the run executes (no effect on any result)."""

    out: str = "output_sgd_influence"
    context: Optional[str] = None
    device_id: int = 0
    jobs: int = 1
    scheduler: Optional[str] = None
    show_progress: bool = True


# ---------------------------------------------------------------------------- flag types
def output_folder(text: str) -> str:
    """A non-empty -o value."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty; give an output folder")
    return text


def fraction(text: str) -> float:
    """A label-noise fraction in [0, 1)."""
    from datasets.noise import check_fraction
    try:
        return check_fraction(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def model_name(text: str) -> str:
    """A -m value: a registered network (``models.MODELS``), or the path of an existing .nnp file (made
    absolute, so that the manifest and every worker name the same file)."""
    from models import MODELS
    if text in MODELS:
        return text
    from models.nnp import check_nnp_file, is_nnp_path
    if not is_nnp_path(text) and not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(MODELS)}, or give "
                                         f"the path of an .nnp file)")
    try:
        check_nnp_file(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return os.path.abspath(text)


def cores() -> int:
    """The number of cores (the command line's default of ``-j``)."""
    return os.cpu_count() or 1


# ---------------------------------------------------------------------------- scopes of reports
def gallery_outputs(rel: PurePosixPath) -> bool:
    """The harmful-sample galleries (``fig/harmful_*``)."""
    return rel.name.startswith("harmful_")


def explained_errors(rel: PurePosixPath) -> bool:
    """The explained test errors (``fig/`` and ``summary/explain_errors*``)."""
    return rel.name.startswith("explain_errors")


# ---------------------------------------------------------------------------- declarations
#: ``Setting.default``: take the group field's default
FIELD = object()
#: ``Setting.manifest``: record the value as it is
AS_IS: Callable[[Any], Any] = lambda v: v  # noqa: E731


@dataclass(frozen=True)
class Setting:
    """One core setting: ``name`` is its group field (a ``make_config`` keyword) and manifest key.

    ``flags``/``help``/``type``/``choices``/``nargs``/``metavar``/``section`` (argument group
    title): its command-line flag (``dest``: the argparse name when not ``name``); ``switch``: a
    ``store_true`` flag, ``invert``: one that sets the setting False (``--no-augment``); ``path``: the
    value is made absolute; ``default``: the flag's default (``FIELD``: the field's; a callable: its
    result; the drivers may override it). ``manifest``: how the value is recorded (None: not
    recorded: it changes no result); ``scope``: the outputs a change invalidates (a ``SCOPES`` name
    or a predicate on output paths). ``derived``: a manifest key the run computes (a fingerprint),
    no field and no flag. ``setting=False``: a flag of the command, not of the run (``--debug``).
    """

    name: str
    flags: Tuple[str, ...] = ()
    help: Optional[str] = None
    type: Optional[Callable] = None
    choices: Optional[Callable[[], Sequence]] = None
    nargs: Optional[str] = None
    metavar: Optional[str] = None
    dest: Optional[str] = None
    switch: bool = False
    invert: bool = False
    path: bool = False
    default: Any = FIELD
    section: Optional[str] = None
    manifest: Optional[Callable[[Any], Any]] = None
    scope: Union[str, Callable[[PurePosixPath], bool], None] = None
    derived: bool = False
    setting: bool = True

    @property
    def arg_name(self) -> str:
        """The attribute of the parsed arguments."""
        if self.dest:
            return self.dest
        return self.flags[-1].lstrip("-").replace("-", "_")

    def scope_of(self) -> Optional[Callable[[PurePosixPath], bool]]:
        """The predicate of the outputs a change invalidates (``SCOPES``' own object for a name)."""
        return SCOPES[self.scope] if isinstance(self.scope, str) else self.scope


EXPLAIN = "explaining test errors (paper of turn-over dropout, Fig. 5)"
LDS = ("linear datamodeling score (LDS; Park et al. 2023): summary/lds.csv, fig/lds_<Method>.png; each "
       "setting's retrainings are kept under its own name in logs/, so no setting here invalidates anything")

#: Every core setting, in the order of ``--help`` (the drivers then add ``--methods`` and the
#: estimators' options).
SETTINGS: Tuple[Setting, ...] = (
    Setting("out", ("-o", "--output"), "output folder (default: %(default)s)", type=output_folder, path=True),
    Setting("dataset", ("-ds", "--dataset"),
            "digits (embedded), mnist, cifar10, stl10, or a path to an NNC train CSV",
            manifest=AS_IS, scope="train"),
    Setting("model", ("-m", "--model"), "cnn6 (the paper's network, default), logreg or mlp (fast checks), or "
            "the path of a Neural Network Console model file (.nnp; see the README)", type=model_name,
            manifest=AS_IS, scope="train"),
    Setting("nnp_weights", ("--nnp-weights",), "with -m FILE.nnp: start every trial from the file's parameter "
            "values (default: fresh parameters per trial seed, nnabla's default initialisers on the file's shapes)",
            switch=True, manifest=bool, scope="train"),
    Setting("epochs", ("-e", "--epochs"), "training epochs (default 20)", type=positive_int, manifest=AS_IS,
            scope="train"),
    Setting("batch_size", ("-bs", "--batch-size"), "mini-batch size (default 32)", type=positive_int,
            manifest=AS_IS, scope="train"),
    Setting("lr", ("-lr", "--learning-rate"), "SGD learning rate (default 0.05)", type=positive_float,
            manifest=AS_IS, scope="train"),
    Setting("n_trials", ("-nt", "--n-trials"), "trials; trial k uses seed k (default 1)", type=positive_int),
    Setting("remove", ("-r", "--remove"),
            "numbers of most harmful samples to remove and retrain (default: %(default)s)",
            type=nonneg_int, nargs="+"),
    Setting("retrain_all", ("-ra", "--retrain-all"),
            "retrain every epoch from the initial parameters (default: the last epoch only)",
            switch=True, manifest=bool, scope="eval"),
    Setting("context", ("-c", "--context"),
            "nnabla context (default: cudnn when nnabla-ext-cuda is installed, else cpu)",
            choices=lambda: ["cpu", "cudnn"]),
    Setting("device_id", ("-di", "--device-id"), "GPU device id (default 0)", type=nonneg_int),
    Setting("jobs", ("-j", "--jobs"),
            "Dask worker processes of the local cluster that runs the tasks (training, each "
            "estimator, each retraining, each validation repeat; default: number of cores); "
            "1: every task in this process, no cluster; more than the cores this process may "
            "run on: capped at that number, with a warning", type=positive_int, default=cores),
    Setting("scheduler", ("--scheduler",),
            "run the tasks on an existing Dask cluster (e.g. tcp://host:8786) whose workers "
            "share the output folder, instead of a local one", metavar="ADDRESS"),
    Setting("data_dir", ("--data-dir",), "folder that already holds the dataset's files (default: "
            "$DATA_CLEANSING_DATA_DIR, then the usual cache folders)", path=True),
    Setting("n_train", ("--n-train",), "use the first N samples of the seeded training split", type=positive_int,
            manifest=AS_IS, scope="train"),
    Setting("n_val", ("--n-val",), "use the first N samples of the validation split", type=positive_int,
            manifest=AS_IS, scope="influence"),
    Setting("n_test", ("--n-test",), "use the first N test samples", type=positive_int, manifest=AS_IS,
            scope="eval"),
    Setting("val_csv", ("--val-csv",), "own data: validation CSV (default: beside the train CSV)"),
    Setting("test_csv", ("--test-csv",), "own data: test CSV (default: beside the train CSV)"),
    Setting("validate", ("--validate",),
            "after the influence stage, compare each estimate with actual leave-one-out retraining "
            "on about K samples (K/3 most negative, most positive, random per method)",
            type=nonneg_int, metavar="K"),
    Setting("validate_repeats", ("--validate-repeats",),
            "average each actual change over R retrainings: the exact replay and R-1 replays "
            "from parameters nudged at float32 rounding level, which averages out the rounding "
            "noise training amplifies (R times the retraining cost; -j runs repeats in parallel; "
            "default 1)", type=positive_int, metavar="R"),
    Setting("lds", ("--lds",),
            "for every method, M random subsets of the training set (the same for every method), each "
            "retrained once without the samples it leaves out: the Spearman and Pearson correlation "
            "between the actual change of the mean validation loss and the sum of the left-out samples' "
            "influences (0: none, the default; at least 2)", type=nonneg_int, metavar="M", section=LDS),
    Setting("lds_fraction", ("--lds-fraction",), "fraction of the training set each LDS subset keeps "
            "(default 0.5)", type=positive_float, metavar="ALPHA", section=LDS),
    Setting("lds_retrain", ("--lds-retrain",), "LDS retraining: last-epoch or full (default: as -ra)",
            choices=lambda: ["last-epoch", "full"], section=LDS),
    Setting("lds_seeds", ("--lds-seeds",), "LDS counterfactual: same (default): replay the run's seed and "
            "batch order without the left-out samples, what Hara's and this paper's SGD-influence estimate; "
            "fresh: each subset its own initialisation (with full) and batch order, TRAK's and dattri's protocol",
            choices=lambda: ["same", "fresh"], section=LDS),
    Setting("lds_targets", ("--lds-targets",), "LDS per test image: the first K test images each as its own "
            "target (every method's influence on that image's loss against its actual change), the LDS the "
            "mean over them of the per-target Spearman (default 0: the mean validation loss is the one target)",
            type=nonneg_int, metavar="K", section=LDS),
    Setting("label_noise", ("--label-noise",),
            "flip this fraction of each trial's training labels (seeded, each to another class; "
            "validation and test untouched); influence CSVs get a 'noisy' column and the run "
            "summary/detection.csv and fig/detection.png (default 0)", type=fraction, metavar="FRACTION",
            manifest=float, scope="train"),
    Setting("gallery", ("--gallery",),
            "fig/harmful_<method>_seed<k>.png: the N most harmful training images per method "
            "and trial (a CSV above 100; 0: none; default 32)", type=nonneg_int, metavar="N",
            manifest=int, scope=gallery_outputs),
    Setting("cleanse", ("--cleanse",),
            "write cleansed/<method>_seed<k>_remove<N>.csv: the training set without the N most "
            "harmful samples, as NNC CSV (with the trial's validation and test CSVs beside it)",
            type=nonneg_int, nargs="+", metavar="N"),
    Setting("save_nnp", ("--save-nnp",),
            "also write the trained model weights/seed_<k>/final.nnp and each retrained model of -r N>0 "
            "score/<method>/model_delete_worst_<N>_seed_<k>.nnp as Neural Network Console .nnp files (a runtime "
            "executor on 0..255 pixel values, as NNC and nnabla's NnpLoader run it)", switch=True),
    Setting("explain_max", ("--explain-max",),
            "explain the first N misclassified test images per trial by their most influential "
            "training images: fig/ and summary/explain_errors_*; Hara and Ours run one influence "
            "recursion per image (default %(default)s; 0: none)", type=nonneg_int, metavar="N", section=EXPLAIN,
            manifest=int, scope=explained_errors),
    Setting("explain_k", ("--explain-k",), "training images shown per misclassified test image (default 5)",
            type=positive_int, metavar="N", section=EXPLAIN, manifest=int, scope=explained_errors),
    Setting("explain_same_label", ("--explain-same-label",),
            "explain errors only by training images labelled as the wrong class (as the paper's figures)",
            switch=True, section=EXPLAIN, manifest=bool, scope=explained_errors),
    Setting("augment", ("--no-augment",), "train without random crop and flip", switch=True, invert=True,
            manifest=AS_IS, scope="train"),
    Setting("overwrite", ("--overwrite",),
            "when the folder's settings differ, recompute what the changed settings invalidate "
            "(deletes only files this tool wrote)", switch=True, setting=False),
    Setting("show_progress", ("--no-progress",), "no progress bars", switch=True, invert=True),
    Setting("debug", ("--debug",), "show tracebacks", switch=True, setting=False),
    # recorded facts: the content fingerprints of own data and of a network registered from Python
    Setting("train_data", manifest=AS_IS, scope="train", derived=True),
    Setting("val_data", manifest=AS_IS, scope="influence", derived=True),
    Setting("test_data", manifest=AS_IS, scope="eval", derived=True),
    Setting("model_fingerprint", manifest=AS_IS, scope="train", derived=True),
)


def settings() -> Tuple[Setting, ...]:
    """``SETTINGS`` as it is now (read at each call, so that a test may extend it)."""
    return SETTINGS


def add_arguments(parser: argparse.ArgumentParser, defaults: Mapping[str, Any],
                  overrides: Optional[Mapping[str, Any]] = None) -> None:
    """Add the flag of every core setting to ``parser``, in ``SETTINGS`` order; ``defaults``: the
    fields' defaults by name (``config.field_defaults``), ``overrides``: a driver's own defaults."""
    overrides = overrides or {}
    groups: Dict[str, Any] = {}
    for s in settings():
        if not s.flags:
            continue
        target = parser
        if s.section is not None:
            if s.section not in groups:
                groups[s.section] = parser.add_argument_group(s.section)
            target = groups[s.section]
        kwargs: Dict[str, Any] = {"help": s.help}
        if s.dest:
            kwargs["dest"] = s.dest
        if s.switch:
            target.add_argument(*s.flags, action="store_true", **kwargs)
            continue
        if s.name in overrides:
            default = overrides[s.name]
        elif s.default is FIELD:
            default = defaults.get(s.name)
        else:
            default = s.default() if callable(s.default) else s.default
        kwargs["default"] = list(default) if isinstance(default, tuple) else default
        for key in ("type", "nargs", "metavar"):
            if getattr(s, key) is not None:
                kwargs[key] = getattr(s, key)
        if s.choices is not None:
            kwargs["choices"] = list(s.choices())
        target.add_argument(*s.flags, **kwargs)


def values_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The settings parsed flags give, by name (``make_config`` keywords)."""
    values: Dict[str, Any] = {}
    for s in settings():
        if not s.flags or not s.setting:
            continue
        v = getattr(args, s.arg_name)
        if s.invert:
            v = not v
        if s.path:
            v = v and os.path.abspath(v)
        values[s.name] = v
    return values


def recorded(values: Mapping[str, Any]) -> Dict[str, Any]:
    """The manifest entries of the core settings among ``values`` (by name), in ``SETTINGS`` order."""
    return {s.name: s.manifest(values[s.name]) for s in settings()
            if s.manifest is not None and s.name in values}


def scopes() -> Dict[str, Callable[[PurePosixPath], bool]]:
    """Manifest key -> the outputs a change of it invalidates, for every recorded core setting."""
    return {s.name: s.scope_of() for s in settings() if s.manifest is not None and s.scope is not None}

