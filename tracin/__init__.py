"""TracIn (Pruthi et al. 2020) as the pipeline's "TracIn" and "TracIn_self" estimators (``tracin``
for the math, ``estimators`` for the adapters)."""
from .estimators import ESTIMATORS, NAME, SELF, TracIn, TracInOptions, TracInSelf
from .tracin import LAYERS, checkpoint_scores, default_checkpoints, tracin

__all__ = ["ESTIMATORS", "LAYERS", "NAME", "SELF", "TracIn", "TracInOptions", "TracInSelf", "checkpoint_scores",
           "default_checkpoints", "tracin"]
