"""Explaining test errors with an SGD-influence estimator (Hara or Ours), one recursion per image.

For a misclassified test image ``(x, y)`` predicted as ``c``, the recursion of ``infl.sgd_influence``
is started from ``u = grad_theta l((x, c); theta_T)`` (batch norm in inference mode, as every test
loss, with the loss's gradient w.r.t. the running statistics beside it) instead of the
validation-loss gradient: ``infl[i]`` then estimates the change of the *wrong class's* loss when
``z_i`` is left out of the last epoch, the quantity ``cleansing.explain`` ranks (positive = ``z_i``
pushes towards the error). Cost: one influence stage per explained image.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from cleansing.estimator import Explanation, misclassified
from datasets import to_network_input
from datasets.batches import split_batches

#: What ``I`` means in the SGD-influence explanation figure.
SGD_FORMULA = ("I = estimated change of the wrong class's loss when z_i leaves the last epoch; "
               "I > 0: z_i pushes towards it")


def test_predictions(trial) -> np.ndarray:
    """Predicted class of every test image at the final parameters (inference mode)."""
    data = trial.data
    return np.concatenate([trial.learner.losses_and_predictions(x, y)[1] for x, y in split_batches(data, data.test)])


def wrong_class_influence(trial, compute: Callable, wrong: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """(n_train, len(wrong)): ``compute`` run once per test image ``wrong[e]``
    with the trial's ``u`` replaced by the gradient of that image's loss for its predicted class."""
    data, learner = trial.data, trial.learner
    cols = []
    for t in wrong:
        x = to_network_input(data.test.images[t:t + 1], data.mean, data.std)
        batch = [(x, np.asarray(preds[t:t + 1]))]
        u, u_stats = learner.mean_loss_grad(batch, train=False), learner.running_stats_grad(batch)
        cols.append(compute(trial.with_target(u, u_stats)))
    return np.stack(cols, axis=1) if cols else np.zeros((len(data.train), 0))


def explain_errors(trial, compute: Callable, max_errors: int) -> Explanation:
    """The influence of every training sample towards the first ``max_errors`` test errors, by
    ``compute`` (a function of a trial that follows ``trial.u``, as Hara and Ours do)."""
    preds = test_predictions(trial)
    wrong = misclassified(preds, trial.data.test.labels, max_errors)
    infl = wrong_class_influence(trial, compute, wrong, preds)
    return Explanation(wrong, preds, infl, SGD_FORMULA)
