"""The free rankings beside the influence estimators: Random (the control), Loss and AUM."""
from __future__ import annotations

import numpy as np

from common.errors import UserError
from datasets.batches import split_batches

from .estimator import Estimate, Estimator
from .train import load_margins


class Random(Estimator):
    """Uniform scores from the trial seed: removing the lowest removes a random subset."""

    name = "Random"
    ranks = "a seeded random order (the control)"
    cost_epochs = 0.01
    control = True
    needs_final_model = False
    target_free = True

    def estimate(self, trial, options) -> Estimate:
        return Estimate(np.random.default_rng([trial.seed, 7]).random(len(trial.data.train)))


class Loss(Estimator):
    """The free ranking a practitioner tries before any influence method: each training sample's
    cross-entropy under the final model, without augmentation (inference mode). Its score is minus
    that loss, so the influence CSV's first rows (most negative) are the samples the model fits worst;
    it is not an influence on the validation loss (issues 32, 35)."""

    name = "Loss"
    ranks = "minus the training loss under the final model: worst-fitted samples first (free; wrong labels)"
    cost_epochs = 0.34  # one forward pass over the training set
    target_free = True

    def estimate(self, trial, options) -> Estimate:
        losses = [trial.learner.losses_and_predictions(x, y)[0] for x, y in split_batches(trial.data, trial.data.train)]
        return Estimate(-np.concatenate(losses))


class AUM(Estimator):
    """Area under the margin (Pleiss et al. 2020), the free ranking of suspicious labels: each
    training sample's margin (the logit of its label minus the largest other logit) averaged over
    the epochs, as the training steps saw it: the augmented image (with augmentation on) at the
    parameters before that step's update, read from the step's own forward pass, so it costs no extra
    pass. Lowest first: samples the network keeps arguing with lead. Not an influence (issues 32, 35)."""

    name = "AUM"
    ranks = "area under the margin over training: lowest first (free; wrong labels)"
    cost_epochs = 0.01
    target_free = True

    def estimate(self, trial, options) -> Estimate:
        path = trial.paths.margins(trial.seed)
        if not path.is_file():
            raise UserError(f"AUM needs the margins the training records ({path}); this trial was trained before "
                            f"they were recorded: train it again in a new -o")
        with np.errstate(all="ignore"):
            aum = np.nanmean(load_margins(path), axis=0)
        return Estimate(np.where(np.isfinite(aum), aum, 0.0))
