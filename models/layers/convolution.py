"""Convolution: any kernel, padding, stride, dilation and groups; weight (maps, in / group, *kernel)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence, Tuple

import nnabla.functions as F
import nnabla.initializer as I
import numpy as np

from .base import Linear, dims


def unfold(h: np.ndarray, kernel: Sequence[int], pad: Sequence[int], stride: Sequence[int],
           dilation: Sequence[int]) -> np.ndarray:
    """(B, C, H, W) -> (B, positions, C * kh * kw): the patches a 2-D convolution of one group sees, in
    the order of ``W.reshape(out, C * kh * kw)`` and of its output positions (KFC's factors)."""
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = kernel, pad, stride, dilation
    B, C = h.shape[:2]
    p = np.pad(h, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(p, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # (B, C, Ho, Wo, kh, kw)
    return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(B, -1, C * kh * kw)


@dataclass(frozen=True)
class Convolution(Linear):
    """``maps`` output channels, ``kernel`` (kh, kw); Glorot-uniform weight and zero bias, as nnabla's
    ``PF.convolution`` draws them."""

    maps: int
    kernel: Tuple[int, ...]
    pad: Tuple[int, ...] = ()
    stride: Tuple[int, ...] = ()
    dilation: Tuple[int, ...] = ()
    group: int = 1
    kind: ClassVar[str] = "convolution"
    functions: ClassVar[Tuple[str, ...]] = ("Convolution",)
    tap: ClassVar[str] = "conv"

    @classmethod
    def scoped(cls, scope: str, maps: int, kernel: Tuple[int, ...] = (3, 3), pad: Tuple[int, ...] = (1, 1)
               ) -> Convolution:
        """Named as ``PF.convolution`` under ``scope``: ``{scope}/conv/W`` and ``/b``."""
        return cls(f"{scope}/conv/W", f"{scope}/conv/b", maps, tuple(kernel), tuple(pad))

    def op(self, h, W, b):
        n = len(self.kernel)
        return F.convolution(h, W, b, base_axis=1, pad=self.pad or (0,) * n, stride=self.stride or (1,) * n,
                             dilation=self.dilation or (1,) * n, group=self.group)

    def create(self, h, rng, num_classes):
        c = h.shape[1]
        w_init = I.UniformInitializer(I.calc_uniform_lim_glorot(c, self.maps, tuple(self.kernel)), rng=rng)
        return self._create(h, (self.maps, c // self.group) + tuple(self.kernel), (self.maps,), w_init,
                            I.ConstantInitializer())

    def channels(self, c, num_classes):
        return self.maps

    @classmethod
    def from_nnp(cls, f, inputs, shapes, where):
        from common.errors import UserError
        p = f.convolution_param
        if p.channel_last:
            raise UserError(f"{where}: function Convolution ({f.name}) with channel_last is not supported")
        if p.base_axis not in (0, 1):
            raise UserError(f"{where}: function Convolution ({f.name}) with base_axis {p.base_axis} is not supported")
        w_shape = shapes[inputs[1]]
        n = len(w_shape) - 2
        return cls(inputs[1], inputs[2] if len(inputs) > 2 else None, int(w_shape[0]), tuple(w_shape[2:]),
                   dims(p.pad) or (0,) * n, dims(p.stride) or (1,) * n, dims(p.dilation) or (1,) * n,
                   int(p.group) or 1)

    # ------------------------------------------------------------------ per-sample factors
    def check_tap(self, user):
        super().check_tap(user)
        if self.group != 1 or len(self.kernel) != 2:
            from common.errors import UserError
            raise UserError(f"{user} covers 2-D convolutions of one group; {self.w} is not one")

    def tap_activations(self, h: np.ndarray, prepared: object) -> np.ndarray:
        """(B, positions, in * kh * kw): the patches at each output position (the bias's 1 implicit)."""
        n = len(self.kernel)
        return unfold(h, self.kernel, self.pad or (0,) * n, self.stride or (1,) * n, self.dilation or (1,) * n)

    @staticmethod
    def tap_output_grads(g: np.ndarray) -> np.ndarray:
        """(B, positions, maps) output gradients."""
        return g.reshape(g.shape[0], g.shape[1], -1).transpose(0, 2, 1)
