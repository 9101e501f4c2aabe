"""Koh & Liang's influence functions (ICML 2017) as the pipeline's "Influence_functions" method.

``infl_j = <v, grad l(z_j)> / n_train`` with ``v ~= (H + alpha I)^-1 u``: ``H`` the Hessian of the
mean training loss at the final parameters (batch norm in inference mode), ``u`` the gradient of
the mean validation loss, ``alpha`` 10.0 for cifar10 and 0.1 otherwise. Negative = harmful
(docs/SPEC.md section 2). Solvers (``solvers``): MINRES (default) and conjugate gradient on full-batch
Hessian-vector products, the original example's momentum SGD, and LiSSA; each reports its
relative residual on the full-batch Hessian.

"Influence_functions_ekfac" (``ekfac``): the same score with ``v = (G + alpha I)^-1 u``, ``G`` an
eigenvalue-corrected Kronecker-factored (EK-FAC) approximation of the Gauss-Newton matrix, fitted
in two passes over the training set: no iterative solve.

Importing the package registers the method with ``cleansing.pipeline``.
"""
from .ekfac import FISHERS, Ekfac, EkfacInfo, EkfacOptions, ekfac_influence
from .estimator import default_damping, influence_functions, influence_scores, inverse_hvp
from .method import (
                     EKFAC,
                     NAME,
                     ORIGINAL_SIGN,
                     InfluenceRunConfig,
                     compute,
                     compute_ekfac,
                     compute_original_sign,
                     merge_solver_logs,
                     register,
)
from .solvers import SOLVERS, SolverInfo, SolverOptions, conjugate_gradient, lissa, minres, momentum_sgd, solve

register()

__all__ = ["EKFAC", "FISHERS", "Ekfac", "EkfacInfo", "EkfacOptions", "compute_ekfac", "ekfac_influence", "NAME",
           "ORIGINAL_SIGN", "compute_original_sign", "SOLVERS", "InfluenceRunConfig", "SolverInfo", "SolverOptions",
           "compute", "conjugate_gradient", "default_damping", "influence_functions", "influence_scores", "inverse_hvp",
           "lissa", "merge_solver_logs", "minres", "momentum_sgd", "register", "solve"]
