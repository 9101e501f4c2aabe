"""A learner with per-row turn-over dropout masks, and the model split at the masked layers.

``TDLearner`` extends ``models.autodiff.Learner`` (same parameter variables, same graph cache) with

* ``td_sgd_step``: one SGD step where row r of the mini-batch is multiplied by its own mask
  ``m(z_{idx[r]})`` at every chosen mask point (batch norm in training mode, as ``sgd_step``);
* ``features``: the network *below* the lowest masked point (inference mode). These layers do
  not depend on any mask, so influence computes them once per evaluated image and reuses them;
* ``head_losses``: per-row losses of the network *above* it, each row with its own masks;
* ``linear_head``: when the only masked point feeds the final affine layer directly (cnn6
  'block3', mlp 'fc1'), the head is linear in the mask, which the influence code exploits.

The split forward (``_stages``) re-states ``models.networks`` CNN6/MLP layer by layer with the
same helpers and parameter names; ``tests/test_turnover_dropout.py`` checks that
``head(features(x), masks)`` equals ``model.logits(x, masks=masks)``. Other models fall back to
"no split" (features = the input, head = the whole network).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import nnabla as nn
import nnabla.functions as F
import numpy as np

from models.autodiff import Learner, _Graph, _persist
from models.networks import CNN6, MLP, Model, _affine, _batch_norm, _conv, _masked, per_sample_loss

from .masks import P_KEEP, flip, instance_masks

Stage = Tuple[Optional[str], Callable[[nn.Variable], nn.Variable]]


def _stages(model: Model, params, train: bool) -> Optional[List[Stage]]:
    """The forward pass as a list of (mask point after it or None, function); None if unknown."""
    if isinstance(model, CNN6):
        def block(k):
            def f(h):
                h = _conv(h, params, f"conv{2 * k - 1}/conv", None)
                h = F.relu(_batch_norm(h, params, f"conv{2 * k - 1}/bn", train, None, params))
                h = F.relu(_conv(h, params, f"conv{2 * k}/conv", None))
                return F.max_pooling(h, (2, 2))
            return f
        stages = [(f"block{k}", block(k)) for k in range(1, len(model.maps) + 1)]
        return stages + [(None, lambda h: _affine(h, params, "fc/affine", None))]
    if isinstance(model, MLP):
        return [("fc1", lambda h: F.relu(_affine(h, params, "fc1/affine", None))),
                (None, lambda h: _affine(h, params, "fc2/affine", None))]
    return None


#: the final affine layer fed directly by the topmost mask point, per model class
_FINAL_AFFINE = {CNN6: "fc/affine", MLP: "fc2/affine"}


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
        stages = _stages(model, self.params, False)
        self.split = stages is not None and all(name in [s[0] for s in stages] for name in self.layers)
        if self.split:
            names = [s[0] for s in stages]
            self._cut = names.index(self.layers[0]) + 1  # stages [0, cut) are below the masks
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

    def _set_masks(self, g: _Graph, masks: Mapping[str, np.ndarray]) -> None:
        for k, var in g.masks.items():
            var.d = masks[k]

    # ------------------------------------------------------------------ training
    def _build_td_train(self, batch: int, train: bool) -> _Graph:
        x, y = self._inputs(batch)
        scale = nn.Variable(())
        masks = self._mask_vars(batch)
        logits = self.model.logits(x, self.params, train=True, stats=self.params, masks=masks)
        losses = per_sample_loss(logits, y)
        loss = F.sum(losses) * scale
        return _Graph(x=x, y=y, scale=scale, masks=masks, loss=_persist(loss), losses=_persist(losses))

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
        h = x
        for _, f in _stages(self.model, self.params, False)[:self._cut]:
            h = f(h)
        return h

    def _upper(self, h, masks):
        if not self.split:
            return self.model.logits(h, self.params, train=False, masks=masks)
        stages = _stages(self.model, self.params, False)
        h = _masked(h, masks, stages[self._cut - 1][0])
        for point, f in stages[self._cut:]:
            h = f(h)
            if point is not None:
                h = _masked(h, masks, point)
        return h

    def _build_lower(self, batch: int, train: bool) -> _Graph:
        x = nn.Variable((batch,) + self.model.input_shape)
        return _Graph(x=x, h=_persist(self._lower(x)))

    def _build_head(self, batch: int, train: bool) -> _Graph:
        h = nn.Variable((batch,) + self.feature_shape)
        y = nn.Variable((batch, self.model.num_classes))
        masks = self._mask_vars(batch)
        logits = self._upper(h, masks)
        return _Graph(h=h, y=y, masks=masks, logits=_persist(logits),
                      losses=_persist(per_sample_loss(logits, y)))

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
        name = _FINAL_AFFINE.get(type(self.model))
        if not self.split or name is None or self.layers != (self.model.mask_points[-1],):
            return None
        W = self.params[f"{name}/W"].d.astype(np.float64)
        b = self.params[f"{name}/b"].d.astype(np.float64)
        C = self.shapes[self.layers[0]]
        return W.reshape(C, -1, W.shape[-1]), b
