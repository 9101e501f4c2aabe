"""Koh & Liang's influence functions (ICML 2017) as the pipeline's "Influence_functions" estimators.

``infl_j = <v, grad l(z_j)> / n_train`` with ``v ~= (H + alpha I)^-1 u``: ``H`` the Hessian of the
mean training loss at the final parameters (batch norm in inference mode), ``u`` the gradient of
the mean validation loss, ``alpha`` 10.0 for cifar10 and 0.1 otherwise. Negative = harmful
(docs/SPEC.md section 2). Solvers (``solvers``): MINRES (default) and conjugate gradient on full-batch
Hessian-vector products, the original example's momentum SGD, and LiSSA; each reports its
relative residual on the full-batch Hessian.

"Influence_functions_ekfac" (``ekfac``): the same score with ``v = (G + alpha I)^-1 u``, ``G`` an
eigenvalue-corrected Kronecker-factored (EK-FAC) approximation of the Gauss-Newton matrix, fitted
in two passes over the training set: no iterative solve.
``inverse``: the inverse-Hessian math; ``estimators``: the pipeline's estimators.
"""
from .ekfac import FISHERS, Ekfac, EkfacInfo, EkfacOptions, ekfac_influence, ekfac_self_influence
from .estimators import (
    EKFAC,
    EKFAC_SELF,
    ESTIMATORS,
    EXACT_SELF,
    NAME,
    ORIGINAL_SIGN,
    InfluenceFunctions,
    InfluenceFunctionsEkfac,
    InfluenceFunctionsEkfacSelf,
    InfluenceFunctionsOriginalSign,
    InfluenceFunctionsSelf,
    InfluenceOptions,
    original_sign,
)
from .inverse import default_damping, exact_self_influence, influence_functions, influence_scores, inverse_hvp
from .solvers import SOLVERS, SolverInfo, SolverOptions, conjugate_gradient, lissa, minres, momentum_sgd, solve

__all__ = ["EKFAC", "EKFAC_SELF", "ESTIMATORS", "EXACT_SELF", "FISHERS", "NAME", "ORIGINAL_SIGN", "SOLVERS", "Ekfac",
           "EkfacInfo", "EkfacOptions", "InfluenceFunctions", "InfluenceFunctionsEkfac", "InfluenceFunctionsEkfacSelf",
           "InfluenceFunctionsOriginalSign", "InfluenceFunctionsSelf", "InfluenceOptions", "SolverInfo",
           "SolverOptions",
           "conjugate_gradient", "default_damping", "ekfac_influence", "ekfac_self_influence", "exact_self_influence",
           "influence_functions", "influence_scores", "inverse_hvp", "lissa", "minres", "momentum_sgd", "original_sign",
           "solve"]
