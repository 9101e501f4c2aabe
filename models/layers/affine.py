"""Affine (fully connected) on the flattened input: weight (inputs, *units), bias (units)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

import nnabla.functions as F
import nnabla.initializer as I
import numpy as np

from .base import Linear


@dataclass(frozen=True)
class Affine(Linear):
    """``units`` None: the number of classes. ``w_std`` None: Glorot-uniform weight (nnabla's
    ``PF.affine`` default), else normal with that standard deviation; zero bias either way."""

    units: Optional[Tuple[int, ...]] = None
    w_std: Optional[float] = None
    kind: ClassVar[str] = "affine"
    functions: ClassVar[Tuple[str, ...]] = ("Affine",)
    tap: ClassVar[str] = "affine"

    @classmethod
    def scoped(cls, scope: str, units: Optional[int] = None, w_std: Optional[float] = None) -> Affine:
        """Named as ``PF.affine`` under ``scope``: ``{scope}/affine/W`` and ``/b``."""
        return cls(f"{scope}/affine/W", f"{scope}/affine/b", None if units is None else (int(units),), w_std)

    def op(self, h, W, b):
        return F.affine(h, W, b, base_axis=1)

    def _units(self, num_classes: int) -> Tuple[int, ...]:
        return (num_classes,) if self.units is None else tuple(self.units)

    def create(self, h, rng, num_classes):
        units = self._units(num_classes)
        inputs = int(np.prod(h.shape[1:]))
        if self.w_std is None:
            w_init = I.UniformInitializer(I.calc_uniform_lim_glorot(inputs, int(np.prod(units))), rng=rng)
            b_init = I.ConstantInitializer()
        else:
            w_init, b_init = I.NormalInitializer(self.w_std, rng=rng), I.ConstantInitializer(0.0)
        return self._create(h, (inputs,) + units, units, w_init, b_init)

    def channels(self, c, num_classes):
        return int(np.prod(self._units(num_classes)))

    @classmethod
    def from_nnp(cls, f, inputs, shapes, where):
        from common.errors import UserError
        if f.affine_param.base_axis not in (0, 1):
            raise UserError(f"{where}: function Affine ({f.name}) with base_axis {f.affine_param.base_axis} is not "
                            f"supported")
        return cls(inputs[1], inputs[2] if len(inputs) > 2 else None, tuple(shapes[inputs[1]][1:]))

    # ------------------------------------------------------------------ per-sample factors
    @staticmethod
    def tap_activations(h: np.ndarray, prepared: object) -> np.ndarray:
        """(B, 1, inputs)."""
        return h.reshape(len(h), 1, -1)

    @staticmethod
    def tap_output_grads(g: np.ndarray) -> np.ndarray:
        """(B, 1, units)."""
        return g.reshape(len(g), 1, -1)
