"""Per-sample gradients of the layers with parameters, in factored form, from one batched pass.

For a linear layer (affine, convolution) with input ``a`` (for a convolution the unfolded kernel
patch at each output position ``t``, KFC) and pre-activation gradient ``g = d l / d out``, sample
n's gradient of the layer matrix ``M = [W | b]`` (``out x (in + 1)``) is ``G_n = sum_t g_{n,t}
[a_{n,t}, 1]^T``; for batch norm's scale and shift ``sum_hw g xhat`` and ``sum_hw g`` (inference
mode: ``xhat`` from the running statistics). Each kind lays out its own ``a`` and ``g``
(``models.layers``). ``TapGraph`` gives them for a whole batch from one forward and one
data-gradient backward pass (rows are independent in inference mode), never one graph per sample.
Users: EK-FAC (``influence_functions.ekfac``) and TracIn (``tracin``).
"""
from __future__ import annotations

from typing import Dict, List

import nnabla as nn
import nnabla.functions as F
import numpy as np

from .autodiff import Learner
from .layers import Linear, Tap


class TapGraph:
    """One inference-mode graph for a batch size: ``forward(x)`` gives class probabilities,
    ``backward(c)`` the gradients ``d <logits, c> / d out`` of every layer output (rows independent
    in inference mode, so row n's is sample n's ``g`` for the cotangent ``c_n = p_n - e_y``)."""

    def __init__(self, learner: Learner, batch: int):
        model = learner.model
        # the parameters' data, without their gradients: only data gradients are computed
        params = {k: (v.get_unlinked_variable(need_grad=False) if v.need_grad else v)
                  for k, v in learner.params.items()}
        self.x = nn.Variable((batch,) + model.input_shape, need_grad=True)
        self.layers: List[Tap] = []
        logits = model.logits(self.x, params, train=False, stats=learner.params, taps=self.layers)
        self.logits = F.identity(logits)  # so that the last layer's output receives its gradient
        for t in self.layers:
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


class LayerGradients:
    """One layer's per-sample gradients in factored form (``Tap`` of a ``TapGraph``)."""

    def __init__(self, tap: Tap, learner: Learner, user: str = "EK-FAC"):
        layer = tap.layer
        layer.check_tap(user)
        #: the factors' layout ('conv', 'affine', 'bn'), the parameters' scope and names
        self.layer, self.kind, self.prefix = layer, layer.tap, layer.prefix
        self.names = list(layer.parameter_names())
        self._prepared = layer.tap_prepare(learner.params)  # batch norm: its running statistics, read once

    def activations(self, h: np.ndarray) -> np.ndarray:
        """(B, T, in) layer inputs (a convolution's patches at each output position; the bias's
        homogeneous 1 is implicit, see ``sample_gradients``); bn: ``xhat``, (B, C, HW)."""
        return self.layer.tap_activations(h, self._prepared)

    def output_grads(self, g: np.ndarray) -> np.ndarray:
        """(B, T, out) pre-activation gradients (bn: (B, C, HW))."""
        return self.layer.tap_output_grads(g)

    @staticmethod
    def sample_gradients(a: np.ndarray, g: np.ndarray) -> np.ndarray:
        """(B, out, in + 1) per-sample gradients ``G_n = sum_t g_t [a_t, 1]^T`` of ``M = [W | b]``."""
        return Linear.sample_gradients(a, g)

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
            self._graphs[batch] = TapGraph(self.learner, batch)
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
