"""Parameter-free element-wise functions: the activations, MulScalar, AddScalar; Dropout and Identity
as the identity (Dropout in training too: the estimators replay training steps exactly, and a random
mask per step would have to be recorded)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, Tuple

import nnabla.functions as F

from common.fastmul import mul

from .base import Layer

_FUNCTIONS: Dict[str, Callable] = {
    "ReLU": lambda h, a: F.relu(h),
    "LeakyReLU": lambda h, a: F.leaky_relu(h, a),
    "ELU": lambda h, a: F.elu(h, a),
    "Tanh": lambda h, a: F.tanh(h),
    "Sigmoid": lambda h, a: F.sigmoid(h),
    "Swish": lambda h, a: F.swish(h),
    "MulScalar": lambda h, a: F.mul_scalar(h, a),
    "AddScalar": lambda h, a: F.add_scalar(h, a),
    "Identity": lambda h, a: h,
    "Dropout": lambda h, a: h,
}


@dataclass(frozen=True)
class Elementwise(Layer):
    """The function ``fn`` (an nnabla function type) with its scalar argument ``alpha``."""

    fn: str
    alpha: float = 0.0
    kind: ClassVar[str] = "elementwise"
    functions: ClassVar[Tuple[str, ...]] = tuple(_FUNCTIONS)

    def forward(self, h, p):
        return _FUNCTIONS[self.fn](h, self.alpha)

    def jvp(self, j, h, dh):
        """``f(h)`` and ``f'(h) dh`` (the derivative kept in the graph where it depends on ``h``, so
        that its own derivative enters the Hessian-vector products)."""
        out = self.forward(h, None)
        if not j.tangent or dh is None:
            return out, None
        if self.fn in ("Identity", "Dropout", "AddScalar"):
            return out, dh
        if self.fn == "MulScalar":
            return out, F.mul_scalar(dh, self.alpha)
        if self.fn in ("ReLU", "LeakyReLU", "ELU"):
            pos = F.greater_scalar(h, 0.0)
            pos.need_grad = False
            if self.fn == "ReLU":
                return out, mul(dh, pos)
            if self.fn == "LeakyReLU":
                return out, dh * F.add_scalar(F.mul_scalar(pos, 1.0 - self.alpha), self.alpha)
            neg = F.mul_scalar(F.exp(F.minimum_scalar(h, 0.0)), self.alpha)  # alpha e^h below 0
            return out, dh * (pos + F.r_sub_scalar(pos, 1.0) * neg)
        if self.fn == "Tanh":
            return out, dh * F.r_sub_scalar(out * out, 1.0)
        s = F.sigmoid(h)
        if self.fn == "Sigmoid":
            return out, dh * (s * F.r_sub_scalar(s, 1.0))
        return out, dh * (s + h * s * F.r_sub_scalar(s, 1.0))  # Swish: s + h s (1 - s)

    @classmethod
    def from_nnp(cls, f, inputs, shapes, where):
        alpha = {"LeakyReLU": lambda: f.leaky_relu_param.alpha, "ELU": lambda: f.elu_param.alpha,
                 "MulScalar": lambda: f.mul_scalar_param.val, "AddScalar": lambda: f.add_scalar_param.val}
        return cls(f.type, float(alpha[f.type]()) if f.type in alpha else 0.0)


#: the rectified linear unit
RELU = Elementwise("ReLU")
