"""What every layer kind is: one class that carries its whole description.

A kind (a subclass of ``Layer``, one per file of this package) knows

* ``create``: its parameters, created by name in the current parameter scope (shapes only pass);
* ``forward``: its output in a ``Pass`` (training or inference mode, an optional per-sample
  ``Tangent``, per-sample turn-over dropout masks, per-row weights in batch statistics);
* ``jvp``: its forward-mode (tangent) rule, ``(h, dh) -> (out, d out)``, walked by
  ``models.autodiff._Jvp``;
* for a kind with parameters, its per-sample gradient factors (``tap``, ``tap_activations``,
  ``tap_output_grads``: EK-FAC and TracIn, ``models.per_sample``);
* ``from_nnp``: how it is read from the functions of an ``.nnp`` file (``models.nnp``).

The built-in models (``models.networks``) and the networks read from files are lists of the same
kinds; adding a kind is adding one file here and its class to ``KINDS``.

The tangent trick: with a ``Tangent(eps, U)`` a linear layer ``f(h; W, b)`` computes
``f(h; W, b) + eps[i] * f(h; U_W, U_b)`` for sample ``i``. ``eps`` is a (B,) variable held at 0, so
``d(sum_i loss_i)/d eps_i = <U, g_i>``: the product of ``U`` with sample ``i``'s share of the
mini-batch gradient, for the whole batch in one backward pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping, NamedTuple, Optional, Sequence, Tuple

import nnabla as nn
import nnabla.functions as F
import numpy as np


@dataclass
class Tangent:
    """A direction ``U`` (same keys and shapes as the trainable parameters) and per-sample ``eps``."""

    eps: nn.Variable
    direction: Mapping[str, nn.Variable]


class Pass(NamedTuple):
    """What a forward pass over layers needs besides its input (see ``run_layers``)."""

    params: Mapping[str, nn.Variable]
    train: bool
    tangent: Optional[Tangent]
    stats: Mapping[str, nn.Variable]
    masks: Optional[Mapping[str, nn.Variable]]
    row_weights: Optional[nn.Variable]


class Layer:
    """One step of a network, as data (a frozen dataclass per kind)."""

    kind: ClassVar[str] = ""
    #: the nnabla function types (``.nnp`` files) this kind reads (``from_nnp``)
    functions: ClassVar[Tuple[str, ...]] = ()
    #: the layout of its per-sample gradient factors ('conv', 'affine', 'bn'); '' without parameters
    tap: ClassVar[str] = ""

    def create(self, h: nn.Variable, rng: np.random.RandomState, num_classes: int) -> nn.Variable:
        """Create the layer's parameters (if any) in the current parameter scope; the output (shapes only)."""
        return self.forward(h, None)

    def forward(self, h: nn.Variable, p: Optional[Pass]) -> nn.Variable:
        """The layer's output on ``h`` (``p`` None: a kind without parameters outside a pass)."""
        raise NotImplementedError

    def jvp(self, j, h: nn.Variable, dh: Optional[nn.Variable]) -> Tuple[nn.Variable, Optional[nn.Variable]]:
        """``(out, d out)`` for the tangent ``dh`` of ``h`` (None: ``h`` does not depend on the
        parameters); ``j`` is the ``models.autodiff._Jvp`` pass (parameters ``P``, direction ``V``,
        ``stats``, ``train``, ``tangent``, row ``weights``; it collects ``taps`` and ``batch_stats``)."""
        raise NotImplementedError

    def channels(self, c: int, num_classes: int) -> int:
        """Channels (or units) of the output, given ``c`` at the input."""
        return c

    @classmethod
    def from_nnp(cls, f, inputs: Sequence[str], shapes: Mapping[str, Tuple[int, ...]], where: str) -> Layer:
        """The layer of the file function ``f`` (its ``inputs``, the variables' ``shapes``; ``where``:
        the file, for one-line errors)."""
        raise NotImplementedError


class Tap(NamedTuple):
    """A layer with parameters, its input and its output, recorded by a forward pass."""

    layer: Layer
    input: nn.Variable
    output: nn.Variable


def masked(h: nn.Variable, masks: Optional[Mapping[str, nn.Variable]], name: str) -> nn.Variable:
    """``h`` times ``masks[name]`` (B, channels) per row and channel; ``h`` where there is none."""
    if masks is None or name not in masks:
        return h
    m = masks[name]
    return h * F.reshape(m, m.shape + (1,) * (len(h.shape) - len(m.shape)))


def dims(msg) -> Tuple[int, ...]:
    """A file's shape message as a tuple."""
    return tuple(int(d) for d in msg.dim)


@dataclass(frozen=True)
class Linear(Layer):
    """A layer ``op(h, W, b)`` linear in its parameters: weight ``w`` and bias ``b`` (None: no bias),
    named in full (``conv1/conv/W``)."""

    w: str
    b: Optional[str]

    def op(self, h: nn.Variable, W: nn.Variable, b: Optional[nn.Variable]) -> nn.Variable:
        """The linear map, for any ``W`` and ``b`` (or None) of the parameters' shapes."""
        raise NotImplementedError

    @property
    def prefix(self) -> str:
        """The parameters' common scope (``conv1/conv``)."""
        return self.w.rsplit("/", 1)[0]

    def parameter_names(self) -> Tuple[str, ...]:
        """The trainable parameters, in the order of the per-sample factors (``[W | b]``)."""
        return (self.w,) if self.b is None else (self.w, self.b)

    def _create(self, h: nn.Variable, w_shape: Sequence[int], b_shape: Sequence[int], w_init, b_init) -> nn.Variable:
        W = nn.parameter.get_parameter_or_create(self.w, tuple(int(s) for s in w_shape), w_init, True)
        b = None
        if self.b:
            b = nn.parameter.get_parameter_or_create(self.b, tuple(int(s) for s in b_shape), b_init, True)
        return self.op(h, W, b)

    def forward(self, h, p):
        out = self.op(h, p.params[self.w], p.params[self.b] if self.b else None)
        if p.tangent is not None:
            U = p.tangent.direction
            t = self.op(h, U[self.w], U[self.b] if self.b else None)
            out = out + F.reshape(p.tangent.eps, (-1,) + (1,) * (len(out.shape) - 1)) * t
        return out

    def jvp(self, j, h, dh):
        """``op(h, W)`` and ``op(dh, W) + op(h, V)``; records ``(out, op(h, V))`` in ``j.taps``: the
        parameters' own tangent, whose product with the output gradient is the per-sample ``<V, g_i>``."""
        W = j.P[self.w]
        out = self.op(h, W, j.P[self.b] if self.b else None)
        t = self.op(h, j.V[self.w], j.V[self.b] if self.b else None)
        j.taps.append((out, t))
        if not j.tangent:
            return out, None
        return out, (t if dh is None else self.op(dh, W, None) + t)

    def check_tap(self, user: str) -> None:
        """One-line ``UserError`` where ``user`` (EK-FAC, TracIn) cannot factor this layer's gradients."""
        if self.b is None:
            from common.errors import UserError
            raise UserError(f"{user} covers linear layers with a bias; {self.w} has none")

    @staticmethod
    def sample_gradients(a: np.ndarray, g: np.ndarray) -> np.ndarray:
        """(B, out, in + 1) per-sample gradients ``G_n = sum_t g_t [a_t, 1]^T`` of ``M = [W | b]``."""
        return np.concatenate([np.matmul(g.transpose(0, 2, 1), a), g.sum(axis=1)[:, :, None]], axis=2)

    def tap_prepare(self, params: Mapping[str, nn.Variable]) -> object:
        """What ``tap_activations`` reads of the current parameters (nothing for a linear layer)."""
        return None

