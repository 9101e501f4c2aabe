"""The pipeline's "Hara", "Ours" and "Hara_all_epochs" estimators (``cleansing.estimator`` interface).

Both run ``infl.sgd_influence`` from the gradient ``u`` of the mean validation loss at the final
parameters (with batch norm's running-statistics term); Hara reads the parameters stored before
every step of the last epoch, Ours uses the final parameters at every step (the storage-efficient
approximation of Suzuki et al.). Both explain test errors by restarting the recursion from a
test image's loss gradient (``explain``) and give the run the paper's Table 1 (``cache_table``).
Hara_all_epochs runs the same recursion over all (or the last ``--trace-epochs``) epochs, the
parameters of every step replayed from the per-epoch checkpoints (``replay``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import pandas as pd

from cleansing.estimator import Estimate, Estimator, Explanation, Options, RunFacts, option, positive_int
from common.errors import UserError

from .cache_table import cache_table
from .explain import explain_errors
from .infl import sgd_influence
from .replay import replayed_sgd_influence


class Hara(Estimator):
    """SGD-influence with the per-step parameters of the last epoch (Hara et al., 2019)."""

    name = "Hara"
    explains_errors = True
    ranks = "SGD-influence on the validation loss over the last epoch, with every step's stored parameters"
    cost_epochs = 2.8  # docs/measurements.md section 3
    needs_step_params = True
    needs_validation_grad = True

    def scores(self, trial) -> np.ndarray:
        return sgd_influence(trial.learner, trial.data, trial.trace, trial.u, trial.settings.augment,
                             state_at=trial.step_params, u_stats=trial.u_stats,
                             show_progress=trial.settings.show_progress, desc=f"{self.name} seed {trial.seed}")

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
        return sgd_influence(trial.learner, trial.data, trial.trace, trial.u, trial.settings.augment,
                             u_stats=trial.u_stats, show_progress=trial.settings.show_progress,
                             desc=f"{self.name} seed {trial.seed}")


#: the default ``--replay-segment`` keeps at most this many bytes of replayed parameter sets
REPLAY_BUDGET_BYTES = 512 * 2 ** 20
ALL_EPOCHS = "Hara_all_epochs"


@dataclass(frozen=True)
class ReplayOptions(Options):
    """``trace_epochs``: the recursion runs over the last K epochs (None: all); ``replay_segment``: steps
    replayed and kept at a time (None: as many parameter sets as ``REPLAY_BUDGET_BYTES`` hold); the
    scores do not depend on it, so the manifest records only the traced epochs."""

    title = f"SGD-influence over all epochs ({ALL_EPOCHS})"

    trace_epochs: Optional[int] = option(
        None, f"{ALL_EPOCHS}: trace the last K epochs (default: all of them)", type=positive_int, metavar="K")
    replay_segment: Optional[int] = option(
        None, f"{ALL_EPOCHS}: replay and keep the parameters of S steps at a time (default: as many as fit in "
              f"{REPLAY_BUDGET_BYTES >> 20} MB); the scores do not depend on it", type=positive_int, metavar="S")

    def traced(self, epochs: int) -> int:
        """K, the number of traced epochs of a run of ``epochs`` epochs."""
        return int(epochs) if self.trace_epochs is None else int(self.trace_epochs)

    def segment(self, state_bytes: int) -> int:
        """S for parameter sets of ``state_bytes`` bytes."""
        return int(self.replay_segment) if self.replay_segment else max(1, REPLAY_BUDGET_BYTES // max(state_bytes, 1))

    def manifest(self, run) -> dict:
        return {"trace_epochs": self.traced(run.epochs)}

    def check(self, run) -> None:
        E = int(run.epochs)
        if self.trace_epochs is not None and not 1 <= int(self.trace_epochs) <= E:
            raise UserError(f"--trace-epochs {self.trace_epochs} is not within the run's {E} epoch(s); choose 1 to {E}")
        if self.replay_segment is not None and int(self.replay_segment) < 1:
            raise UserError(f"--replay-segment {self.replay_segment} must be at least 1")


def _state_bytes(learner) -> int:
    """Bytes of one parameter set (running statistics included)."""
    return int(sum(v.d.nbytes for v in learner.params.values()))


class HaraAllEpochs(Estimator):
    """SGD-influence over all (or the last K) epochs, every step's parameters replayed from the
    per-epoch checkpoints one segment at a time (storage: E checkpoints plus one segment)."""

    name = ALL_EPOCHS
    explains_errors = True
    ranks = "SGD-influence on the validation loss over every epoch, step parameters replayed from checkpoints"
    options = ReplayOptions
    needs_epoch_params = True
    needs_validation_grad = True
    # per traced epoch: Hara's last-epoch recursion (2.8) plus about two replayed epochs; the default 20 epochs
    cost_epochs = 20 * (2.8 + 2.0)
    summary_logs = {"hara_all_epochs_replay": "hara_all_epochs_replay"}

    def run(self, trial, options: Optional[ReplayOptions], checkpoint: bool = True):
        """(scores, replay log) of ``trial`` (its ``u`` as the target)."""
        options = options or ReplayOptions()
        E = int(trial.settings.epochs)
        if trial.trace.n_epochs != E:
            raise UserError(f"{self.name}: the trace of seed {trial.seed} holds {trial.trace.n_epochs} epoch(s), not "
                            f"the run's {E}; the training cannot be replayed: train again in a new -o")
        K = options.traced(E)
        S = options.segment(_state_bytes(trial.learner))
        path = None
        if checkpoint:
            folder = trial.paths.weights(trial.seed) / self.name
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "resume.npz"
        found = replayed_sgd_influence(
            trial.learner, trial.data, trial.trace, trial.u, trial.settings.augment,
            lambda e: trial.epoch_params(e, self.name), range(E - K, E), S, u_stats=trial.u_stats,
            checkpoint=path, show_progress=trial.settings.show_progress, desc=f"{self.name} seed {trial.seed}",
            what=self.name)
        if path is not None and not any(path.parent.iterdir()):
            path.parent.rmdir()
        return found

    def scores(self, trial, options: Optional[ReplayOptions] = None) -> np.ndarray:
        return self.run(trial, options, checkpoint=False)[0]

    def estimate(self, trial, options: Optional[ReplayOptions]) -> Estimate:
        options = options or ReplayOptions()
        state_bytes = _state_bytes(trial.learner)
        S = options.segment(state_bytes)
        n = max(len(trial.trace.epoch_steps(e)) for e in range(trial.trace.n_epochs))
        held = (min(S, n) + -(-n // S)) * state_bytes  # one segment plus the segment starts of an epoch
        print(f"{self.name} seed {trial.seed}: replay segments of {S} step(s) ({n} per epoch), "
              f"{state_bytes / 2 ** 20:.2f} MB per parameter set, at most {held / 2 ** 20:.1f} MB of replayed "
              f"parameters held")
        infl, log = self.run(trial, options)
        return Estimate(infl, logs={"hara_all_epochs_replay": log.assign(seed=trial.seed)})

    def explain(self, trial, options: Optional[ReplayOptions], max_errors: int) -> Explanation:
        found = explain_errors(trial, lambda t: self.scores(t, options), max_errors)
        return dataclasses.replace(found, formula=found.formula.replace("the last epoch", "the traced epochs"))


ESTIMATORS = (Hara(), Ours(), HaraAllEpochs())
