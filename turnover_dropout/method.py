"""The "Turnover_dropout" estimator of the data-cleansing pipeline.

``compute(trial)``: train the turn-over dropout (TD) network of the trial (or load it from
``weights/seed_NN/turnover/``; with ``td_networks`` > 1 also the further networks), write its
loss-curve sanity check, score every training instance by its mean influence on the validation
set (averaged over the networks), write the explanation of test errors, and return the
scores (the pipeline writes ``influence/Turnover_dropout/influence_turnover_dropout_<seed>.csv``
and then scores removal by the *standard* retraining, without turn-over dropout).

Settings beyond ``RunConfig`` travel in ``TDRunConfig`` (a subclass): it is pickled to the worker
processes with the rest of the configuration, and ``td_layers`` enters the run manifest, so an
output folder made with other masked layers is refused instead of mixed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import pandas as pd

from cleansing.outdir import method_scope
from cleansing.pipeline import Method, RunConfig, Trial, register_method
from common.errors import UserError
from common.fileio import write_csv_atomic
from models import MODELS

from .influence import instance_losses, residual_validation_influence, validation_influence
from .masks import P_KEEP, resolve_layers
from .report import plot_loss_curve, write_explain_errors
from .train import cached_turnover, loss_check

NAME = "Turnover_dropout"
SELF_NAME = "Turnover_dropout_self"
RESIDUAL_NAME = "Turnover_dropout_residual"


@dataclass
class TDRunConfig(RunConfig):
    """``RunConfig`` plus the turn-over dropout settings.

    ``td_layers``: mask points to mask (None = the model's topmost: cnn6 'block3', mlp 'fc1').
    ``td_networks``: TD networks per trial, each with its own masks; the scores are their mean
    (1 = the paper's method; more average out the quality of each instance's random half-mask).
    Explaining test errors is cheap here (two forward passes per pair): on by default.
    """

    out: str = "output_turnover_dropout"
    methods: Tuple[str, ...] = (NAME, "Random")
    td_layers: Optional[Tuple[str, ...]] = None
    td_networks: int = 1
    explain_max: int = 8

    def manifest(self) -> dict:
        return {**super().manifest(), "td_layers": list(layers_of(self)), "td_p": P_KEEP,
                "td_networks": int(self.td_networks)}

    def manifest_defaults(self) -> dict:
        return {**super().manifest_defaults(), "td_networks": 1}  # folders of before recorded it only when > 1

    def manifest_scopes(self) -> dict:
        """The TD settings invalidate only the TD networks and the TD methods' influence and scores."""
        own = method_scope(NAME, weights_tag="turnover")
        return {**super().manifest_scopes(), **{k: own for k in ("td_layers", "td_p", "td_networks")}}


def layers_of(cfg: RunConfig) -> tuple:
    """The resolved mask points of a run (UserError when the model or names do not allow it)."""
    model_cls = MODELS.get(cfg.train.model)
    points = model_cls.mask_points if model_cls is not None else ()
    try:
        return resolve_layers(cfg.train.model, points, getattr(cfg, "td_layers", None))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def output_paths(trial: Trial) -> dict:
    p, s = trial.paths, trial.seed
    return {"curve_csv": p.summary / f"turnover_loss_curve_{s}.csv",
            "curve_png": p.fig / f"turnover_loss_curve_{s}.png",
            "check_csv": p.summary / f"turnover_check_{s}.csv",
            "explain_csv": p.summary / f"explain_errors_{s}.csv",
            "explain_png": p.fig / f"explain_errors_{s}.png",
            "timings": p.root / "logs" / f"turnover_timings_seed_{s}.csv"}


def _title(trial: Trial, layers) -> str:
    return f"{trial.cfg.dataset} / {trial.cfg.train.model}, turn-over dropout on {'+'.join(layers)}, seed {trial.seed}"


def turnover_network(trial: Trial, times: list):
    """The trial's TD network (trained once, then from the cache), with its loss-curve figure and
    ``summary/turnover_check_<seed>.csv`` written beside it if missing."""
    cfg, data, seed = trial.cfg, trial.data, trial.seed
    layers = layers_of(cfg)
    out = output_paths(trial)
    t0 = time.time()
    td, curve, trained = cached_turnover(cfg.train, data, trial.trace, trial.paths, seed, layers,
                                         show_progress=cfg.show_progress)
    times.append(("td_train" if trained else "td_load", time.time() - t0))
    if not (out["curve_csv"].is_file() and out["curve_png"].is_file()):
        write_csv_atomic(out["curve_csv"], curve)
        plot_loss_curve(curve, out["curve_png"], _title(trial, layers))
    if not out["check_csv"].is_file():
        write_csv_atomic(out["check_csv"], loss_check(td, data, trial.noisy if cfg.label_noise > 0 else None))
    return td, layers


def turnover_ensemble(trial: Trial, times: list):
    """All ``td_networks`` TD networks of the trial (network 0 from ``turnover_network``, with its
    checks; the others trained once along the same schedule with their own masks, then cached)."""
    td, layers = turnover_network(trial, times)
    nets = [td]
    cfg = trial.cfg
    for k in range(1, max(1, getattr(cfg, "td_networks", 1))):
        t0 = time.time()
        net, _, trained = cached_turnover(cfg.train, trial.data, trial.trace, trial.paths, trial.seed, layers,
                                          show_progress=cfg.show_progress, network=k)
        times.append((f"td_train_net{k}" if trained else f"td_load_net{k}", time.time() - t0))
        nets.append(net)
    return nets, layers


def _write_times(trial: Trial, times: list, layers, method: str) -> None:
    path = output_paths(trial)["timings"]
    rows = [{"method": method, "stage": s, "seed": trial.seed, "seconds": round(v, 3), "n_train": len(trial.data.train),
             "n_val": len(trial.data.val), "layers": "+".join(layers)} for s, v in times]
    if path.is_file():
        old = pd.read_csv(path)
        if "method" in old:
            rows = old[old["method"] != method].to_dict("records") + rows
    write_csv_atomic(path, pd.DataFrame(rows))


def compute(trial: Trial) -> np.ndarray:
    """Turn-over dropout influence of every training instance of ``trial`` (negative = harmful)."""
    cfg, data = trial.cfg, trial.data
    out = output_paths(trial)
    times = []
    nets, layers = turnover_ensemble(trial, times)
    td = nets[0]

    t0 = time.time()
    scores = np.mean([validation_influence(net, data, show_progress=cfg.show_progress) for net in nets], axis=0)
    times.append(("influence", time.time() - t0))

    if cfg.explain_max > 0 and not (out["explain_csv"].is_file() and out["explain_png"].is_file()):
        t0 = time.time()
        write_explain_errors(td, data, out["explain_csv"], out["explain_png"],
                             k=cfg.explain_k, max_errors=cfg.explain_max, title=_title(trial, layers),
                             same_label=cfg.explain_same_label)
        times.append(("explain_errors", time.time() - t0))
    _write_times(trial, times, layers, NAME)
    return scores


def compute_self(trial: Trial) -> np.ndarray:
    """Minus the self-influence ``I(z_i, z_i) = L(f^{m~(z_i)}, z_i) - L(f^{m(z_i)}, z_i)`` of every
    training instance: how much ``z_i``'s own loss rises without ``z_i`` (Koh & Liang's ranking for
    fixing mislabeled examples, estimated by turn-over dropout). Negated so that, as for every
    method, the lowest score comes first: samples only memorised, not predicted, lead."""
    times = []
    nets, layers = turnover_ensemble(trial, times)
    t0 = time.time()
    idx = np.arange(len(trial.data.train))
    scores = np.mean([np.subtract(*instance_losses(net, trial.data, idx)[:2]) for net in nets], axis=0)
    times.append(("self_influence", time.time() - t0))
    _write_times(trial, times, layers, SELF_NAME)
    return scores


def compute_residual(trial: Trial) -> np.ndarray:
    """``Turnover_dropout``'s score less the part its instance's mask bits predict, fitted on fresh
    masks (``residual_validation_influence``); averaged over the networks like the plain score."""
    times = []
    nets, layers = turnover_ensemble(trial, times)
    t0 = time.time()
    scores = np.mean([residual_validation_influence(net, trial.data, show_progress=trial.cfg.show_progress)
                      for net in nets], axis=0)
    times.append(("residual_influence", time.time() - t0))
    _write_times(trial, times, layers, RESIDUAL_NAME)
    return scores


METHOD = Method(NAME, compute, group=NAME)
SELF_METHOD = Method(SELF_NAME, compute_self, group=NAME)
RESIDUAL_METHOD = Method(RESIDUAL_NAME, compute_residual, group=NAME)
register_method(METHOD)
register_method(SELF_METHOD)
register_method(RESIDUAL_METHOD)
