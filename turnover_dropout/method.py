"""The "Turnover_dropout" estimator of the data-cleansing pipeline.

``compute(trial)``: train the turn-over dropout (TD) network of the trial (or load it from
``weights/seed_NN/turnover/``), write its loss-curve sanity check, score every training instance by
its mean influence on the validation set, write the explanation of test errors, and return the
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

from common.errors import UserError
from common.fileio import write_csv_atomic
from models import MODELS
from sgd_influence.pipeline import Method, RunConfig, Trial, register_method

from .influence import validation_influence
from .masks import P_KEEP, resolve_layers
from .report import plot_loss_curve, write_explain_errors
from .train import cached_turnover

NAME = "Turnover_dropout"


@dataclass
class TDRunConfig(RunConfig):
    """``RunConfig`` plus the turn-over dropout settings.

    ``td_layers``: mask points to mask (None = the model's topmost: cnn6 'block3', mlp 'fc1').
    Explaining test errors is cheap here (two forward passes per pair): on by default.
    """

    out: str = "output_turnover_dropout"
    methods: Tuple[str, ...] = (NAME, "Random")
    td_layers: Optional[Tuple[str, ...]] = None
    explain_max: int = 8

    def manifest(self) -> dict:
        return {**super().manifest(), "td_layers": list(layers_of(self)), "td_p": P_KEEP}


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
            "explain_csv": p.summary / f"explain_errors_{s}.csv",
            "explain_png": p.fig / f"explain_errors_{s}.png",
            "timings": p.root / "logs" / f"turnover_timings_seed_{s}.csv"}


def compute(trial: Trial) -> np.ndarray:
    """Turn-over dropout influence of every training instance of ``trial`` (negative = harmful)."""
    cfg, data, seed = trial.cfg, trial.data, trial.seed
    layers = layers_of(cfg)
    out = output_paths(trial)
    title = f"{cfg.dataset} / {cfg.train.model}, turn-over dropout on {'+'.join(layers)}, seed {seed}"
    times = []

    t0 = time.time()
    td, curve, trained = cached_turnover(cfg.train, data, trial.trace, trial.paths, seed, layers,
                                         show_progress=cfg.show_progress)
    times.append(("td_train" if trained else "td_load", time.time() - t0))
    if not (out["curve_csv"].is_file() and out["curve_png"].is_file()):
        write_csv_atomic(out["curve_csv"], curve)
        plot_loss_curve(curve, out["curve_png"], title)

    t0 = time.time()
    scores = validation_influence(td, data, show_progress=cfg.show_progress)
    times.append(("influence", time.time() - t0))

    if cfg.explain_max > 0 and not (out["explain_csv"].is_file() and out["explain_png"].is_file()):
        t0 = time.time()
        write_explain_errors(td, data, out["explain_csv"], out["explain_png"],
                             k=cfg.explain_k, max_errors=cfg.explain_max, title=title,
                             same_label=cfg.explain_same_label)
        times.append(("explain_errors", time.time() - t0))
    write_csv_atomic(out["timings"], pd.DataFrame(
        [{"stage": s, "seed": seed, "seconds": round(v, 3), "n_train": len(data.train), "n_val": len(data.val),
          "layers": "+".join(layers)} for s, v in times]))
    return scores


METHOD = Method(NAME, compute)
register_method(METHOD)
