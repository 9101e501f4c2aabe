"""The pipeline's influence-function estimators and their options (``cleansing.estimator``).

* "Influence_functions": ``infl_j = <v, grad l(z_j)> / n_train`` with ``v ~= (H + alpha I)^-1 u``
  solved by ``--solver`` (MINRES by default); each solve's report goes to
  ``logs/solver_seed_<k>.csv`` and ``summary/solver.csv``.
* "Influence_functions_ekfac": the same score with ``v = (G + alpha I)^-1 u``, ``G`` the EK-FAC
  approximation of the Gauss-Newton matrix (no iterative solve).
* "Influence_functions_ekfac_self": self-influence ``-g_j^T (G + alpha I)^-1 g_j / n_train`` in
  EK-FAC's eigenbasis (no validation set, no solve): the most self-influential samples first, a
  ranking of suspicious labels (issue 35); "Influence_functions_self": the same with the exact
  damped Hessian formed explicitly, for small models only (a check).
* "Influence_functions_original_sign": ``-infl``, what the original example stored (its ascending
  order removes the most *helpful* first); reuses the Influence_functions scores.

``InfluenceOptions`` are the flags of all three (``damping`` None: 10.0 for cifar10, 0.1 otherwise).
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import pandas as pd

from cleansing.estimator import Estimate, Estimator, Options, method_scope, option, positive_float, positive_int
from common.errors import UserError

from .ekfac import FISHERS, EkfacInfo, EkfacOptions, ekfac_influence, ekfac_influence_many, ekfac_self_influence
from .inverse import SOLVER_COLUMNS, default_damping, exact_self_influence, influence_functions, solver_row
from .solvers import SOLVERS, SolverInfo, SolverOptions

NAME = "Influence_functions"
EKFAC = "Influence_functions_ekfac"
ORIGINAL_SIGN = "Influence_functions_original_sign"
EKFAC_SELF = "Influence_functions_ekfac_self"
EXACT_SELF = "Influence_functions_self"
DIVERGED = 1.0  # a residual above this is worse than v = 0
_S = SolverOptions()


def momentum(text: str) -> float:
    v = float(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"{text} must be in [0, 1)")
    return v


@dataclass(frozen=True)
class InfluenceOptions(Options):
    """Damping, the exact solvers' settings and EK-FAC's Fisher labels."""

    title = "influence functions (Influence_functions, Influence_functions_ekfac)"
    manifest_defaults = {"ekfac_fisher": EkfacOptions().fisher}  # recorded since EK-FAC
    scopes = {"ekfac_fisher": method_scope(EKFAC)}

    damping: Optional[float] = option(
        None, "alpha in (H + alpha I)^-1, and in EK-FAC's (G + alpha I)^-1 (default: 10.0 for cifar10, 0.1 "
              "otherwise, as the original)", type=positive_float)
    solver: str = option(
        _S.solver, "Influence_functions' solver: minres (default): MINRES on full-batch Hessian-vector products, "
                   "converges also when H + alpha I is indefinite; cg: conjugate gradient (stops at negative "
                   "curvature); sgd: the original example's momentum SGD over mini-batches; lissa: Agarwal et al.'s "
                   "stochastic series", choices=SOLVERS)
    cg_iters: int = option(_S.cg_iters, "cg, minres: most iterations, one full-batch product each (default "
                                        "%(default)s)", type=positive_int)
    tol: float = option(_S.tol, "cg, minres: stop at this relative residual (default %(default)s)",
                        type=positive_float)
    sgd_epochs: int = option(_S.sgd_epochs, "sgd: epochs (default %(default)s)", type=positive_int)
    sgd_lr: float = option(_S.sgd_lr, "sgd: learning rate (default %(default)s)", type=positive_float)
    sgd_momentum: float = option(_S.sgd_momentum, "sgd: momentum (default %(default)s)", type=momentum)
    lissa_scale: Optional[float] = option(
        None, "lissa: scale, above the largest mini-batch Hessian eigenvalue + damping (default: 1.2 x a "
              "20-step power-iteration estimate)", type=positive_float)
    lissa_depth: int = option(_S.lissa_depth, "lissa: recursion depth in mini-batch steps (default %(default)s)",
                              type=positive_int)
    lissa_repeats: int = option(_S.lissa_repeats, "lissa: independent runs averaged (default %(default)s)",
                                type=positive_int)
    ekfac_fisher: str = option(
        EkfacOptions().fisher, "Influence_functions_ekfac: labels of the Fisher's gradients: sampled (default) from "
                               "the model's prediction (the true Fisher = Gauss-Newton matrix, Kronfluence's "
                               "default); exact: the expectation over all classes (one backward pass per class); "
                               "empirical: the true labels", choices=FISHERS)

    def resolved_damping(self, dataset: str) -> float:
        return default_damping(dataset) if self.damping is None else float(self.damping)

    @property
    def solver_options(self) -> SolverOptions:
        return SolverOptions(**{k: getattr(self, k) for k in asdict(SolverOptions())})

    def manifest(self, run) -> dict:
        return {"damping": self.resolved_damping(run.dataset), **asdict(self.solver_options),
                "ekfac_fisher": self.ekfac_fisher}


class InfluenceFunctions(Estimator):
    """Koh & Liang's influence functions with an iterative solve of the damped Hessian system."""

    name = NAME
    ranks = "influence on the validation loss, <(H + alpha I)^-1 u, g_j> / n by an iterative solve"
    cost_epochs = 20.0  # an iterative solve over the full Hessian (MINRES about 38)
    options = InfluenceOptions
    needs_validation_grad = True
    summary_logs = {"solver": "solver"}

    def estimate(self, trial, options: InfluenceOptions) -> Estimate:
        damping, solver = options.resolved_damping(trial.settings.dataset), options.solver_options
        scores, info = influence_functions(trial.learner, trial.data, trial.u, damping, solver,
                                           batch_size=trial.settings.batch_size, seed=trial.seed,
                                           show_progress=trial.settings.show_progress,
                                           desc=f"{NAME} seed {trial.seed}")
        log = pd.DataFrame([solver_row(NAME, trial.seed, damping, info)], columns=SOLVER_COLUMNS)
        print(f"{NAME} seed {trial.seed}: {info.solver} solver, damping {damping:g}, {info.iterations} iterations, "
              f"relative residual {info.residual:.3g}, {info.seconds:.1f} s" + (f" ({info.note})" if info.note else ""))
        if not np.all(np.isfinite(scores)):
            raise UserError(f"the {info.solver} solve of (H + {damping:g} I) v = u diverged for seed {trial.seed} "
                            f"({info.note or 'non-finite v'}); use --solver cg or raise --damping")
        if info.residual > DIVERGED:
            print(f"warning: {NAME} seed {trial.seed}: the {info.solver} solve did not converge (relative residual "
                  f"{info.residual:.3g} > 1, worse than v = 0): its scores are not meaningful; "
                  f"use --solver cg or raise --damping")
        return Estimate(scores, logs={"solver": log})


class InfluenceFunctionsEkfac(Estimator):
    """The same score with an EK-FAC approximation of the Gauss-Newton matrix (``ekfac``)."""

    name = EKFAC
    ranks = "influence on the validation loss with EK-FAC's Gauss-Newton approximation for H"
    cost_epochs = 5.0  # docs/measurements.md: about 4 to 6
    options = InfluenceOptions
    needs_validation_grad = True

    def estimate(self, trial, options: InfluenceOptions) -> Estimate:
        damping = options.resolved_damping(trial.settings.dataset)
        scores, ek = ekfac_influence(trial.learner, trial.data, trial.u, damping,
                                     EkfacOptions(fisher=options.ekfac_fisher), seed=trial.seed,
                                     show_progress=trial.settings.show_progress,
                                     desc=f"{self.name} seed {trial.seed}")
        return Estimate(scores, logs={self.log_stem: self.log(trial.seed, damping, ek)})

    def estimate_targets(self, targets, options: InfluenceOptions) -> np.ndarray:
        """One EK-FAC fit (it reads only the training set) for every target, then per target one
        inverse product and one per-sample pass: the same columns as one estimate per target."""
        if self.target_free:
            return super().estimate_targets(targets, options)
        first = targets[0]
        scores, _ = ekfac_influence_many(first.learner, first.data, [t.u for t in targets],
                                         options.resolved_damping(first.settings.dataset),
                                         EkfacOptions(fisher=options.ekfac_fisher), seed=first.seed,
                                         show_progress=first.settings.show_progress,
                                         desc=f"{self.name} seed {first.seed}, {len(targets)} targets")
        return scores

    @property
    def log_stem(self) -> str:
        return "solver_" + self.name.lower()

    @property
    def summary_logs(self) -> dict:  # type: ignore[override]
        return {self.log_stem: "solver"}

    def log(self, seed: int, damping: float, ek: EkfacInfo) -> pd.DataFrame:
        """Its row of ``summary/solver.csv``, printed too."""
        times = ", ".join(f"{k} {v:.1f} s" for k, v in ek.seconds.items())
        info = SolverInfo(f"ekfac-{ek.fisher}", passes=float(ek.passes), seconds=ek.total_seconds,
                          notes=[f"EK-FAC ({ek.fisher} labels): {times}; residual not measured (an approximation, "
                                 f"not a solve of (H + alpha I) v = u)"])
        print(f"{self.name} seed {seed}: EK-FAC with {ek.fisher} labels, damping {damping:g}, {ek.passes} passes "
              f"over the training set, {times}")
        return pd.DataFrame([solver_row(self.name, seed, damping, info)], columns=SOLVER_COLUMNS)


class InfluenceFunctionsEkfacSelf(InfluenceFunctionsEkfac):
    """Self-influence ``g_j^T (G + alpha I)^-1 g_j`` in EK-FAC's eigenbasis, most influential first."""

    name = EKFAC_SELF
    ranks = "self-influence g_j^T (G + alpha I)^-1 g_j in EK-FAC's eigenbasis, largest first (wrong labels)"
    cost_epochs = 5.0  # the fit's two passes and one scoring pass, as Influence_functions_ekfac
    needs_validation_grad = False
    target_free = True

    def estimate(self, trial, options: InfluenceOptions) -> Estimate:
        damping = options.resolved_damping(trial.settings.dataset)
        scores, ek = ekfac_self_influence(trial.learner, trial.data, damping, EkfacOptions(fisher=options.ekfac_fisher),
                                          seed=trial.seed, show_progress=trial.settings.show_progress,
                                          desc=f"{self.name} seed {trial.seed}")
        return Estimate(scores, logs={self.log_stem: self.log(trial.seed, damping, ek)})


class InfluenceFunctionsSelf(Estimator):
    """Exact self-influence ``g_j^T (H + alpha I)^-1 g_j`` (Hessian formed explicitly): small models only."""

    name = EXACT_SELF
    ranks = "exact self-influence g_j^T (H + alpha I)^-1 g_j, largest first (small models only: a check)"
    cost_epochs = 50.0  # one full pass per parameter: affordable on small models only
    options = InfluenceOptions
    target_free = True

    def estimate(self, trial, options: InfluenceOptions) -> Estimate:
        damping = options.resolved_damping(trial.settings.dataset)
        return Estimate(exact_self_influence(trial.learner, trial.data, damping))


class InfluenceFunctionsOriginalSign(Estimator):
    """``-infl``: the original example's stored value, for comparison only (no second solve)."""

    name = ORIGINAL_SIGN
    ranks = "minus Influence_functions: the original example's stored order (most helpful first)"
    cost_epochs = 0.1
    options = InfluenceOptions
    after = (NAME,)

    def estimate(self, trial, options) -> Estimate:
        return Estimate(original_sign(trial))


def original_sign(trial) -> np.ndarray:
    """Minus this trial's Influence_functions scores (``Trial.scores_of``)."""
    return -trial.scores_of(NAME)


ESTIMATORS = (InfluenceFunctions(), InfluenceFunctionsEkfac(), InfluenceFunctionsOriginalSign(),
              InfluenceFunctionsEkfacSelf(), InfluenceFunctionsSelf())
