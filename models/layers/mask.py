"""A turn-over dropout mask point of a built-in model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import Layer, masked


@dataclass(frozen=True)
class Mask(Layer):
    """The point ``name``: the pass's ``masks[name]`` (B, channels), if given, multiplies the
    activation per row and channel; otherwise the identity. Not in the forward-mode graphs (masks
    are fixed per row there: the identity)."""

    name: str
    kind: ClassVar[str] = "mask"

    def create(self, h, rng, num_classes):
        return h

    def forward(self, h, p):
        return masked(h, p.masks, self.name)

    def jvp(self, j, h, dh):
        return h, dh
