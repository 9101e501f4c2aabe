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
* ``hessian_vector_product``: ``H v`` with ``H`` the Hessian of the mini-batch mean loss, by
  ``nn.grad`` double backward.

Vectors over parameters (``u``, ``v``, ``H v``) are ``dict[name -> float64 ndarray]`` over the
*trainable* parameters only: batch-norm running statistics have no gradient and are not part
of the estimators' parameter space.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Iterable, Iterator, Mapping, Optional, Tuple

import nnabla as nn
import nnabla.functions as F
import nnabla.solvers as S
import numpy as np

from models.networks import Model, Tangent, per_sample_loss

Vector = Dict[str, np.ndarray]


class _Graph:
    """Input variables and outputs of one built graph."""

    def __init__(self, **items):
        self.__dict__.update(items)


def _persist(v: nn.Variable) -> nn.Variable:
    v.persistent = True
    return v


class Learner:
    """A model plus one set of parameter variables, with cached graphs built on them."""

    def __init__(self, model: Model, params: "OrderedDict[str, nn.Variable]"):
        self.model = model
        self.params = params
        self.trainable = OrderedDict((k, v) for k, v in params.items() if v.need_grad)
        self.stat_names = [k for k, v in params.items() if not v.need_grad]
        # Influence graphs in training mode normalise by batch statistics and would update the
        # running statistics as a side effect: they get scratch copies instead.
        self._scratch_stats = {k: nn.Variable(params[k].shape) for k in self.stat_names}
        self._graphs: Dict[Tuple, _Graph] = {}
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

    def trainable_vector(self) -> Vector:
        """The trainable parameters as float64 arrays."""
        return {k: v.d.astype(np.float64) for k, v in self.trainable.items()}

    # ------------------------------------------------------------------ graph building
    def _graph(self, kind: str, batch: int, train: bool, build: Callable[[int, bool], _Graph]) -> _Graph:
        key = (kind, batch, train)
        g = self._graphs.get(key)
        if g is None:
            g = self._graphs[key] = build(batch, train)
        return g

    def _inputs(self, batch: int):
        x = nn.Variable((batch,) + self.model.input_shape)
        y = nn.Variable((batch, self.model.num_classes))  # one-hot targets
        return x, y

    def _onehot(self, y: np.ndarray) -> np.ndarray:
        return np.eye(self.model.num_classes, dtype=np.float32)[np.asarray(y).reshape(-1)]

    def _stats(self, train: bool, training_graph: bool = False):
        return self.params if (training_graph or not train) else {**self.params, **self._scratch_stats}

    def _build_train(self, batch: int, train: bool) -> _Graph:
        x, y = self._inputs(batch)
        scale = nn.Variable(())
        logits = self.model.logits(x, self.params, train=True, stats=self.params)
        losses = per_sample_loss(logits, y)
        loss = F.sum(losses) * scale
        return _Graph(x=x, y=y, scale=scale, loss=_persist(loss), losses=_persist(losses))

    def _build_eval(self, batch: int, train: bool) -> _Graph:
        x, y = self._inputs(batch)
        logits = self.model.logits(x, self.params, train=False)
        losses = per_sample_loss(logits, y)
        return _Graph(x=x, y=y, logits=_persist(logits), losses=_persist(losses))

    def _build_grad(self, batch: int, train: bool) -> _Graph:
        x, y = self._inputs(batch)
        logits = self.model.logits(x, self.params, train=train, stats=self._stats(train))
        loss = F.sum(per_sample_loss(logits, y))
        grads = nn.grad([loss], list(self.trainable.values()))
        grads = [_persist(g) if g is not None else None for g in grads]
        return _Graph(x=x, y=y, grads=grads)

    def _direction_vars(self) -> "OrderedDict[str, nn.Variable]":
        return OrderedDict((k, nn.Variable(v.shape)) for k, v in self.trainable.items())

    def _build_dot(self, batch: int, train: bool) -> _Graph:
        x, y = self._inputs(batch)
        eps = nn.Variable((batch,), need_grad=True)
        eps.data.zero()
        U = self._direction_vars()
        logits = self.model.logits(x, self.params, train=train, stats=self._stats(train),
                                   tangent=Tangent(eps, U))
        loss = F.sum(per_sample_loss(logits, y))
        dots = _persist(nn.grad([loss], [eps])[0])
        return _Graph(x=x, y=y, U=U, dots=dots)

    def _build_hvp(self, batch: int, train: bool) -> _Graph:
        x, y = self._inputs(batch)
        V = self._direction_vars()
        params = list(self.trainable.values())
        logits = self.model.logits(x, self.params, train=train, stats=self._stats(train))
        loss = F.mean(per_sample_loss(logits, y))
        grads = nn.grad([loss], params)
        gv = None
        for g, v in zip(grads, V.values()):
            if g is None:
                continue
            term = F.sum(g * v)
            gv = term if gv is None else gv + term
        hv = nn.grad([gv], params)
        hv = [_persist(h) if h is not None else None for h in hv]
        return _Graph(x=x, y=y, V=V, hv=hv)

    # ------------------------------------------------------------------ primitives
    def sgd_step(self, x: np.ndarray, y: np.ndarray, lr: float, batch_size: Optional[int] = None) -> float:
        """theta <- theta - (lr / batch_size) * sum_rows grad l; returns the rows' mean loss.

        Batch normalisation runs in training mode on the given rows and updates the running
        statistics. ``batch_size`` defaults to the number of rows.
        """
        n = len(x)
        g = self._graph("train", n, True, self._build_train)
        g.x.d, g.y.d = x, self._onehot(y)
        g.scale.d = 1.0 / float(batch_size or n)
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

    def mean_loss_grad(self, batches: Iterable[Tuple[np.ndarray, np.ndarray]], train: bool = False) -> Vector:
        """grad of (1/n) sum over all rows of l(z); inference-mode batch norm unless ``train``."""
        acc = {k: np.zeros(v.shape) for k, v in self.trainable.items()}
        n = 0
        for x, y in batches:
            g = self._graph("grad", len(x), train, self._build_grad)
            g.x.d, g.y.d = x, self._onehot(y)
            F.sink(*[v for v in g.grads if v is not None]).forward(clear_no_need_grad=True)
            for k, gv in zip(self.trainable, g.grads):
                if gv is not None:
                    acc[k] += gv.d
            n += len(x)
        return {k: a / n for k, a in acc.items()}

    def per_sample_grad_dot(self, x: np.ndarray, y: np.ndarray, u: Mapping[str, np.ndarray],
                            train: bool = True) -> np.ndarray:
        """``<u, g_i>`` for every row i, where ``g_i`` is row i's share of grad sum_k l(z_k).

        Without batch normalisation in training mode ``g_i = grad l(z_i)`` exactly; with it,
        ``g_i`` is the gradient through row i's path of the batch loss (batch statistics
        included), and ``sum_i g_i`` is the mini-batch gradient.
        """
        g = self._graph("dot", len(x), train, self._build_dot)
        g.x.d, g.y.d = x, self._onehot(y)
        for k, var in g.U.items():
            var.d = u[k]
        g.dots.forward(clear_no_need_grad=True)
        return g.dots.d.astype(np.float64).copy()

    def hessian_vector_product(self, x: np.ndarray, y: np.ndarray, v: Mapping[str, np.ndarray],
                               train: bool = True) -> Vector:
        """``H v`` with ``H`` the Hessian of the rows' mean loss, by double backward."""
        g = self._graph("hvp", len(x), train, self._build_hvp)
        g.x.d, g.y.d = x, self._onehot(y)
        for k, var in g.V.items():
            var.d = v[k]
        F.sink(*[h for h in g.hv if h is not None]).forward(clear_no_need_grad=True)
        return {k: (h.d.astype(np.float64) if h is not None else np.zeros(self.trainable[k].shape))
                for k, h in zip(self.trainable, g.hv)}


# ---------------------------------------------------------------------- vector helpers
def vdot(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """Inner product of two parameter vectors."""
    return float(sum(np.vdot(a[k], b[k]) for k in a))


def axpy(alpha: float, x: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray]) -> Vector:
    """``alpha * x + y``."""
    return {k: alpha * x[k] + y[k] for k in y}


def vnorm(a: Mapping[str, np.ndarray]) -> float:
    """Euclidean norm of a parameter vector."""
    return float(np.sqrt(vdot(a, a)))
