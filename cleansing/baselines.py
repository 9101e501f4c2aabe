"""The rankings beside the influence estimators: Random (the control), the free Loss and AUM, and
Leave_one_out, the exact counterfactual they approximate (small problems only)."""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from common.errors import UserError
from datasets.batches import split_batches

from .estimator import Estimate, Estimator
from .train import load_margins, run_steps


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


class LeaveOneOut(Estimator):
    """The exact counterfactual that SGD-influence approximates, computed: for every training sample
    j, the whole training replayed (same initialisation, batch order and augmentation, every epoch)
    without j, ``L_val(without z_j) - L_val(all)``. ``n_train`` full trainings: a reference for small
    problems (``MAX_TRAIN`` samples at most), as ``Influence_functions_self`` is for the Hessian."""

    name = "Leave_one_out"
    ranks = "exact: the validation loss retrained without z_j (same seed, every epoch) minus with it (small data)"
    needs_epoch_params = True  # epoch 0: the initial parameters
    cost_epochs = 1000.0  # n_train trainings
    MAX_TRAIN = 1000

    def estimate(self, trial, options) -> Estimate:
        return Estimate(self.estimate_targets([trial], options)[:, 0])

    def estimate_targets(self, targets, options) -> np.ndarray:
        """(n_train, K): one retraining per sample serves every target (they share the training set
        and differ only in the validation set the retrained model is scored on)."""
        first = targets[0]
        data, trace, learner = first.data, first.trace, first.learner
        n = len(data.train)
        if n > self.MAX_TRAIN:
            raise UserError(f"{self.name} retrains once per training sample: {n} is over its limit of "
                            f"{self.MAX_TRAIN}; use --n-train {self.MAX_TRAIN} or less")
        final = learner.state()
        base = np.array([learner.evaluate(split_batches(t.data, t.data.val))[0] for t in targets])
        initial = first.epoch_params(0, self.name)
        out = np.empty((n, len(targets)))
        try:
            for j in tqdm(range(n), desc=f"{self.name} seed {first.seed}", unit="training",
                          disable=not first.settings.show_progress, leave=False):
                learner.set_state(initial)
                removed = np.zeros(n, bool)
                removed[j] = True
                run_steps(learner, data, trace, range(trace.n_steps), first.settings.augment, removed=removed,
                          report=False)
                out[j] = [learner.evaluate(split_batches(t.data, t.data.val))[0] for t in targets] - base
        finally:
            learner.set_state(final)
        return out
