"""A learner with per-row turn-over dropout masks, and the model split at the masked layers.

``TDLearner`` extends ``models.autodiff.Learner`` (same parameter variables, same graph cache) with

* ``td_sgd_step``: one SGD step where row r of the mini-batch is multiplied by its own mask
  ``m(z_{idx[r]})`` at every chosen mask point (batch norm in training mode, as ``sgd_step``);
* ``features``: the network *below* the lowest masked point (inference mode). These layers do
  not depend on any mask, so influence computes them once per evaluated image and reuses them;
* ``head_losses``: per-row losses of the network *above* it, each row with its own masks;
* ``linear_head``: when the only masked point feeds the final affine layer directly (cnn6
  'block3', mlp 'fc1'), the head is linear in the mask, which the influence code exploits.

The split is the model's own layer list cut at the lowest chosen mask point (``Model.split``), run
by ``models.networks.run_layers``; ``tests/turnover_dropout`` checks that
``head(features(x), masks)`` equals ``model.logits(x, masks=masks)``. Layers that are not all
mask points of the model fall back to "no split" (features = the input, head = the whole network).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import nnabla as nn
import nnabla.functions as F
import numpy as np

from models.autodiff import Graph, Learner, persist
from models.layers import Affine
from models.networks import Model, per_sample_loss, run_layers

from .masks import P_KEEP, flip, instance_masks


class TDLearner(Learner):
    """A ``Learner`` whose rows carry instance-specific turn-over dropout masks.

    ``layers``: the mask points used (lowest first); ``mask_seed``: the seed masks are drawn from;
    ``network``: which network of an ensemble (each draws its masks from its own stream).
    """

    def __init__(self, model: Model, params, layers: Sequence[str], mask_seed: int, p: float = P_KEEP,
                 network: int = 0):
        super().__init__(model, params)
        shapes = model.mask_shapes()
        self.layers = tuple(layers)
        self.shapes: Dict[str, int] = {k: int(shapes[k]) for k in self.layers}
        self.mask_seed = int(mask_seed)
        self.network = int(network)
        self.p = float(p)
        self.split = model.chain and bool(self.layers) and all(name in model.mask_points for name in self.layers)
        if self.split:
            # below the lowest chosen mask point / from its mask on
            self._lower_layers, self._upper_layers = model.split(self.layers[0])
        self.feature_shape = self._feature_shape()

    @classmethod
    def from_learner(cls, learner: Learner, layers, mask_seed: int, p: float = P_KEEP,
                     network: int = 0) -> TDLearner:
        return cls(learner.model, learner.params, layers, mask_seed, p, network)

    # ------------------------------------------------------------------ masks
    def masks(self, indices: np.ndarray, flipped: bool = False) -> Dict[str, np.ndarray]:
        """``m(z_i)`` (or ``m~(z_i)``) for training positions ``indices``."""
        m = instance_masks(indices, self.mask_seed, self.shapes, self.p, network=self.network)
        return flip(m, self.p) if flipped else m

    def _mask_vars(self, batch: int) -> Dict[str, nn.Variable]:
        return {k: nn.Variable((batch, c)) for k, c in self.shapes.items()}

    def _set_masks(self, g: Graph, masks: Mapping[str, np.ndarray]) -> None:
        for k, var in g.masks.items():
            var.d = masks[k]

    # ------------------------------------------------------------------ training
    def _build_td_train(self, batch: int, train: bool) -> Graph:
        x, y = self._inputs(batch)
        scale = nn.Variable(())
        masks = self._mask_vars(batch)
        logits = self.model.logits(x, self.params, train=True, stats=self.params, masks=masks)
        losses = per_sample_loss(logits, y)
        loss = F.sum(losses) * scale
        return Graph(x=x, y=y, scale=scale, masks=masks, loss=persist(loss), losses=persist(losses))

    def td_sgd_step(self, x: np.ndarray, y: np.ndarray, indices: np.ndarray, lr: float,
                    batch_size: Optional[int] = None, masks: Optional[Mapping[str, np.ndarray]] = None) -> float:
        """theta <- theta - (lr / batch_size) * sum_r grad l(f^{m(z_idx[r])}, z_r); returns the mean loss.

        Row r is multiplied by its own mask at every masked point, so the units that ``m(z_r)``
        drops (and the parameters only they reach) receive no gradient from row r.
        ``masks`` overrides the masks (tests).
        """
        n = len(x)
        g = self._graph("td_train", n, True, self._build_td_train)
        g.x.d, g.y.d = x, self._onehot(y)
        self._set_masks(g, self.masks(indices) if masks is None else masks)
        return self._apply_sgd(g, lr, batch_size or n)

    # ------------------------------------------------------------------ split forward (inference)
    def _feature_shape(self) -> tuple:
        if not self.split:
            return self.model.input_shape
        x = nn.Variable((1,) + self.model.input_shape)
        with nn.auto_forward(False):
            h = self._lower(x)
        return tuple(h.shape[1:])

    def _lower(self, x):
        return run_layers(self._lower_layers, x, self.params, train=False)

    def _upper(self, h, masks):
        if not self.split:
            return self.model.logits(h, self.params, train=False, masks=masks)
        return run_layers(self._upper_layers, h, self.params, train=False, masks=masks)

    def _build_lower(self, batch: int, train: bool) -> Graph:
        x = nn.Variable((batch,) + self.model.input_shape)
        return Graph(x=x, h=persist(self._lower(x)))

    def _build_head(self, batch: int, train: bool) -> Graph:
        h = nn.Variable((batch,) + self.feature_shape)
        y = nn.Variable((batch, self.model.num_classes))
        masks = self._mask_vars(batch)
        logits = self._upper(h, masks)
        return Graph(h=h, y=y, masks=masks, logits=persist(logits),
                      losses=persist(per_sample_loss(logits, y)))

    def features(self, x: np.ndarray) -> np.ndarray:
        """The mask-independent lower part of the network on ``x`` (inference mode), float32."""
        if not self.split:
            return np.asarray(x, np.float32)
        g = self._graph("td_lower", len(x), False, self._build_lower)
        g.x.d = x
        g.h.forward(clear_no_need_grad=True)
        return g.h.d.copy()

    def head_losses(self, h: np.ndarray, y: np.ndarray, masks: Mapping[str, np.ndarray]
                    ) -> Tuple[np.ndarray, np.ndarray]:
        """Per-row loss (float64) and logits of the upper part on features ``h``, row r with masks[.][r]."""
        g = self._graph("td_head", len(h), False, self._build_head)
        g.h.d, g.y.d = h, self._onehot(y)
        self._set_masks(g, masks)
        g.losses.forward(clear_no_need_grad=True)
        return g.losses.d.reshape(-1).astype(np.float64), g.logits.d.copy()

    def masked_losses(self, x: np.ndarray, y: np.ndarray, masks: Mapping[str, np.ndarray]) -> np.ndarray:
        """Per-row loss of the whole network with per-row masks (inference mode)."""
        return self.head_losses(self.features(x), y, masks)[0]

    def linear_head(self) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(W as (C, S, K) float64, b (K,)) when the single masked point feeds the final affine layer.

        Then ``logits = b + sum_c m_c * P_c`` with ``P_c = sum_s h[c, s] W[c, s, :]``: linear in the mask.
        """
        if not self.split or len(self.layers) != 1:
            return None
        head = self._upper_layers[1:]  # after the mask
        if len(head) != 1 or not isinstance(head[0], Affine):
            return None
        W = self.params[head[0].w].d.astype(np.float64)
        b = self.params[head[0].b].d.astype(np.float64)
        C = self.shapes[self.layers[0]]
        return W.reshape(C, -1, W.shape[-1]), b
