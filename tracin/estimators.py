"""The pipeline's "TracIn" and "TracIn_self" estimators and their flags (``cleansing.estimator``).

Both read the parameters after the chosen epochs (``--tracin-checkpoints``), which the training
keeps for them (``needs_epoch_params``); the trial's learner is set to each in turn and restored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import pandas as pd

from cleansing.estimator import Estimate, Estimator, Options, option, positive_int
from common.errors import UserError

from .tracin import LAYERS, default_checkpoints, tracin

NAME = "TracIn"
SELF = "TracIn_self"


@dataclass(frozen=True)
class TracInOptions(Options):
    """The checkpoints and the layers of TracIn and TracIn_self."""

    title = "TracIn (TracIn, TracIn_self)"

    tracin_checkpoints: Tuple[int, ...] = option(
        (), "epochs whose final parameters are TracIn's checkpoints, 1 .. -e (default: 4 spread over training, "
            "ceil(E k / 4) for k = 1..4, e.g. 5 10 15 20)", type=positive_int, nargs="+", metavar="EPOCH")
    tracin_layers: str = option(
        "all", "TracIn's gradients: all (default): every trainable parameter; last: the last affine layer only "
               "(the TracIn paper's fast variant)", choices=LAYERS)

    def epochs(self, total: int) -> Tuple[int, ...]:
        return tuple(sorted(set(self.tracin_checkpoints))) or default_checkpoints(total)

    def check(self, run) -> None:
        late = [e for e in self.tracin_checkpoints if e > run.epochs]
        if late:
            raise UserError(f"--tracin-checkpoints {' '.join(map(str, late))}: the training has only "
                            f"{run.epochs} epoch(s); choose epochs from 1 to {run.epochs}")

    def manifest(self, run) -> dict:
        return {"tracin_checkpoints": list(self.epochs(run.epochs)), "tracin_layers": self.tracin_layers}


class TracIn(Estimator):
    """``sum_k lr_k <grad L_val(theta_k), grad l(z_j; theta_k)>``: negative = harmful (its gradient
    opposes the validation loss's descent at the checkpoints)."""

    name = NAME
    ranks = "sum over checkpoints of lr_k <grad L_val, g_j>: influence on the validation loss"
    options = TracInOptions
    needs_epoch_params = True
    needs_validation_grad = True  # the final checkpoint's validation gradient is the trial's u
    self_influence = False
    cost_epochs = 2.0  # per checkpoint about 0.5: one validation gradient and one per-sample pass

    def estimate(self, trial, options: TracInOptions) -> Estimate:
        trace, epochs = trial.trace, options.epochs(trial.settings.epochs)
        checkpoints: List[Tuple[int, float]] = [(e, float(np.mean(trace.lr[trace.epoch == e - 1]))) for e in epochs]
        known = {trial.settings.epochs: trial.u} if self.needs_validation_grad else {}
        final = trial.learner.state()
        try:
            total, rows = tracin(trial.learner, trial.data, checkpoints, lambda e: trial.epoch_params(e, self.name),
                                 options.tracin_layers, self.self_influence,
                                 show_progress=trial.settings.show_progress, desc=f"{self.name} seed {trial.seed}",
                                 known=known)
        finally:
            trial.learner.set_state(final)
        log = pd.DataFrame([{"method": self.name, "seed": trial.seed, "layers": options.tracin_layers, **r}
                            for r in rows])
        # the influence CSV lists the lowest scores first: self-influence is negated so the largest lead
        return Estimate(-total if self.self_influence else total, logs={self.log_stem: log})

    @property
    def log_stem(self) -> str:
        return self.name.lower() + "_checkpoints"

    @property
    def summary_logs(self) -> dict:  # type: ignore[override]
        """Each trial's checkpoints (epoch, lr, mean |term|) gathered into ``summary/tracin_checkpoints.csv``."""
        return {self.log_stem: "tracin_checkpoints"}


class TracInSelf(TracIn):
    """``-sum_k lr_k ||grad l(z_j; theta_k)||^2``: the most self-influential samples (suspicious labels) first."""

    name = SELF
    needs_validation_grad = False
    ranks = "TracIn self-influence, sum over checkpoints of lr_k ||g_j||^2, largest first (wrong labels)"
    self_influence = True
    target_free = True


ESTIMATORS = (TracIn(), TracInSelf())
