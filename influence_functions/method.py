"""The "Influence_functions" and "Influence_functions_ekfac" methods of the pipeline and the run
settings they read.

``InfluenceRunConfig`` is a ``RunConfig`` with the damping and solver settings. Trials run in
spawned processes receive the config by pickling, which imports this module there and so
registers the method in the child as well. The settings are part of the run manifest: an output
folder holds one solver setting (influence CSVs that exist are not recomputed).

Each trial's solve is written to ``logs/solver_seed_<k>.csv`` (EK-FAC's fit to
``logs/solver_influence_functions_ekfac_seed_<k>.csv``); ``merge_solver_logs`` gathers them into
``summary/solver.csv``. The EK-FAC setting (``ekfac_fisher``) enters the manifest only when the
EK-FAC method is run, so the manifests of runs without it are unchanged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
import pandas as pd

from cleansing.influence_csv import read_influence_csv, scores_by_position
from cleansing.outdir import method_scope
from cleansing.pipeline import Method, RunConfig, Trial, register_method
from common.errors import UserError
from common.fileio import write_csv_atomic

from .ekfac import EkfacOptions, ekfac_influence
from .estimator import SOLVER_COLUMNS, default_damping, influence_functions, solver_row
from .solvers import SolverInfo, SolverOptions

NAME = "Influence_functions"
#: The same influence with an EK-FAC approximation of the Gauss-Newton matrix instead of a solve.
EKFAC = "Influence_functions_ekfac"
#: The original example's stored value (the negated estimate), as a method for comparison only.
ORIGINAL_SIGN = "Influence_functions_original_sign"
DIVERGED = 1.0  # a residual above this is worse than v = 0


@dataclass
class InfluenceRunConfig(RunConfig):
    """``RunConfig`` plus the influence-function settings (damping None: 10.0 cifar10, else 0.1)."""

    out: str = "output_influence_functions"
    methods: tuple = (EKFAC, "Random")
    damping: Optional[float] = None
    solver: SolverOptions = field(default_factory=SolverOptions)
    ekfac: EkfacOptions = field(default_factory=EkfacOptions)

    @property
    def resolved_damping(self) -> float:
        return default_damping(self.dataset) if self.damping is None else float(self.damping)

    def manifest(self) -> dict:
        return {**super().manifest(), "damping": self.resolved_damping, **asdict(self.solver),
                "ekfac_fisher": self.ekfac.fisher}

    def manifest_defaults(self) -> dict:
        return {**super().manifest_defaults(), "ekfac_fisher": EkfacOptions().fisher}  # recorded since EK-FAC

    def manifest_scopes(self) -> dict:
        """The solver settings invalidate only the influence-function methods' influence and scores
        (damping all of them, ``ekfac_fisher`` EK-FAC's)."""
        own = method_scope(NAME)
        return {**super().manifest_scopes(), "damping": own, **{k: own for k in asdict(self.solver)},
                "ekfac_fisher": method_scope(EKFAC)}


def solver_log(root: Union[str, Path], seed: int, method: str = NAME) -> Path:
    name = f"solver_seed_{seed}.csv" if method == NAME else f"solver_{method.lower()}_seed_{seed}.csv"
    return Path(root) / "logs" / name


def _settings(trial: Trial):
    cfg = trial.cfg
    damping = getattr(cfg, "resolved_damping", None)
    if damping is None:
        damping = default_damping(cfg.dataset)
    return damping, getattr(cfg, "solver", SolverOptions())


def compute(trial: Trial) -> np.ndarray:
    """Influence-function scores of one trial; logs and records the solver's report."""
    damping, options = _settings(trial)
    scores, info = influence_functions(trial.learner, trial.data, trial.u, damping, options,
                                       batch_size=trial.cfg.train.batch_size, seed=trial.seed,
                                       show_progress=trial.cfg.show_progress, desc=f"{NAME} seed {trial.seed}")
    row = solver_row(NAME, trial.seed, damping, info)
    write_csv_atomic(solver_log(trial.paths.root, trial.seed), pd.DataFrame([row], columns=SOLVER_COLUMNS))
    print(f"{NAME} seed {trial.seed}: {info.solver} solver, damping {damping:g}, {info.iterations} iterations, "
          f"relative residual {info.residual:.3g}, {info.seconds:.1f} s" + (f" ({info.note})" if info.note else ""))
    if not np.all(np.isfinite(scores)):
        raise UserError(f"the {info.solver} solve of (H + {damping:g} I) v = u diverged for seed {trial.seed} "
                        f"({info.note or 'non-finite v'}); use --solver cg or raise --damping")
    if info.residual > DIVERGED:
        print(f"warning: {NAME} seed {trial.seed}: the {info.solver} solve did not converge (relative residual "
              f"{info.residual:.3g} > 1, worse than v = 0): its scores are not meaningful; "
              f"use --solver cg or raise --damping")
    return scores


def compute_ekfac(trial: Trial) -> np.ndarray:
    """EK-FAC influence scores of one trial (``influence_functions.ekfac``); logs the fit's times."""
    damping, _ = _settings(trial)
    options = getattr(trial.cfg, "ekfac", EkfacOptions())
    scores, ek = ekfac_influence(trial.learner, trial.data, trial.u, damping, options, seed=trial.seed,
                                 show_progress=trial.cfg.show_progress, desc=f"{EKFAC} seed {trial.seed}")
    times = ", ".join(f"{k} {v:.1f} s" for k, v in ek.seconds.items())
    info = SolverInfo(f"ekfac-{ek.fisher}", passes=float(ek.passes), seconds=ek.total_seconds,
                      notes=[f"EK-FAC ({ek.fisher} labels): {times}; residual not measured (an approximation, "
                             f"not a solve of (H + alpha I) v = u)"])
    write_csv_atomic(solver_log(trial.paths.root, trial.seed, EKFAC),
                     pd.DataFrame([solver_row(EKFAC, trial.seed, damping, info)], columns=SOLVER_COLUMNS))
    print(f"{EKFAC} seed {trial.seed}: EK-FAC with {ek.fisher} labels, damping {damping:g}, {ek.passes} passes "
          f"over the training set, {times}")
    return scores


def compute_original_sign(trial: Trial) -> np.ndarray:
    """``-infl``: what the original example stored, so that its ascending order removes the most
    *helpful* samples first. Reuses this trial's Influence_functions CSV (no second solve)."""
    csv = trial.paths.influence_csv(NAME, trial.seed)
    if not csv.is_file():
        raise UserError(f"{ORIGINAL_SIGN} reuses the {NAME} scores: list {NAME} before it in --methods")
    return -scores_by_position(read_influence_csv(csv, len(trial.data.train)))


def merge_solver_logs(root: Union[str, Path], seeds: Iterable[int]) -> Optional[pd.DataFrame]:
    """Write ``summary/solver.csv`` from the trials' solver logs (None when there are none)."""
    frames = [pd.read_csv(f) for m in (NAME, EKFAC) for s in seeds if (f := solver_log(root, s, m)).is_file()]
    if not frames:
        return None
    table = pd.concat(frames, ignore_index=True)
    write_csv_atomic(Path(root) / "summary" / "solver.csv", table)
    return table


def register() -> None:
    register_method(Method(NAME, compute, group=NAME))
    register_method(Method(EKFAC, compute_ekfac))
    register_method(Method(ORIGINAL_SIGN, compute_original_sign, group=NAME))
