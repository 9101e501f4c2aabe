"""Data cleansing with Koh & Liang's influence functions: train, estimate influence
(default: Influence_functions_ekfac and Random; Influence_functions for the exact solvers; any
registered estimator with --methods), retrain without the most harmful samples, summarise.

v ~= (H + alpha I)^-1 u (H: Hessian of the mean training loss at the final parameters, batch norm
in inference mode; u: gradient of the mean validation loss), influence = <v, grad l(z_j)> / n_train,
negative = harmful. Each solve's relative residual ||(H + alpha I) v - u|| / ||u|| goes to
summary/solver.csv. Influence_functions_ekfac replaces the solve by an EK-FAC approximation of the
Gauss-Newton matrix (two passes over the training set; --ekfac-fisher). See README.md and
docs/SPEC.md sections 2-4.
"""
from __future__ import annotations

import sys
from typing import List, Optional

from cleansing.cli import Driver, run_main
from estimators import REGISTRY

DRIVER = Driver(__doc__, out="output_influence_functions", methods=("Influence_functions_ekfac", "Random"))


def main(argv: Optional[List[str]] = None) -> int:
    return DRIVER.main(argv, REGISTRY)


if __name__ == "__main__":
    sys.exit(run_main(main))
