"""Turn-over dropout (Kobayashi et al., 2020): influence of a training instance from two
sub-networks of one model trained with instance-specific dropout masks.

Modules: ``masks`` (volatile mask generation), ``network`` (masked training step, split forward),
``train`` (TD training, loss curve), ``influence`` (pairwise and validation influence),
``report`` (loss-curve figure and error explanations), ``estimators`` (the pipeline's
"Turnover_dropout", "Turnover_dropout_self" and "Turnover_dropout_residual" and their options).
"""
from .estimators import (
    ESTIMATORS,
    NAME,
    RESIDUAL_NAME,
    SELF_NAME,
    TDOptions,
    TurnoverDropout,
    TurnoverDropoutResidual,
    TurnoverDropoutSelf,
)
from .masks import P_KEEP, flip, instance_masks, resolve_layers
from .network import TDLearner

__all__ = ["ESTIMATORS", "NAME", "P_KEEP", "RESIDUAL_NAME", "SELF_NAME", "TDLearner", "TDOptions", "TurnoverDropout",
           "TurnoverDropoutResidual", "TurnoverDropoutSelf", "flip", "instance_masks", "resolve_layers"]
