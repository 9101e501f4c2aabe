"""The "Random" control: a seeded random order, the baseline every estimator is compared with."""
from __future__ import annotations

import numpy as np

from .estimator import Estimate, Estimator


class Random(Estimator):
    """Uniform scores from the trial seed: removing the lowest removes a random subset."""

    name = "Random"
    cost_epochs = 0.01
    control = True
    needs_final_model = False

    def estimate(self, trial, options) -> Estimate:
        return Estimate(np.random.default_rng([trial.seed, 7]).random(len(trial.data.train)))
