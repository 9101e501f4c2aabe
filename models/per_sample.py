"""Per-sample gradients of the layers with parameters, in factored form, from one batched pass.

For a linear layer (affine, convolution) with input ``a`` (for a convolution the unfolded 3x3
patch at each output position ``t``, KFC) and pre-activation gradient ``g = d l / d out``, sample
n's gradient of the layer matrix ``M = [W | b]`` (``out x (in + 1)``) is ``G_n = sum_t g_{n,t}
[a_{n,t}, 1]^T``; for batch norm's scale and shift ``sum_hw g xhat`` and ``sum_hw g`` (inference
mode: ``xhat`` from the running statistics). ``TapGraph`` gives ``a`` and ``g`` for a whole batch
from one forward and one data-gradient backward pass (rows are independent in inference mode), never
one graph per sample. Users: EK-FAC (``influence_functions.ekfac``) and TracIn (``tracin``).
"""
from __future__ import annotations

from typing import Dict, List

import nnabla as nn
import nnabla.functions as F
import numpy as np

from common.errors import UserError

from .autodiff import Learner
from .networks import Affine, BatchNorm, Conv, Tap
from .nnp import NnpAffine, NnpBatchNorm, NnpConv, unfold

#: the kind of each layer with parameters
KINDS = {Affine: "affine", Conv: "conv", BatchNorm: "bn", NnpAffine: "affine", NnpConv: "conv", NnpBatchNorm: "bn"}


class TapGraph:
    """One inference-mode graph for a batch size: ``forward(x)`` gives class probabilities,
    ``backward(c)`` the gradients ``d <logits, c> / d out`` of every layer output (rows independent
    in inference mode, so row n's is sample n's ``g`` for the cotangent ``c_n = p_n - e_y``)."""

    def __init__(self, learner: Learner, batch: int, user: str = "EK-FAC"):
        model = learner.model
        # the parameters' data, without their gradients: only data gradients are computed
        params = {k: (v.get_unlinked_variable(need_grad=False) if v.need_grad else v)
                  for k, v in learner.params.items()}
        self.x = nn.Variable((batch,) + model.input_shape, need_grad=True)
        self.layers: List[Tap] = []
        logits = model.logits(self.x, params, train=False, stats=learner.params, taps=self.layers)
        self.logits = F.identity(logits)  # so that the last layer's output receives its gradient
        for t in self.layers:
            if type(t.layer) not in KINDS:
                raise ValueError(f"{user} does not cover layer {t.layer!r} of model {model.name!r}")
            t.input.persistent = True
            t.output.persistent = True
        self.logits.persistent = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x.d = x
        self.logits.forward(clear_no_need_grad=False)
        z = self.logits.d.astype(np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def inputs(self) -> List[np.ndarray]:
        return [t.input.d.copy() for t in self.layers]

    def backward(self, cotangent: np.ndarray) -> List[np.ndarray]:
        self.logits.backward(grad=cotangent.astype(np.float32), clear_buffer=False)
        return [t.output.g.copy() for t in self.layers]


def unfold3x3(h: np.ndarray) -> np.ndarray:
    """(B, C, H, W) -> (B, H*W, C*9) patches of a 3x3 convolution with padding 1, in the order of
    ``W.reshape(out, C*9)`` (channel, kernel row, kernel column)."""
    B, C, H, W = h.shape
    p = np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(p, (3, 3), axis=(2, 3))  # (B, C, H, W, 3, 3)
    return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(B, H * W, C * 9)


class LayerGradients:
    """One layer's per-sample gradients in factored form (``Tap`` of a ``TapGraph``)."""

    def __init__(self, tap: Tap, learner: Learner, user: str = "EK-FAC"):
        layer = tap.layer
        self.kind, self.unfold = KINDS[type(layer)], unfold3x3
        if isinstance(layer, (NnpConv, NnpAffine)):  # an .nnp file's layer (models.nnp): its own names
            self.prefix = layer.w.rsplit("/", 1)[0]
            if layer.b is None or (self.kind == "conv" and (layer.group != 1 or len(layer.w_shape) != 4)):
                raise UserError(f"{user} covers 2-D convolutions of one group and linear layers with a bias; "
                                f"{layer.w} is not one")
            if self.kind == "conv":
                self.unfold = lambda h: unfold(h, layer.w_shape[2:], layer.pad, layer.stride, layer.dilation)
            self.names = [layer.w, layer.b]
            return
        self.prefix = layer.mean[:-len("/mean")] if isinstance(layer, NnpBatchNorm) else layer.prefix
        if self.kind == "conv" and tuple(learner.params[f"{self.prefix}/W"].shape[2:]) != (3, 3):
            raise ValueError(f"{user} unfolds 3x3 convolutions with padding 1; {self.prefix} is not one")
        if self.kind == "bn":
            self.names = [f"{self.prefix}/gamma", f"{self.prefix}/beta"]
            self.mean = learner.params[f"{self.prefix}/mean"].d.astype(np.float32).reshape(1, -1, 1, 1)
            var = learner.params[f"{self.prefix}/var"].d.astype(np.float32).reshape(1, -1, 1, 1)
            self.inv = 1.0 / np.sqrt(var + np.float32(1e-5))
        else:
            self.names = [f"{self.prefix}/W", f"{self.prefix}/b"]

    def activations(self, h: np.ndarray) -> np.ndarray:
        """(B, T, in) layer inputs, the 3x3 patches for a convolution (the bias's homogeneous 1 is
        implicit, see ``sample_gradients``); bn: ``xhat``, (B, C, HW)."""
        if self.kind == "affine":
            return h.reshape(len(h), 1, -1)
        if self.kind == "conv":
            return self.unfold(h)
        if h.ndim == 2:  # batch norm after an affine layer (models.nnp)
            h = h.reshape(h.shape + (1, 1))
        return ((h - self.mean) * self.inv).reshape(h.shape[0], h.shape[1], -1)

    def output_grads(self, g: np.ndarray) -> np.ndarray:
        """(B, T, out) pre-activation gradients (bn: (B, C, HW))."""
        if self.kind == "affine":
            return g.reshape(len(g), 1, -1)
        if self.kind == "conv":
            return g.reshape(g.shape[0], g.shape[1], -1).transpose(0, 2, 1)
        return g.reshape(g.shape[0], g.shape[1], -1)

    def sample_gradients(self, a: np.ndarray, g: np.ndarray) -> np.ndarray:
        """(B, out, in + 1) per-sample gradients ``G_n = sum_t g_t [a_t, 1]^T`` of ``M = [W | b]``."""
        return np.concatenate([np.matmul(g.transpose(0, 2, 1), a), g.sum(axis=1)[:, :, None]], axis=2)

    def bn_grads(self, a: np.ndarray, g: np.ndarray) -> Dict[str, np.ndarray]:
        """Per-sample gradients of gamma and beta, (B, C) each."""
        return {self.names[0]: np.einsum("nct,nct->nc", g, a), self.names[1]: g.sum(axis=2)}

    def squared_norms(self, a: np.ndarray, g: np.ndarray) -> np.ndarray:
        """``||grad_layer l(z_n)||^2`` for every row n (float64), from ``activations`` and ``output_grads``."""
        if self.kind == "bn":
            return sum(np.square(v.astype(np.float64)).sum(axis=1) for v in self.bn_grads(a, g).values())
        if self.kind == "affine":  # G_n = g_n [a_n, 1]^T: ||G_n||^2 = ||g_n||^2 (||a_n||^2 + 1)
            g64, a64 = g[:, 0].astype(np.float64), a[:, 0].astype(np.float64)
            return np.square(g64).sum(axis=1) * (np.square(a64).sum(axis=1) + 1.0)
        return np.square(self.sample_gradients(a, g).astype(np.float64)).sum(axis=(1, 2))


class PerSampleGradients:
    """Per-sample loss gradients of a learner's trainable parameters at its current parameters
    (inference mode, un-augmented rows): ``squared_norms(x, y)`` and the last layer's factors."""

    def __init__(self, learner: Learner, user: str = "per-sample gradients"):
        self.learner, self.user = learner, user
        self._graphs: Dict[int, TapGraph] = {}
        self.layers: List[LayerGradients] = []

    def graph(self, batch: int) -> TapGraph:
        if batch not in self._graphs:
            self._graphs[batch] = TapGraph(self.learner, batch, self.user)
            if not self.layers:
                self.layers = [LayerGradients(t, self.learner, self.user) for t in self._graphs[batch].layers]
                covered = {k for b in self.layers for k in b.names}
                missing = set(self.learner.trainable) - covered
                if missing:
                    raise ValueError(f"{self.user} does not cover parameters {sorted(missing)}")
        return self._graphs[batch]

    def refresh(self) -> None:
        """Call after the learner's parameters changed (batch norm's statistics are read once per layer)."""
        self.layers = []
        self._graphs = {}

    def squared_norms(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``||grad l(z_n)||^2`` over all trainable parameters for every row."""
        g = self.graph(len(x))
        p = g.forward(x)
        outs = g.backward(p - np.eye(p.shape[1])[np.asarray(y).reshape(-1)])
        return sum(b.squared_norms(b.activations(h), b.output_grads(o))
                   for b, h, o in zip(self.layers, g.inputs(), outs))

    def last_layer(self, x: np.ndarray, y: np.ndarray):
        """``(a, g)`` of the last layer, an affine whose output is the logits: its inputs (B, in) and
        the loss gradients ``p - e_y`` of its output (B, C), both float64; one forward pass."""
        g = self.graph(len(x))
        if self.layers[-1].kind != "affine":
            raise ValueError(f"{self.user}: the last layer of model {self.learner.model.name!r} is not an affine")
        p = g.forward(x)
        a = g.layers[-1].input.d.reshape(len(x), -1).astype(np.float64)
        return a, p - np.eye(p.shape[1])[np.asarray(y).reshape(-1)]
