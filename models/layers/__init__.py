"""The layer kinds, one per file: each carries its parameters' creation, forward pass, forward-mode
rule, per-sample gradient factors and how it is read from an ``.nnp`` file (``base.Layer``). The
built-in models and the networks read from files are lists of these kinds."""
from typing import Dict, Tuple

from .affine import Affine
from .base import Layer, Linear, Pass, Tangent, Tap, masked
from .batch_norm import BatchNorm
from .convolution import Convolution
from .elementwise import RELU, Elementwise
from .mask import Mask
from .merge import Merge
from .pooling import Pooling
from .reshape import Reshape

#: every kind
KINDS: Tuple[type, ...] = (Convolution, Affine, BatchNorm, Elementwise, Pooling, Reshape, Merge, Mask)
#: nnabla function type (in an .nnp file) -> the kind that reads it
BY_FUNCTION: Dict[str, type] = {fn: kind for kind in KINDS for fn in kind.functions}

__all__ = ["Affine", "BY_FUNCTION", "BatchNorm", "Convolution", "Elementwise", "KINDS", "Layer", "Linear", "Mask",
           "Merge", "Pass", "Pooling", "RELU", "Reshape", "Tangent", "Tap", "masked"]
