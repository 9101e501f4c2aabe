"""Reshape to a file's shape."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Tuple

import nnabla.functions as F

from .base import Layer, dims


@dataclass(frozen=True)
class Reshape(Layer):
    """To ``shape`` (its first dimension is the batch's, replaced by the input's)."""

    shape: Tuple[int, ...]
    kind: ClassVar[str] = "reshape"
    functions: ClassVar[Tuple[str, ...]] = ("Reshape",)

    def forward(self, h, p):
        return F.reshape(h, (h.shape[0],) + tuple(self.shape[1:]))

    def jvp(self, j, h, dh):
        return self.forward(h, None), None if dh is None or not j.tangent else self.forward(dh, None)

    @classmethod
    def from_nnp(cls, f, inputs, shapes, where):
        return cls(dims(f.reshape_param.shape))
