"""Max, average and global average pooling."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Tuple

import nnabla.functions as F

from common.fastmul import mul

from .base import Layer, dims


@dataclass(frozen=True)
class Pooling(Layer):
    """``mode`` 'max', 'average' or 'global'; ``stride`` () is the kernel, ``pad`` () none."""

    mode: str
    kernel: Tuple[int, ...] = ()
    stride: Tuple[int, ...] = ()
    ignore_border: bool = True
    pad: Tuple[int, ...] = ()
    including_pad: bool = True
    kind: ClassVar[str] = "pooling"
    functions: ClassVar[Tuple[str, ...]] = ("MaxPooling", "AveragePooling", "GlobalAveragePooling")

    def forward(self, h, p):
        if self.mode == "global":  # the mean: differentiable twice, unlike the fused function
            return F.mean(h, axis=tuple(range(2, len(h.shape))), keepdims=True)
        stride, pad = self.stride or None, self.pad or None
        if self.mode == "max":
            return F.max_pooling(h, self.kernel, stride, self.ignore_border, pad)
        return F.average_pooling(h, self.kernel, stride, self.ignore_border, pad, including_pad=self.including_pad)

    @property
    def disjoint(self) -> bool:
        """Whether the pooling windows do not overlap (max pooling's tangent rule needs it)."""
        return self.mode != "max" or all(s >= k for s, k in zip(self.stride or self.kernel, self.kernel))

    def jvp(self, j, h, dh):
        """Average pooling is linear; max pooling passes ``dh`` at the element it picks: nnabla's own
        choice on ties, from ``max_pooling_backward`` (the gather nnabla's double backward uses,
        ``MaxPoolingBackwardDataGrad``, has a wrong graph-level backward in 1.39); windows must not
        overlap."""
        out = self.forward(h, None)
        if not j.tangent or dh is None:
            return out, None
        if self.mode != "max":
            return out, self.forward(dh, None)
        stride, pad = self.stride or None, self.pad or None
        pick = F.max_pooling_backward(F.constant(1.0, out.shape), h, self.kernel, stride, self.ignore_border, pad)
        pick.need_grad = False
        return out, F.sum_pooling(mul(dh, pick), self.kernel, stride, self.ignore_border, pad)

    @classmethod
    def from_nnp(cls, f, inputs, shapes, where):
        if f.type == "GlobalAveragePooling":
            return cls("global")
        from common.errors import UserError
        p = f.max_pooling_param if f.type == "MaxPooling" else f.average_pooling_param
        if p.channel_last:
            raise UserError(f"{where}: function {f.type} ({f.name}) with channel_last is not supported")
        return cls("max" if f.type == "MaxPooling" else "average", dims(p.kernel), dims(p.stride),
                   bool(p.ignore_border), dims(p.pad), bool(getattr(p, "including_pad", True)))
