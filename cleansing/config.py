"""The settings of a run, grouped by what they change: data, training, removal, reports, runtime,
plus the options of the estimators in use (``cleansing.estimator.Options``, one per family).

The core settings are declared in ``cleansing.settings`` (each with its flag, manifest key and
scope); ``manifest`` lists every setting that changes a result and ``manifest_scopes`` which
outputs a change of it invalidates (``cleansing.outdir.SCOPES``); runtime settings change no result.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from common.errors import UserError
from datasets.loader import input_fingerprints, input_paths
from datasets.noise import check_fraction

from . import compat, settings
from .estimator import Options, Registry, RunSettings
from .outdir import method_scope
from .settings import DEFAULT_REMOVE, DataConfig, RemovalConfig, ReportConfig, RuntimeConfig
from .train import TrainConfig

__all__ = ["DEFAULT_REMOVE", "DataConfig", "RemovalConfig", "ReportConfig", "RunConfig", "RuntimeConfig",
           "TrainConfig", "check_settings", "field_defaults", "field_values", "make_config"]


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs: trials ``first_seed`` .. ``first_seed + n_trials - 1``, the
    ``methods`` (registered estimator names, run in this order) and their ``options`` (options
    class name -> ``Options``; a missing entry means the defaults)."""

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    removal: RemovalConfig = field(default_factory=RemovalConfig)
    reports: ReportConfig = field(default_factory=ReportConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    methods: Sequence[str] = ()
    n_trials: int = 1
    first_seed: int = 0
    options: Dict[str, Options] = field(default_factory=dict)

    @property
    def seeds(self) -> List[int]:
        return list(range(self.first_seed, self.first_seed + self.n_trials))

    @property
    def out(self) -> str:
        return self.runtime.out

    def updated(self, registry: Optional[Registry] = None, **settings: Any) -> RunConfig:
        """A copy with flat settings changed (see ``make_config``): ``cfg.updated(jobs=2, epochs=3)``."""
        return make_config(registry, self, **settings)

    def option(self, kind: type) -> Options:
        """The options of class ``kind`` (its defaults unless set)."""
        return self.options.get(kind.__name__) or kind()

    def manifest(self, registry: Registry) -> dict:
        """Every setting that changes a result, with the content fingerprints of own CSV data and
        the options of the estimators in ``methods``."""
        d = self.data
        values = {**field_values(self),
                  **input_fingerprints(d.dataset, d.val_csv, d.test_csv, (d.n_train, d.n_val, d.n_test))}
        base = compat.ordered(settings.recorded(values))
        for kind in registry.option_types(self.methods):
            base.update(self.option(kind).manifest(RunSettings.of(self)))
        if not self.train.nnp_weights:  # recorded only when set (manifests of built-in models unchanged)
            base.pop("nnp_weights", None)
        fingerprint = self.model_fingerprint()
        if fingerprint is not None:  # built-in models are their code: their manifests keep no such key
            base["model_fingerprint"] = fingerprint
        return base

    def model_fingerprint(self) -> Optional[str]:
        """The identity of a network registered from Python (``models.custom``) or read from an
        ``.nnp`` file (``models.nnp``): its structure and initial parameters for this run's input
        shape (``network_fingerprint``); None for built-ins."""
        from models import MODELS
        from models.custom import NetworkModel, network_fingerprint
        from models.nnp import is_nnp_path, nnp_image_size
        cls = MODELS.get(self.train.model)
        nnp = cls is None and is_nnp_path(self.train.model)
        if not nnp and (cls is None or not issubclass(cls, NetworkModel)):
            return None
        from datasets.loader import load_dataset
        d = self.data
        bundle = load_dataset(d.dataset, self.first_seed, d.data_dir, d.n_train, d.n_val, d.n_test, d.val_csv,
                              d.test_csv, image_size=nnp_image_size(self.train.model) if nnp else None)
        if nnp:
            from models.nnp import nnp_fingerprint
            return nnp_fingerprint(self.train.model, bundle.image_shape, bundle.num_classes, self.train.nnp_weights)
        return network_fingerprint(cls, bundle.image_shape, bundle.num_classes)

    def manifest_defaults(self, registry: Registry) -> dict:
        """Values of keys that older manifests lack (they were recorded later)."""
        return compat.manifest_defaults(registry.option_types(self.methods))

    def manifest_scopes(self, registry: Registry) -> Dict[str, Callable]:
        """Manifest key -> the outputs a change of it invalidates: each core setting's declared scope
        (``cleansing.settings``: training settings everything, validation data the influence onwards,
        test data and ``retrain_all`` the retrainings, report sizes their reports), an estimator
        family's options its estimators' outputs only."""
        scopes = settings.scopes()
        for kind in registry.option_types(self.methods):
            users = [e.name for e in registry if e.options is kind]
            hits = [method_scope(n, weights_tag=kind.weights_tag) for n in users]
            own = _any_of(hits)
            for k in self.option(kind).manifest(RunSettings.of(self)):
                scopes[k] = kind.scopes.get(k, own)
        return scopes

    def inputs(self) -> List[Path]:
        """Files and folders the run reads its data from."""
        d = self.data
        return input_paths(d.dataset, d.data_dir, d.val_csv, d.test_csv)


def _any_of(scopes: List[Callable]) -> Callable:
    return lambda rel: any(s(rel) for s in scopes)


_GROUPS = {"data": DataConfig, "removal": RemovalConfig, "reports": ReportConfig, "runtime": RuntimeConfig,
           "train": TrainConfig}


def field_values(cfg: RunConfig) -> Dict[str, Any]:
    """Every core setting of ``cfg`` by name (the fields of its groups, ``n_trials``, ``first_seed``)."""
    out: Dict[str, Any] = {}
    for g in _GROUPS:
        group = getattr(cfg, g)
        out.update({f.name: getattr(group, f.name) for f in dataclasses.fields(group)})
    out.update(n_trials=cfg.n_trials, first_seed=cfg.first_seed)
    return out


def field_defaults() -> Dict[str, Any]:
    """The default of every core setting by name."""
    return field_values(RunConfig())


def make_config(registry: Optional[Registry] = None, base: Optional[RunConfig] = None, **settings: Any) -> RunConfig:
    """A ``RunConfig`` from flat keyword settings (``dataset=``, ``epochs=``, ``remove=``, ``out=``,
    ``methods=``, an options field such as ``damping=`` (with ``registry``) ...): each goes to the
    group that has a field of that name (``TrainConfig``'s ``lr`` is also accepted as
    ``learning_rate``); a whole group may be given by its name (``train=TrainConfig(...)``).
    Settings not given keep their values in ``base`` (default: the defaults)."""
    base = base or RunConfig()
    groups: Dict[str, Any] = {g: getattr(base, g) for g in _GROUPS}
    changes: Dict[str, Dict[str, Any]] = {g: {} for g in _GROUPS}
    top: Dict[str, Any] = {}
    option_kinds = registry.option_types() if registry is not None else []
    option_values: Dict[type, Dict[str, Any]] = {k: {} for k in option_kinds}
    names = {g: {f.name for f in dataclasses.fields(c)} for g, c in _GROUPS.items()}
    for key, value in settings.items():
        key = "lr" if key == "learning_rate" else key
        if key in _GROUPS and isinstance(value, _GROUPS[key]):
            groups[key] = value
            continue
        if key in ("methods", "n_trials", "first_seed", "options"):
            top[key] = tuple(value) if key == "methods" else value
            continue
        group = next((g for g in _GROUPS if key in names[g]), None)
        if group is not None:
            changes[group][key] = tuple(value) if isinstance(value, list) else value
            continue
        kind = next((k for k in option_kinds if key in {f.name for f in dataclasses.fields(k)}), None)
        if kind is None:
            raise TypeError(f"unknown setting {key!r}")
        option_values[kind][key] = tuple(value) if isinstance(value, list) else value
    options = dict(top.pop("options", base.options))
    for kind, values in option_values.items():
        if values:
            options[kind.__name__] = dataclasses.replace(options.get(kind.__name__) or kind(), **values)
    new_groups = {g: dataclasses.replace(groups[g], **changes[g]) if changes[g] else groups[g] for g in _GROUPS}
    return dataclasses.replace(base, **new_groups, **top, options=options)


def _check_int(value: Any, name: str, low: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        bound = "a positive integer" if low == 1 else f"an integer of at least {low}"
        raise UserError(f"{name} must be {bound}, got {value!r}")


def check_settings(cfg: RunConfig) -> None:
    """One-line UserError for a setting no run can use, the same for the command line and the Python
    API (the one place settings are validated; argparse's types only give earlier messages)."""
    t, d, r, rep, rt = cfg.train, cfg.data, cfg.removal, cfg.reports, cfg.runtime
    _check_int(t.epochs, "epochs (-e)", 1)
    _check_int(t.batch_size, "batch size (-bs)", 1)
    if isinstance(t.lr, bool) or not isinstance(t.lr, (int, float)) or not (0 < t.lr < float("inf")):
        raise UserError(f"learning rate (-lr) must be a positive finite number, got {t.lr!r}")
    _check_int(cfg.n_trials, "number of trials (-nt)", 1)
    _check_int(cfg.first_seed, "seed", 0)
    for name, value in (("n_train (--n-train)", d.n_train), ("n_val (--n-val)", d.n_val),
                        ("n_test (--n-test)", d.n_test)):
        _check_int(value, name, 1, optional=True)
    check_fraction(d.label_noise)
    for n in r.remove:
        _check_int(n, "each number of samples to remove (-r)", 0)
    _check_int(r.validate, "validate (--validate)", 0)
    _check_int(r.validate_repeats, "validate_repeats (--validate-repeats)", 1)
    _check_int(r.lds, "lds (--lds)", 0)
    _check_int(r.lds_targets, "lds_targets (--lds-targets)", 0)
    if r.lds == 1:
        raise UserError("--lds 1: LDS needs at least 2 subsets to correlate over")
    if isinstance(r.lds_fraction, bool) or not isinstance(r.lds_fraction, (int, float)) \
            or not 0.0 < r.lds_fraction < 1.0:
        raise UserError(f"--lds-fraction {r.lds_fraction!r} must be between 0 and 1 (the fraction of the training "
                        f"set each subset keeps)")
    if r.lds_retrain not in (None, "last-epoch", "full") or r.lds_seeds not in ("same", "fresh"):
        raise UserError(f"--lds-retrain must be last-epoch or full and --lds-seeds same or fresh, got "
                        f"{r.lds_retrain!r} and {r.lds_seeds!r}")
    _check_int(rep.gallery, "gallery (--gallery)", 0)
    for n in rep.cleanse:
        _check_int(n, "each cleanse size (--cleanse)", 0)
    _check_int(rep.explain_k, "explain_k (--explain-k)", 1)
    _check_int(rep.explain_max, "explain_max (--explain-max)", 0)
    _check_int(rt.jobs, "jobs (-j)", 1)
    from models.nnp import is_nnp_path
    if t.nnp_weights and not is_nnp_path(t.model):
        raise UserError(f"--nnp-weights starts from the parameters of an .nnp file; model {t.model!r} is not one")
