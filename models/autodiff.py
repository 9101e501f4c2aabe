"""The numerical core every estimator shares: a model's parameters and the nnabla graphs on them.

``Learner`` owns one set of parameter variables and builds each graph once per
(kind, batch size, network mode), then reuses it by writing new data into its input
variables. It offers exactly the primitives the estimators and the retraining need:

* ``sgd_step``: one SGD step on ``(lr / batch_size) * sum_i grad l(z_i)`` (``batch_size`` may be
  larger than the rows given: the counterfactual step of a mini-batch with samples removed);
* ``evaluate``: mean loss and accuracy with batch normalisation in inference mode;
* ``mean_loss_grad``: ``grad (1/n) sum_i l(z_i)`` over a whole data set (float64 accumulation);
* ``per_sample_grad_dot``: ``<u, g_i>`` for every row of a mini-batch in one pass (tangent trick,
  see ``models.networks``);
* ``removal_grad_dot``: ``d/dw_i <u, grad sum_k w_k l_k>`` at ``w = 1`` for every row: what leaving
  row i out of a training step changes, batch statistics of training-mode batch norm included;
* ``hessian_vector_product``: ``H v`` with ``H`` the Hessian of the mini-batch mean loss, by
  ``nn.grad`` double backward.

Vectors over parameters (``u``, ``v``, ``H v``) are ``dict[name -> float64 ndarray]`` over the
*trainable* parameters only: batch-norm running statistics have no gradient and are not part
of the estimators' parameter space.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple

import nnabla as nn
import nnabla.functions as F
import nnabla.solvers as S
import numpy as np

from models.layers.batch_norm import BN_DECAY
from models.networks import Model, Tangent, per_sample_loss

Vector = Dict[str, np.ndarray]


class Graph:
    """Input variables and outputs of one built graph (attributes named by the builder)."""

    def __init__(self, **items: object):
        self.__dict__.update(items)


def persist(v: nn.Variable) -> nn.Variable:
    """``v``, marked persistent: its data survives the forward pass's buffer clearing."""
    v.persistent = True
    return v


# ---------------------------------------------------------------------- forward-mode tangents
def _product_rowsum(a, b):
    """``sum over non-batch axes of a * b`` by ``MulN``: forward only (nnabla's CPU ``Mul2`` is ~3x
    slower; ``MulN``'s graph-level backward divides by its inputs, so it is never differentiated)."""
    return F.sum(F.mul_n(a, b), axis=tuple(range(1, len(a.shape))))


class _Jvp:
    """Forward-mode (tangent) propagation written out with nnabla functions, exactly.

    ``forward(x)`` returns ``(logits, dlogits)``: the class scores and their directional derivative
    ``d/de logits(theta + e V)`` at ``e = 0`` (every layer propagates ``(h, dh)``; no finite
    differences). ``tangent=False`` skips ``dh`` (primal only). Each linear layer ``f(h; W)`` records
    ``(out, t)`` in ``taps``, ``t = f(h; V)`` its parameters' own tangent contribution: with
    ``delta = d sum_k l_k / d out`` (from a backward pass), ``sum_layers rowsum(delta * t)`` is
    the per-sample product ``<V, g_i>`` of ``Learner.per_sample_grad_dot`` (the derivative w.r.t.
    a per-sample ``eps_i`` on ``eps_i * t``, without building ``eps``).

    The pass walks the model's ``layers``, each by its kind's rule ``Layer.jvp(pass, h, dh)``
    (``models.layers``). Batch norm in training mode differentiates its batch statistics and records
    them in ``batch_stats`` as ``(mean name, var name, batch mean, unbiased batch variance)``: what the
    training step feeds into the running statistics. Masks are not part of these graphs (the identity).
    """

    def __init__(self, model: Model, params, V, stats, train: bool, tangent: bool = True,
                 weights: Optional[nn.Variable] = None):
        self.model, self.P, self.V, self.stats, self.train = model, params, V, stats, train
        self.tangent = tangent
        self.weights = weights if train else None
        self.taps = []
        self.batch_stats = []

    @classmethod
    def supported(cls, model: Model) -> bool:
        """Whether the layers' forward-mode rules (``Layer.jvp``) cover ``model``: a model of layers
        that does not decline by ``forward_mode`` (``models.nnp``); not a network given as a
        function (``models.custom``)."""
        return bool(getattr(model, "layers", ())) and getattr(model, "forward_mode", True)

    def forward(self, x):
        if not self.supported(self.model):
            raise ValueError(f"no forward-mode tangent for model {self.model.name!r}")
        walk = getattr(self.model, "walk_tangent", None)
        if walk is not None:  # a graph of layers with their own rules (models.nnp)
            return walk(x, self)
        h, dh = x, None
        for layer in self.model.layers:
            h, dh = layer.jvp(self, h, dh)
        return h, dh

    def per_sample_dots(self, total_loss):
        """``(B,)`` products ``d total_loss / d eps_i`` from the recorded taps (one backward pass)."""
        outs = [o for o, _ in self.taps]
        deltas = nn.grad([total_loss], outs)
        dots = None
        for (_, t), d in zip(self.taps, deltas):
            if d is None:
                continue
            term = _product_rowsum(d, t)
            dots = term if dots is None else dots + term
        return dots


def _graph_dot(grads, directions):
    """``sum_p <grads_p, directions_p>`` as a graph scalar (``None`` gradients skipped)."""
    total = None
    for g, v in zip(grads, directions):
        if g is not None:
            term = F.sum(g * v)
            total = term if total is None else total + term
    return total


def _loss_tangent(logits, dlogits, onehot):
    """Per-row directional derivative of ``per_sample_loss``: ``<softmax(z) - y, dz>``."""
    return F.sum((F.softmax(logits, axis=1) - onehot) * dlogits, axis=1)


def _running_stats_dot(batch_stats, U_stats):
    """``S = sum_layers <U_mean, batch mean> + <U_var, unbiased batch variance>`` (None: no batch norm);
    ``batch_stats``: ``(mean name, var name, batch mean, unbiased batch variance)`` per batch norm."""
    return _graph_dot([a for _, _, m, v in batch_stats for a in (m, v)],
                      [U_stats[k] for mean, var, _, _ in batch_stats for k in (mean, var)])


class Learner:
    """A model plus one set of parameter variables, with cached graphs built on them."""

    #: Hessian-vector product method when none is given: see ``hvp_method``.
    default_hvp = "auto"
    #: Per-sample product method when none is given: see ``per_sample_grad_dot``.
    default_dot = "auto"

    def __init__(self, model: Model, params: OrderedDict[str, nn.Variable]):
        self.model = model
        self.params = params
        self.trainable = OrderedDict((k, v) for k, v in params.items() if v.need_grad)
        self.stat_names = [k for k, v in params.items() if not v.need_grad]
        # Influence graphs in training mode normalise by batch statistics and would update the
        # running statistics as a side effect: they get scratch copies instead.
        self._scratch_stats = {k: nn.Variable(params[k].shape) for k in self.stat_names}
        self._graphs: Dict[Tuple, Graph] = {}
        self._solver = S.Sgd(lr=0.0)
        self._solver.set_parameters(self.trainable)

    # ------------------------------------------------------------------ parameter state
    def state(self) -> Dict[str, np.ndarray]:
        """A copy of every parameter (trainable and statistics)."""
        return {k: v.d.copy() for k, v in self.params.items()}

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Overwrite every parameter from ``state`` (same names and shapes)."""
        missing = set(self.params) - set(state)
        if missing:
            raise ValueError(f"parameter state lacks {sorted(missing)}")
        for k, v in self.params.items():
            v.d = state[k]

    # ------------------------------------------------------------------ graph building
    def _graph(self, kind: str, batch: int, train: bool, build: Callable[[int, bool], Graph]) -> Graph:
        key = (kind, batch, train)
        g = self._graphs.get(key)
        if g is None:
            g = self._graphs[key] = build(batch, train)
        return g

    def release_graphs(self) -> None:
        """Drop the cached graphs (and the arrays they hold); the next call rebuilds the ones it needs,
        computing the same values. The parameters are kept."""
        self._graphs.clear()

    def _inputs(self, batch: int):
        x = nn.Variable((batch,) + self.model.input_shape)
        y = nn.Variable((batch, self.model.num_classes))  # one-hot targets
        return x, y

    def _onehot(self, y: np.ndarray) -> np.ndarray:
        return np.eye(self.model.num_classes, dtype=np.float32)[np.asarray(y).reshape(-1)]

    def _stats(self, train: bool, training_graph: bool = False):
        return self.params if (training_graph or not train) else {**self.params, **self._scratch_stats}

    def _build_train(self, batch: int, train: bool) -> Graph:
        x, y = self._inputs(batch)
        scale = nn.Variable(())
        logits = self.model.logits(x, self.params, train=True, stats=self.params)
        losses = per_sample_loss(logits, y)
        loss = F.sum(losses) * scale
        return Graph(x=x, y=y, scale=scale, loss=persist(loss), losses=persist(losses), logits=persist(logits))

    def _build_eval(self, batch: int, train: bool) -> Graph:
        x, y = self._inputs(batch)
        logits = self.model.logits(x, self.params, train=False)
        losses = per_sample_loss(logits, y)
        return Graph(x=x, y=y, logits=persist(logits), losses=persist(losses))

    def _build_grad(self, batch: int, train: bool) -> Graph:
        x, y = self._inputs(batch)
        logits = self.model.logits(x, self.params, train=train, stats=self._stats(train),
                                   row_weights=self._unit_weights(batch) if train else None)
        loss = F.sum(per_sample_loss(logits, y))
        grads = nn.grad([loss], list(self.trainable.values()))
        grads = [persist(g) if g is not None else None for g in grads]
        return Graph(x=x, y=y, grads=grads)

    def _direction_vars(self) -> OrderedDict[str, nn.Variable]:
        return OrderedDict((k, nn.Variable(v.shape)) for k, v in self.trainable.items())

    def _build_dot(self, batch: int, train: bool) -> Graph:
        x, y = self._inputs(batch)
        eps = nn.Variable((batch,), need_grad=True)
        eps.data.zero()
        U = self._direction_vars()
        logits = self.model.logits(x, self.params, train=train, stats=self._stats(train),
                                   tangent=Tangent(eps, U))
        loss = F.sum(per_sample_loss(logits, y))
        dots = persist(nn.grad([loss], [eps])[0])
        return Graph(x=x, y=y, U=U, dots=dots)

    def _build_hvp(self, batch: int, train: bool) -> Graph:
        x, y = self._inputs(batch)
        V = self._direction_vars()
        params = list(self.trainable.values())
        logits = self.model.logits(x, self.params, train=train, stats=self._stats(train),
                                   row_weights=self._unit_weights(batch) if train else None)
        loss = F.mean(per_sample_loss(logits, y))
        gv = _graph_dot(nn.grad([loss], params), V.values())
        hv = nn.grad([gv], params)
        hv = [persist(h) if h is not None else None for h in hv]
        return Graph(x=x, y=y, V=V, hv=hv)

    @staticmethod
    def _unit_weights(batch: int) -> nn.Variable:
        """Row weights 1: training-mode batch norm in the two-pass form the forward-mode graphs use
        (nnabla's fused kernel computes the variance as E[h^2] - E[h]^2, less accurately)."""
        return nn.Variable.from_numpy_array(np.ones(batch, np.float32))

    def _build_hvp_forward(self, batch: int, train: bool) -> Graph:
        """``H v`` as the gradient of the forward-mode directional derivative ``<v, grad L>``."""
        x, y = self._inputs(batch)
        V = self._direction_vars()
        w = self._unit_weights(batch) if train else None
        logits, dlogits = _Jvp(self.model, self.params, V, self._stats(train), train, weights=w).forward(x)
        gv = F.sum(_loss_tangent(logits, dlogits, y)) * (1.0 / batch)
        hv = nn.grad([gv], list(self.trainable.values()))
        hv = [persist(h) if h is not None else None for h in hv]
        return Graph(x=x, y=y, V=V, hv=hv)

    def _build_fused(self, batch: int, train: bool) -> Graph:
        """One forward-mode pass and one backward pass for both ``H u`` and the removal products.

        ``gv = (1/B) sum_k w_k <u, grad l_k>`` (row weights ``w = 1`` in the loss and, in training
        mode, in the batch statistics): ``d gv / d theta = H u`` and ``B d gv / d w_i`` is
        ``removal_grad_dot``'s product for row i, from the same backward pass. With training-mode
        batch norm the objective is ``gv - c S`` (``S``: ``_running_stats_dot`` with directions
        ``U_stats``, ``c`` the input ``stat_scale``), so the same pass also differentiates what the
        step feeds into the running statistics (``grad_dot_and_hvp``).
        """
        x, y = self._inputs(batch)
        V = self._direction_vars()
        w = nn.Variable.from_numpy_array(np.ones(batch, np.float32), need_grad=True)
        jvp = _Jvp(self.model, self.params, V, self._stats(train), train, weights=w)
        logits, dlogits = jvp.forward(x)
        gv = F.sum(w * _loss_tangent(logits, dlogits, y)) * (1.0 / batch)
        U_stats = self._stat_direction_vars()
        scale = nn.Variable(())
        stats_dot = _running_stats_dot(jvp.batch_stats, U_stats)
        if stats_dot is not None:
            gv = gv - scale * stats_dot
        grads = nn.grad([gv], list(self.trainable.values()) + [w])
        hv = [persist(h) if h is not None else None for h in grads[:-1]]
        return Graph(x=x, y=y, V=V, hv=hv, dots=persist(grads[-1] * float(batch)), U_stats=U_stats,
                      stat_scale=scale)

    def _stat_direction_vars(self) -> OrderedDict[str, nn.Variable]:
        return OrderedDict((k, nn.Variable(self.params[k].shape)) for k in self.stat_names)

    def _build_stats_products(self, batch: int, train: bool) -> Graph:
        """``(d S / d w_i, d S / d theta)`` for ``S = _running_stats_dot`` (training mode, reference)."""
        x, _ = self._inputs(batch)
        w = nn.Variable.from_numpy_array(np.ones(batch, np.float32), need_grad=True)
        if _Jvp.supported(self.model):
            jvp = _Jvp(self.model, self.params, self._direction_vars(), self._stats(True), True, tangent=False,
                       weights=w)
            jvp.forward(x)
            batch_stats = jvp.batch_stats
        else:  # a model without forward-mode rules records its batch statistics itself (models.nnp)
            batch_stats = self.model.batch_statistics(x, self.params, self._stats(True), w)
        U_stats = self._stat_direction_vars()
        grads = nn.grad([_running_stats_dot(batch_stats, U_stats)], list(self.trainable.values()) + [w])
        return Graph(x=x, U_stats=U_stats, dots=persist(grads[-1]),
                      grads=[persist(g) if g is not None else None for g in grads[:-1]])

    def _build_stats_grad(self, batch: int, train: bool) -> Graph:
        """Summed inference-mode loss's gradient w.r.t. copies (``stats``) of the running statistics."""
        x, y = self._inputs(batch)
        stats = OrderedDict((k, nn.Variable(self.params[k].shape, need_grad=True)) for k in self.stat_names)
        logits = self.model.logits(x, self.params, train=False, stats={**self.params, **stats})
        grads = nn.grad([F.sum(per_sample_loss(logits, y))], list(stats.values()))
        return Graph(x=x, y=y, stats=stats, grads=[persist(g) for g in grads])

    def _build_removal_dot(self, batch: int, train: bool) -> Graph:
        """``removal_grad_dot`` by double backward: ``d/dw <U, grad_theta sum_k w_k l_k(theta; w)>``."""
        x, y = self._inputs(batch)
        U = self._direction_vars()
        w = nn.Variable.from_numpy_array(np.ones(batch, np.float32), need_grad=True)
        params = list(self.trainable.values())
        logits = self.model.logits(x, self.params, train=train, stats=self._stats(train), row_weights=w)
        gu = _graph_dot(nn.grad([F.sum(w * per_sample_loss(logits, y))], params), U.values())
        return Graph(x=x, y=y, U=U, dots=persist(nn.grad([gu], [w])[0]))

    def _build_dot_taps(self, batch: int, train: bool) -> Graph:
        """Per-sample products from layer taps (``_Jvp.per_sample_dots``), no ``eps`` variable."""
        x, y = self._inputs(batch)
        V = self._direction_vars()
        jvp = _Jvp(self.model, self.params, V, self._stats(train), train, tangent=False)
        logits, _ = jvp.forward(x)
        dots = persist(jvp.per_sample_dots(F.sum(per_sample_loss(logits, y))))
        return Graph(x=x, y=y, U=V, dots=dots)

    def hvp_method(self, method: Optional[str] = None) -> str:
        """The Hessian-vector product method actually used for ``method`` (None/'auto': the fastest
        exact one the model supports: 'forward' where ``_Jvp`` covers the model, else 'double_backward')."""
        method = method or self.default_hvp
        if method == "auto":
            return "forward" if _Jvp.supported(self.model) else "double_backward"
        if method not in ("forward", "double_backward"):
            raise ValueError(f"unknown Hessian-vector product method {method!r}")
        if method == "forward" and not _Jvp.supported(self.model):
            raise ValueError(f"forward-mode products do not cover model {self.model.name!r}")
        return method

    def _hv_dict(self, hv) -> Vector:
        return {k: (h.d.astype(np.float64) if h is not None else np.zeros(self.trainable[k].shape))
                for k, h in zip(self.trainable, hv)}

    @staticmethod
    def _set_direction(U, u: Mapping[str, np.ndarray]) -> None:
        for k, var in U.items():
            var.d = u[k]

    # ------------------------------------------------------------------ primitives
    def sgd_step(self, x: np.ndarray, y: np.ndarray, lr: float, batch_size: Optional[int] = None) -> float:
        """theta <- theta - (lr / batch_size) * sum_rows grad l; returns the rows' mean loss.

        Batch normalisation runs in training mode on the given rows and updates the running
        statistics. ``batch_size`` defaults to the number of rows.
        """
        n = len(x)
        g = self._graph("train", n, True, self._build_train)
        g.x.d, g.y.d = x, self._onehot(y)
        self._last_step = g
        return self._apply_sgd(g, lr, batch_size or n)

    def step_logits(self) -> np.ndarray:
        """The logits (rows x classes) the last ``sgd_step`` computed, before its update: what the
        training saw of each row (e.g. for the area under the margin, at no extra forward pass)."""
        return np.array(self._last_step.logits.d, dtype=np.float64)

    def _apply_sgd(self, g, lr: float, batch_size: int) -> float:
        """One update of the training graph ``g`` (inputs already set): loss scaled by 1/batch_size."""
        g.scale.d = 1.0 / float(batch_size)
        g.loss.forward(clear_no_need_grad=True)
        self._solver.zero_grad()
        g.loss.backward(clear_buffer=True)
        self._solver.set_learning_rate(lr)
        self._solver.update()
        return float(np.mean(g.losses.d))

    def losses_and_predictions(self, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Per-row loss and predicted class, batch normalisation in inference mode."""
        g = self._graph("eval", len(x), False, self._build_eval)
        g.x.d, g.y.d = x, self._onehot(y)
        g.losses.forward(clear_no_need_grad=True)
        return g.losses.d.reshape(-1).astype(np.float64), g.logits.d.argmax(axis=1)

    def evaluate(self, batches: Iterable[Tuple[np.ndarray, np.ndarray]]) -> Tuple[float, float]:
        """Mean loss and accuracy over all rows of ``batches`` (inference mode)."""
        total, correct, n = 0.0, 0, 0
        for x, y in batches:
            losses, pred = self.losses_and_predictions(x, y)
            total += float(losses.sum())
            correct += int((pred == y.reshape(-1)).sum())
            n += len(x)
        return total / n, correct / n

    def _mean_grad(self, kind: str, train: bool, build: Callable[[int, bool], Graph], names,
                   batches: Iterable[Tuple[np.ndarray, np.ndarray]]) -> Vector:
        """``(1/n) sum`` over all rows of the graph's ``grads`` (summed-loss gradients, in the
        order of ``names``), float64; ``None`` gradients give zeros."""
        acc = {k: np.zeros(self.params[k].shape) for k in names}
        n = 0
        for x, y in batches:
            g = self._graph(kind, len(x), train, build)
            g.x.d, g.y.d = x, self._onehot(y)
            for k, v in getattr(g, "stats", {}).items():
                v.d = self.params[k].d
            F.sink(*[v for v in g.grads if v is not None]).forward(clear_no_need_grad=True)
            for k, gv in zip(names, g.grads):
                if gv is not None:
                    acc[k] += gv.d
            n += len(x)
        return {k: a / n for k, a in acc.items()}

    def mean_loss_grad(self, batches: Iterable[Tuple[np.ndarray, np.ndarray]], train: bool = False) -> Vector:
        """grad of (1/n) sum over all rows of l(z); inference-mode batch norm unless ``train``."""
        return self._mean_grad("grad", train, self._build_grad, list(self.trainable), batches)

    def running_stats_grad(self, batches: Iterable[Tuple[np.ndarray, np.ndarray]]) -> Vector:
        """grad of (1/n) sum over all rows of l(z) (inference mode) w.r.t. batch norm's running
        means and variances, keyed by their names (empty for a model without batch norm)."""
        if not self.stat_names:
            return {}
        return self._mean_grad("stats_grad", False, self._build_stats_grad, self.stat_names, batches)

    def running_stats_products(self, x: np.ndarray, u_stats: Mapping[str, np.ndarray]) -> Tuple[np.ndarray, Vector]:
        """``(d S / d w_i for every row, d S / d theta)`` with ``S = sum_l <u_mean_l, mu_l(w)> +
        <u_var_l, sigma2_l(w)>``: the row-weighted batch mean and unbiased variance of each
        training-mode batch norm, the statistics the training step moves the running ones toward."""
        g = self._graph("stats_products", len(x), True, self._build_stats_products)
        g.x.d = x
        self._set_direction(g.U_stats, u_stats)
        F.sink(g.dots, *[h for h in g.grads if h is not None]).forward(clear_no_need_grad=True)
        return g.dots.d.astype(np.float64).copy(), self._hv_dict(g.grads)

    def per_sample_grad_dot(self, x: np.ndarray, y: np.ndarray, u: Mapping[str, np.ndarray],
                            train: bool = True, method: Optional[str] = None) -> np.ndarray:
        """``<u, g_i>`` for every row i, where ``g_i`` is row i's share of grad sum_k l(z_k).

        Without batch normalisation in training mode ``g_i = grad l(z_i)`` exactly; with it,
        ``g_i`` is the gradient through row i's path of the batch loss (batch statistics
        included), and ``sum_i g_i`` is the mini-batch gradient.

        ``method``: 'eps' (the model's tangent copy with a per-sample ``eps``, differentiated
        w.r.t. ``eps``), 'taps' (the same sum from layer outputs' gradients, ``_Jvp``; faster),
        'weights' (double backward through per-row loss weights, for a model without batch norm
        and without a tangent copy, e.g. ``models.custom``) or None/'auto' (``Learner.default_dot``:
        'taps' where the model is covered, else 'eps' or 'weights').
        """
        method = method or self.default_dot
        if method == "auto":
            method = "taps" if _Jvp.supported(self.model) else "eps" if getattr(self.model, "has_tangent", True) \
                else "weights"
        if method == "taps":
            g = self._graph("dot_taps", len(x), train, self._build_dot_taps)
        elif method == "eps":
            g = self._graph("dot", len(x), train, self._build_dot)
        elif method == "weights" and not self.stat_names:  # a model without batch norm: <u, grad l_i> exactly
            g = self._graph("removal_dot", len(x), train, self._build_removal_dot)
        else:
            raise ValueError(f"unknown per-sample product method {method!r}")
        g.x.d, g.y.d = x, self._onehot(y)
        self._set_direction(g.U, u)
        g.dots.forward(clear_no_need_grad=True)
        return g.dots.d.astype(np.float64).copy()

    def hessian_vector_product(self, x: np.ndarray, y: np.ndarray, v: Mapping[str, np.ndarray],
                               train: bool = True, method: Optional[str] = None) -> Vector:
        """``H v`` with ``H`` the Hessian of the rows' mean loss.

        ``method``: 'double_backward' (``nn.grad`` of ``<grad L, v>``), 'forward' (the gradient of
        the forward-mode directional derivative ``<v, grad L>``, see ``_Jvp``: same math, cheaper)
        or None/'auto' (``Learner.default_hvp``: the faster exact one the model supports).
        """
        if self.hvp_method(method) == "forward":
            g = self._graph("hvp_fwd", len(x), train, self._build_hvp_forward)
        else:
            g = self._graph("hvp", len(x), train, self._build_hvp)
        g.x.d, g.y.d = x, self._onehot(y)
        self._set_direction(g.V, v)
        F.sink(*[h for h in g.hv if h is not None]).forward(clear_no_need_grad=True)
        return self._hv_dict(g.hv)

    def removal_grad_dot(self, x: np.ndarray, y: np.ndarray, u: Mapping[str, np.ndarray],
                         train: bool = True) -> np.ndarray:
        """``d/dw_i <u, grad_theta sum_k w_k l_k>`` at ``w = 1`` for every row i (double backward).

        ``w`` weights each row's loss and, for batch normalisation in training mode, its share of
        the batch mean and variance, so minus this product is the first-order change of
        ``<u, batch gradient>`` when row i is left out of the step (the counterfactual SGD step
        drops the row, from its batch statistics too). Without training-mode batch norm it is
        ``<u, grad l(z_i)>``.
        """
        g = self._graph("removal_dot", len(x), train, self._build_removal_dot)
        g.x.d, g.y.d = x, self._onehot(y)
        self._set_direction(g.U, u)
        g.dots.forward(clear_no_need_grad=True)
        return g.dots.d.astype(np.float64).copy()

    def grad_dot_and_hvp(self, x: np.ndarray, y: np.ndarray, u: Mapping[str, np.ndarray],
                         train: bool = True, method: Optional[str] = None) -> Tuple[np.ndarray, Vector]:
        """``(removal_grad_dot(x, y, u), hessian_vector_product(x, y, u))`` in one pass.

        With forward-mode products available one graph computes both from one forward-mode pass
        and one backward pass (``_build_fused``); otherwise the two separate calls.
        """
        if self.hvp_method(method) != "forward":
            return (self.removal_grad_dot(x, y, u, train=train),
                    self.hessian_vector_product(x, y, u, train=train, method=method))
        return self._fused(x, y, u, train, None, 0.0)

    def _fused(self, x, y, u, train: bool, u_stats: Optional[Mapping[str, np.ndarray]], stat_scale: float):
        """Run ``_build_fused``'s graph: (removal products, d objective / d theta) as float64."""
        g = self._graph("fused", len(x), train, self._build_fused)
        g.x.d, g.y.d = x, self._onehot(y)
        self._set_direction(g.V, u)
        for k, var in g.U_stats.items():
            var.d = 0.0 if u_stats is None else u_stats[k]
        g.stat_scale.d = stat_scale
        F.sink(g.dots, *[h for h in g.hv if h is not None]).forward(clear_no_need_grad=True)
        return g.dots.d.astype(np.float64).copy(), self._hv_dict(g.hv)

    def step_backward(self, x: np.ndarray, y: np.ndarray, lr: float, u: Mapping[str, np.ndarray],
                      u_stats: Optional[Mapping[str, np.ndarray]] = None, fused: bool = True
                      ) -> Tuple[np.ndarray, Vector, Vector]:
        """Pull a direction back through one recorded training step (rows ``x, y``, rate ``lr``).

        The step maps ``theta -> theta - (lr/B) grad sum_k w_k l_k`` and each running statistic
        ``r -> d r + (1 - d) s(w)`` (``d = BN_DECAY``, ``s`` the batch mean or unbiased variance;
        rows weighted by ``w = 1`` in the loss and the batch statistics). With ``(u, u_stats)`` the
        derivative of a function of the step's output, returns ``(delta, u_prev, u_stats_prev)``:

        * ``delta_i = (lr/B) d/dw_i <u, grad sum_k w_k l_k> - (1 - d) d/dw_i S``: the first-order
          change of the function when row i leaves the step (``S = sum <u_stats, s(w)>``);
        * ``u_prev = u - lr H u + (1 - d) dS/dtheta`` and ``u_stats_prev = d u_stats``: its
          derivative w.r.t. the step's input (H: Hessian of the rows' mean loss).

        Without batch norm (or ``u_stats`` None) the statistics terms vanish: Hara et al.'s step.
        ``fused``: one graph (``_build_fused``) where the model allows; False: separate calls.
        """
        B = len(x)
        use_stats = bool(u_stats) and bool(self.stat_names)
        c = 1.0 - BN_DECAY
        if fused and self.hvp_method() == "forward":
            dots, g = self._fused(x, y, u, True, u_stats if use_stats else None, c / lr if use_stats else 0.0)
            delta = (lr / B) * dots
            u_prev = {k: u[k] - lr * g[k] for k in u}
        else:
            dots = self.removal_grad_dot(x, y, u, train=True)
            hu = self.hessian_vector_product(x, y, u, train=True)
            delta = (lr / B) * dots
            u_prev = {k: u[k] - lr * hu[k] for k in u}
            if use_stats:
                sd, sg = self.running_stats_products(x, u_stats)
                delta = delta - c * sd
                u_prev = {k: u_prev[k] + c * sg[k] for k in u}
        u_stats_prev = {k: BN_DECAY * v for k, v in u_stats.items()} if u_stats else {}
        return delta, u_prev, u_stats_prev


# ---------------------------------------------------------------------- vector helpers
def vdot(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """Inner product of two parameter vectors."""
    return float(sum(np.vdot(a[k], b[k]) for k in a))


def vnorm(a: Mapping[str, np.ndarray]) -> float:
    """Euclidean norm of a parameter vector."""
    return float(np.sqrt(vdot(a, a)))


# ---------------------------------------------------------------------- public names
# What tools beside the estimators (bench/) build on, under public names; the same objects.
#: The forward-mode pass: the logits and their directional derivative ``J v``.
Jvp = _Jvp
#: ``learner.direction_vars()``: one fresh variable per trainable parameter (a direction ``v``).
Learner.direction_vars = Learner._direction_vars  # type: ignore[attr-defined]
#: ``learner.stats_for(train)``: the batch-norm statistics a graph in that mode reads.
Learner.stats_for = Learner._stats  # type: ignore[attr-defined]
