"""Networks (cnn6, the paper's model; logreg and mlp for fast checks), each described once as a
list of layers (``models.networks``), and their loss."""
from .networks import (
    MODELS,
    Affine,
    BatchNorm,
    Conv,
    Layer,
    Mask,
    MaxPool,
    Model,
    ParametricLayer,
    ReLU,
    Tangent,
    Tap,
    build_model,
    count_trainable,
    run_layers,
)
from .nnp import NnpModel  # adds .nnp files to build_model

__all__ = ["MODELS", "Affine", "BatchNorm", "Conv", "Layer", "Mask", "MaxPool", "Model", "ParametricLayer", "ReLU",
           "NnpModel", "Tangent", "Tap", "build_model", "count_trainable", "run_layers"]
