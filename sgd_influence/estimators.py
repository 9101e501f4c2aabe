"""The pipeline's "Hara" and "Ours" estimators (``cleansing.estimator`` interface).

Both run ``infl.sgd_influence`` from the gradient ``u`` of the mean validation loss at the final
parameters (with batch norm's running-statistics term); Hara reads the parameters stored before
every step of the last epoch, Ours uses the final parameters at every step (the storage-efficient
approximation of Suzuki et al.). Both explain test errors by restarting the recursion from a
test image's loss gradient (``explain``) and give the run the paper's Table 1 (``cache_table``).
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import pandas as pd

from cleansing.estimator import Estimate, Estimator, Explanation, RunFacts

from .cache_table import cache_table
from .explain import explain_errors
from .infl import sgd_influence


class Hara(Estimator):
    """SGD-influence with the per-step parameters of the last epoch (Hara et al., 2019)."""

    name = "Hara"
    ranks = "SGD-influence on the validation loss over the last epoch, with every step's stored parameters"
    cost_epochs = 2.8  # docs/measurements.md section 3
    needs_step_params = True
    needs_validation_grad = True

    def scores(self, trial) -> np.ndarray:
        return sgd_influence(trial.learner, trial.data, trial.trace, trial.u, trial.cfg.train.augment,
                             state_at=trial.step_params, u_stats=trial.u_stats,
                             show_progress=trial.cfg.runtime.show_progress, desc=f"{self.name} seed {trial.seed}")

    def estimate(self, trial, options) -> Estimate:
        return Estimate(self.scores(trial))

    def explain(self, trial, options, max_errors: int) -> Explanation:
        return explain_errors(trial, self.scores, max_errors)

    def run_tables(self, facts: RunFacts) -> Dict[str, pd.DataFrame]:
        """``cache_table``: the paper's Table 1 for this run's setting, beside the measured caches."""
        return {"cache_table": cache_table(facts.param_file_bytes, facts.dataset, facts.n_train, facts.batch_size,
                                           facts.epochs, facts.cache_sizes)}


class Ours(Hara):
    """SGD-influence with only the final parameters cached (Suzuki et al., 2021)."""

    name = "Ours"
    ranks = "SGD-influence on the validation loss over the last epoch, at the final parameters only"
    cost_epochs = 2.8
    needs_step_params = False

    def scores(self, trial) -> np.ndarray:
        return sgd_influence(trial.learner, trial.data, trial.trace, trial.u, trial.cfg.train.augment,
                             u_stats=trial.u_stats, show_progress=trial.cfg.runtime.show_progress,
                             desc=f"{self.name} seed {trial.seed}")


ESTIMATORS = (Hara(), Ours())
