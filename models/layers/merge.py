"""Functions of several activations: Add2 (residual connections) and Concatenate (branches)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence, Tuple

import nnabla as nn
import nnabla.functions as F

from .base import Layer


@dataclass(frozen=True)
class Merge(Layer):
    """``Add2`` (the sum of two activations) or ``Concatenate`` (along ``axis``); a graph's node, not
    a chain's step: ``merge`` and ``jvp`` take lists."""

    fn: str
    axis: int = 1
    kind: ClassVar[str] = "merge"
    functions: ClassVar[Tuple[str, ...]] = ("Add2", "Concatenate")

    def merge(self, hs: Sequence[nn.Variable]) -> nn.Variable:
        """The function of the activations ``hs`` (in the file's input order)."""
        return hs[0] + hs[1] if self.fn == "Add2" else F.concatenate(*hs, axis=self.axis)

    def forward(self, h, p):
        raise TypeError("a merge layer takes several inputs: use merge()")

    def jvp(self, j, hs, dhs):
        """``merge`` of the activations and of their tangents (a missing tangent: zeros); both linear."""
        if not j.tangent or all(d is None for d in dhs):
            return self.merge(hs), None
        if self.fn == "Add2":
            present = [d for d in dhs if d is not None]
            return self.merge(hs), present[0] if len(present) == 1 else present[0] + present[1]
        return self.merge(hs), self.merge([F.constant(0.0, h.shape) if d is None else d for h, d in zip(hs, dhs)])

    @classmethod
    def from_nnp(cls, f, inputs, shapes, where):
        return cls("Add2") if f.type == "Add2" else cls("Concatenate", int(f.concatenate_param.axis))
