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


class Loss(Estimator):
    """The free ranking a practitioner tries before any influence method: each training sample's
    cross-entropy under the final model, without augmentation (inference mode). Its score is minus
    that loss, so the influence CSV's first rows (most negative) are the samples the model fits worst;
    it is not an influence on the validation loss (issues 32, 35)."""

    name = "Loss"
    cost_epochs = 0.34  # one forward pass over the training set

    def estimate(self, trial, options) -> Estimate:
        from datasets.batches import split_batches
        losses = [trial.learner.losses_and_predictions(x, y)[0] for x, y in split_batches(trial.data, trial.data.train)]
        return Estimate(-np.concatenate(losses))
