"""Turn-over dropout (Kobayashi et al., 2020): influence of a training instance from two
sub-networks of one model trained with instance-specific dropout masks.

Importing this package registers the "Turnover_dropout" method (mean influence on the validation
set), "Turnover_dropout_self" (self-influence, for finding mislabeled samples) and
"Turnover_dropout_residual" (the validation influence less what the instance's mask bits predict)
with ``cleansing.pipeline``.
Modules: ``masks`` (volatile mask generation), ``network`` (masked training step, split forward),
``train`` (TD training, loss curve, cache), ``influence`` (pairwise and validation influence),
``report`` (loss-curve and explain-errors figures), ``method`` (the pipeline method). The
label-noise detection check runs through the driver: ``eval_turnover_dropout.py --label-noise 0.1``.
"""
from .masks import P_KEEP, flip, instance_masks, resolve_layers
from .method import (
    METHOD,
    NAME,
    RESIDUAL_METHOD,
    RESIDUAL_NAME,
    SELF_METHOD,
    SELF_NAME,
    TDRunConfig,
    compute,
    compute_residual,
    compute_self,
)
from .network import TDLearner

__all__ = ["METHOD", "NAME", "P_KEEP", "RESIDUAL_METHOD", "RESIDUAL_NAME", "SELF_METHOD", "SELF_NAME", "TDLearner",
           "TDRunConfig", "compute", "compute_residual", "compute_self", "flip", "instance_masks", "resolve_layers"]
