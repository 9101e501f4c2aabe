"""Networks: the layer kinds every network is made of (``models.layers``), the built-in models (cnn6,
the paper's model; logreg and mlp for fast checks) as lists of them (``models.networks``), networks
read from ``.nnp`` files (``models.nnp``) or given as a function (``models.custom``), and their loss."""
from .layers import (
           KINDS,
           Affine,
           BatchNorm,
           Convolution,
           Elementwise,
           Layer,
           Mask,
           Merge,
           Pooling,
           Reshape,
           Tangent,
           Tap,
)
from .networks import MODELS, Model, build_model, count_trainable, run_layers
from .nnp import NnpModel  # adds .nnp files to build_model

__all__ = ["KINDS", "MODELS", "Affine", "BatchNorm", "Convolution", "Elementwise", "Layer", "Mask", "Merge", "Model",
           "NnpModel", "Pooling", "Reshape", "Tangent", "Tap", "build_model", "count_trainable", "run_layers"]
