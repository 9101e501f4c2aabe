"""Networks (cnn6, the paper's model; logreg and mlp for fast checks) and their loss."""
from .networks import MODELS, Model, Tangent, build_model, count_trainable

__all__ = ["MODELS", "Model", "Tangent", "build_model", "count_trainable"]
