"""Data cleansing with Koh & Liang's influence functions: train, estimate influence
(default: Influence_functions_ekfac and Random; Influence_functions for the exact solvers), retrain
without the most harmful samples, summarise.

v ~= (H + alpha I)^-1 u (H: Hessian of the mean training loss at the final parameters, batch norm
in inference mode; u: gradient of the mean validation loss), influence = <v, grad l(z_j)> / n_train,
negative = harmful. Each solve's relative residual ||(H + alpha I) v - u|| / ||u|| goes to
summary/solver.csv. Influence_functions_ekfac replaces the solve by an EK-FAC approximation of the
Gauss-Newton matrix (two passes over the training set; --ekfac-fisher). See README.md and docs/SPEC.md
sections 2-4.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from cleansing.cli import OneLineParser, add_run_arguments, positive_float, positive_int, run_main
from cleansing.pipeline import DEFAULT_REMOVE, config_fields, run
from influence_functions import (
    EKFAC,
    FISHERS,
    SOLVERS,
    EkfacOptions,
    InfluenceRunConfig,
    SolverOptions,
    merge_solver_logs,
)


def momentum(text: str) -> float:
    v = float(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"{text} must be in [0, 1)")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, "output_influence_functions", DEFAULT_REMOVE)
    p.add_argument("--methods", nargs="+", default=[EKFAC, "Random"],
                   help="estimators to run (default: %(default)s; Influence_functions: the exact solvers, "
                        "about 4 training epochs per iteration on cnn6)")
    d = SolverOptions()
    g = p.add_argument_group("influence functions")
    g.add_argument("--damping", type=positive_float, default=None,
                   help="alpha in (H + alpha I)^-1, and in EK-FAC's (G + alpha I)^-1 (default: 10.0 for cifar10, "
                        "0.1 otherwise, as the original)")
    g.add_argument("--solver", choices=SOLVERS, default=d.solver,
                   help="minres (default): MINRES on full-batch Hessian-vector products, converges also when "
                        "H + alpha I is indefinite (non-convex models); cg: conjugate gradient on the same products "
                        "(stops at negative curvature); sgd: the original "
                        "example's momentum SGD over mini-batches; lissa: Agarwal et al.'s stochastic series")
    g.add_argument("--cg-iters", type=positive_int, default=d.cg_iters,
                   help="cg, minres: most iterations, one full-batch product each (default %(default)s)")
    g.add_argument("--tol", type=positive_float, default=d.tol,
                   help="cg, minres: stop at this relative residual (default %(default)s)")
    g.add_argument("--sgd-epochs", type=positive_int, default=d.sgd_epochs, help="sgd: epochs (default %(default)s)")
    g.add_argument("--sgd-lr", type=positive_float, default=d.sgd_lr, help="sgd: learning rate (default %(default)s)")
    g.add_argument("--sgd-momentum", type=momentum, default=d.sgd_momentum, help="sgd: momentum (default %(default)s)")
    g.add_argument("--lissa-scale", type=positive_float, default=None,
                   help="lissa: scale, above the largest mini-batch Hessian eigenvalue + damping "
                        "(default: 1.2 x a 20-step power-iteration estimate)")
    g.add_argument("--lissa-depth", type=positive_int, default=d.lissa_depth,
                   help="lissa: recursion depth in mini-batch steps (default %(default)s)")
    g.add_argument("--lissa-repeats", type=positive_int, default=d.lissa_repeats,
                   help="lissa: independent runs averaged (default %(default)s)")
    g.add_argument("--ekfac-fisher", choices=FISHERS, default=EkfacOptions().fisher,
                   help="Influence_functions_ekfac: labels of the Fisher's gradients: sampled (default) from the "
                        "model's prediction (the true Fisher = Gauss-Newton matrix, Kronfluence's default); exact: "
                        "the expectation over all classes (one backward pass per class); empirical: the true labels")
    return p


def config_from_args(a: argparse.Namespace) -> InfluenceRunConfig:
    solver = SolverOptions(solver=a.solver, cg_iters=a.cg_iters, tol=a.tol, sgd_epochs=a.sgd_epochs,
                           sgd_lr=a.sgd_lr, sgd_momentum=a.sgd_momentum, lissa_scale=a.lissa_scale,
                           lissa_depth=a.lissa_depth, lissa_repeats=a.lissa_repeats)
    return InfluenceRunConfig(**config_fields(a), damping=a.damping, solver=solver,
                              ekfac=EkfacOptions(fisher=a.ekfac_fisher))


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    summary = run(cfg, overwrite=args.overwrite)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    solver = merge_solver_logs(args.output, cfg.seeds)
    if solver is not None:
        print(solver.drop(columns=["note"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"results in {args.output}/ (summary/summary.csv, summary/solver.csv, fig/result.png)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
