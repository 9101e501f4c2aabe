"""A network the project has never seen, from a function that builds its graph.

``NetworkModel`` wraps ``build(x, train) -> logits`` written with nnabla's parametric functions
(``PF.affine``, ``PF.convolution`` ...) under any parameter scopes. Its parameters are created by
one call of ``build`` on a dummy input (initialisers without their own ``rng`` draw from the
learner's seed), and every later call binds a learner's own parameter variables by name, so
several learners of one model never share state. Such a model has no forward-mode description,
so the learner takes the generic path: Hessian-vector products by double backward and per-sample
products by ``nn.grad`` (see ``models.autodiff.Learner.hvp_method``). Batch normalisation (running
statistics) and turn-over dropout's mask points need the model described in ``models.networks``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Mapping, Optional

import nnabla as nn
import nnabla.random
import numpy as np

from common.errors import UserError

from .networks import MODELS, Model

Build = Callable[[nn.Variable, bool], nn.Variable]


class NetworkModel(Model):
    """A classifier whose graph ``build(x, train)`` makes; subclassed per network by ``register_network``."""

    name = "network"
    build: Build
    #: no tangent copy of the forward pass: per-sample products by double backward (``Learner``)
    has_tangent = False

    def create_parameters(self, rng: np.random.RandomState) -> OrderedDict[str, nn.Variable]:
        scope: OrderedDict = OrderedDict()
        x = nn.Variable((1,) + self.input_shape)
        saved, nnabla.random.prng = nnabla.random.prng, rng
        try:
            with nn.parameter_scope("", scope), nn.auto_forward(False):
                out = type(self).build(x, True)
            with nn.parameter_scope("", scope):
                params = OrderedDict(nn.get_parameters(grad_only=False))
        finally:
            nnabla.random.prng = saved
        if tuple(out.shape) != (1, self.num_classes):
            raise UserError(f"network {self.name!r} returns shape {tuple(out.shape)} for one input; it must return "
                            f"(batch, {self.num_classes}) class scores")
        stats = [k for k, v in params.items() if not v.need_grad]
        if stats:
            raise UserError(f"network {self.name!r} has parameters without gradient ({', '.join(stats[:3])}), e.g. "
                            f"batch normalisation's running statistics: describe it in models/networks.py instead")
        return params

    def mask_shapes(self) -> Dict[str, int]:
        return {}

    def logits(self, x: nn.Variable, params: Mapping[str, nn.Variable], train: bool, tangent=None,
               stats: Optional[Mapping[str, nn.Variable]] = None, masks=None,
               row_weights: Optional[nn.Variable] = None, taps=None) -> nn.Variable:
        if tangent is not None or masks or taps is not None:
            raise UserError(f"network {self.name!r} has no layer description (forward-mode products, masks, "
                            f"EK-FAC's layer taps): describe it in models/networks.py for this estimator")
        scope: OrderedDict = OrderedDict()
        with nn.parameter_scope("", scope):
            for key, v in params.items():
                nn.parameter.set_parameter(key, v)
            return type(self).build(x, train)


def register_network(name: str, build: Build, replace: bool = False) -> type:
    """Make the network ``build(x, train) -> logits`` available as model ``name`` (``-m name``,
    ``TrainConfig(model=name)``) in this process; returns its model class."""
    if name in MODELS and not (replace and issubclass(MODELS[name], NetworkModel)):
        raise UserError(f"model name {name!r} is taken; choose another")
    cls = type(f"Network_{name}", (NetworkModel,), {"name": name, "build": staticmethod(build)})
    MODELS[name] = cls
    return cls


def network_fingerprint(cls: type, input_shape: tuple, num_classes: int) -> str:
    """A SHA-256 (16 hex digits) of a registered network's identity: the functions of its graph in
    order with their arguments and input shapes (training mode), and its parameters' names, shapes
    and initial values for seed 0. The manifest records it, so a network changed under the same name
    counts as a changed input, like changed data (issue 38, item 5)."""
    return model_fingerprint(cls(tuple(input_shape), num_classes))


def model_fingerprint(model: Model) -> str:
    """``network_fingerprint`` of a model instance (any ``Model``)."""
    import hashlib
    input_shape = model.input_shape
    params = model.create_parameters(np.random.RandomState(0))
    h = hashlib.sha256()
    for k, v in params.items():
        h.update(f"{k}{tuple(v.shape)}".encode())
        h.update(np.ascontiguousarray(v.d, dtype=np.float32).tobytes())
    x = nn.Variable((1,) + tuple(input_shape))
    out = model.logits(x, params, True)
    functions = []
    out.visit(lambda f: functions.append(f"{f.info.type_name}{sorted(f.info.args.items())}"
                                         f"{[tuple(i.shape) for i in f.inputs]}"))
    h.update("|".join(functions).encode())
    return h.hexdigest()[:16]
