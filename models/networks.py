"""The built-in classifiers, each a list of layer kinds (``models.layers``), and the forward pass.

A model is a ``Model`` subclass whose ``layers`` list its network, lowest first, in the kinds every
network of the project is made of (``models.layers``: a file read by ``models.nnp`` is a graph of the
same kinds). Everything else derives from that list: parameter creation (names and initialisation
order), the forward pass ``logits``, the mask points of turn-over dropout and their sizes, the split
of the network at a mask point (``Model.split``), the layers with parameters (``Tap``, for EK-FAC and
TracIn) and, in ``models.autodiff``, the forward-mode (tangent) pass. Adding a model is adding its
class here (and to ``MODELS``).

Parameters are created by name inside a *local* parameter scope (``nn.parameter_scope("", scope)``),
as nnabla's parametric functions name and draw them, so several models can live side by side and be
saved and loaded as nnabla ``.h5`` files. The forward pass uses ``nnabla.functions`` on those
variables so that the same code can also run with a per-sample **tangent** (``models.layers.base``),
with per-sample **masks** multiplied onto chosen activations (turn-over dropout) and with per-sample
**row weights** inside the batch statistics of batch normalisation (``models.layers.batch_norm``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import nnabla as nn
import nnabla.functions as F
import numpy as np

from .layers import RELU, Affine, BatchNorm, Convolution, Layer, Mask, Pass, Pooling, Tangent, Tap


def run_layers(layers: Sequence[Layer], h: nn.Variable, params: Mapping[str, nn.Variable], train: bool,
               tangent: Optional[Tangent] = None, stats: Optional[Mapping[str, nn.Variable]] = None,
               masks: Optional[Mapping[str, nn.Variable]] = None, row_weights: Optional[nn.Variable] = None,
               taps: Optional[List[Tap]] = None) -> nn.Variable:
    """``layers`` applied to ``h`` in order (arguments as ``Model.logits``; ``stats`` None: the
    statistics in ``params``); each layer with parameters appends a ``Tap`` to ``taps`` when given."""
    p = Pass(params, train, tangent, params if stats is None else stats, masks, row_weights)
    for layer in layers:
        out = layer.forward(h, p)
        if taps is not None and layer.tap:
            taps.append(Tap(layer, h, out))
        h = out
    return h


class Model:
    """A classifier: its ``layers`` (set by each subclass), from which parameter creation and the
    forward pass ``logits(x, params, train, ...)`` derive."""

    name: str = ""
    #: The network, lowest layer first.
    layers: Tuple[Layer, ...] = ()
    #: Layer outputs that accept a per-sample mask, lowest first (turn-over dropout): the names of
    #: the ``Mask`` layers, derived from ``layers``.
    mask_points: Tuple[str, ...] = ()
    #: whether the network is its layer chain, so that ``split`` cuts it at a mask point (a graph read
    #: from a file is not: turn-over dropout then runs it whole)
    chain: bool = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.mask_points = tuple(layer.name for layer in cls.layers if isinstance(layer, Mask))

    def __init__(self, input_shape: Sequence[int], num_classes: int):
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)

    def create_parameters(self, rng: np.random.RandomState) -> OrderedDict[str, nn.Variable]:
        """Fresh parameters (trainable and batch-norm statistics) drawn from ``rng``."""
        scope: OrderedDict[str, nn.Variable] = OrderedDict()
        x = nn.Variable((1,) + self.input_shape)
        with nn.parameter_scope("", scope), nn.auto_forward(False):
            self._create(x, rng)
        with nn.parameter_scope("", scope):
            return OrderedDict(nn.get_parameters(grad_only=False))

    def _create(self, x, rng) -> None:
        h = x
        for layer in self.layers:
            h = layer.create(h, rng, self.num_classes)

    def mask_shapes(self) -> Dict[str, int]:
        """Channels (or units) of each mask point."""
        c, shapes = self.input_shape[0], {}
        for layer in self.layers:
            c = layer.channels(c, self.num_classes)
            if isinstance(layer, Mask):
                shapes[layer.name] = c
        return shapes

    def split(self, point: str) -> Tuple[Tuple[Layer, ...], Tuple[Layer, ...]]:
        """``(lower, upper)``: the layers below mask point ``point``, and the rest from its ``Mask`` on."""
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Mask) and layer.name == point:
                return self.layers[:i], self.layers[i:]
        raise ValueError(f"model {self.name!r} has no mask point {point!r}")

    @property
    def convolutional(self) -> bool:
        """Whether the network has convolutions (its graphs' memory grows with batch x image area)."""
        return any(isinstance(layer, Convolution) for layer in self.layers)

    def logits(self, x: nn.Variable, params: Mapping[str, nn.Variable], train: bool,
               tangent: Optional[Tangent] = None, stats: Optional[Mapping[str, nn.Variable]] = None,
               masks: Optional[Mapping[str, nn.Variable]] = None,
               row_weights: Optional[nn.Variable] = None, taps: Optional[List[Tap]] = None) -> nn.Variable:
        """Class scores for ``x``. ``stats`` overrides the batch-norm statistics variables;
        ``row_weights`` weights the rows inside training-mode batch statistics (models without
        batch normalisation ignore it); ``taps`` collects the layers with parameters (``run_layers``)."""
        return run_layers(self.layers, x, params, train, tangent, stats, masks, row_weights, taps)


class LogReg(Model):
    """Multinomial logistic regression on the flattened image."""

    name = "logreg"
    layers = (Affine.scoped("fc", w_std=0.01),)


class MLP(Model):
    """One hidden ReLU layer of 128 units."""

    name = "mlp"
    hidden = 128
    layers = (Affine.scoped("fc1", hidden), RELU, Mask("fc1"), Affine.scoped("fc2"))


#: max pooling 2x2, stride 2
MAX_POOL_2X2 = Pooling("max", (2, 2), (2, 2))


def _cnn6_blocks(maps: Sequence[int]) -> Tuple[Layer, ...]:
    """Block k: conv3x3 + BN + ReLU, conv3x3 + ReLU, max-pool 2x2, mask point ``block{k}``."""
    layers: List[Layer] = []
    for k, m in enumerate(maps, start=1):
        layers += [Convolution.scoped(f"conv{2 * k - 1}", m), BatchNorm.scoped(f"conv{2 * k - 1}"), RELU,
                   Convolution.scoped(f"conv{2 * k}", m), RELU, MAX_POOL_2X2, Mask(f"block{k}")]
    return tuple(layers)


class CNN6(Model):
    """The paper's network: three blocks of [conv3x3+BN+ReLU, conv3x3+ReLU+maxpool2], then affine.

    32/64/128 maps; 307,370 trainable parameters (+448 batch-norm statistics) for 1x32x32
    inputs and 10 classes.
    """

    name = "cnn6"
    maps = (32, 64, 128)
    layers = _cnn6_blocks(maps) + (Affine.scoped("fc"),)


MODELS: Dict[str, type] = {m.name: m for m in (CNN6, LogReg, MLP)}
#: file suffix -> ``factory(path, input_shape, num_classes)`` of a model read from a file (``.nnp``:
#: ``models.nnp``, which adds itself when the package ``models`` is imported)
MODEL_FILES: Dict[str, Callable] = {}


def build_model(name: str, input_shape: Sequence[int], num_classes: int) -> Model:
    """The model called ``name`` (``cnn6``, ``logreg``, ``mlp``, a registered network, or the path of an
    ``.nnp`` file: ``models.nnp.NnpModel``) for the given input and classes."""
    if name not in MODELS:
        for suffix, factory in MODEL_FILES.items():
            if str(name).lower().endswith(suffix):
                return factory(name, input_shape, num_classes)
    try:
        cls = MODELS[name]
    except KeyError:
        from common.errors import UserError
        raise UserError(f"unknown model '{name}'; choose one of: {', '.join(MODELS)}") from None
    return cls(input_shape, num_classes)


def count_trainable(params: Mapping[str, nn.Variable]) -> int:
    """Number of trainable scalars (batch-norm running statistics excluded)."""
    return int(sum(np.prod(v.shape) for v in params.values() if v.need_grad))


def per_sample_loss(logits: nn.Variable, onehot: nn.Variable) -> nn.Variable:
    """Softmax cross-entropy of each row, (B,), from one-hot targets.

    Written as ``-sum(onehot * log_softmax(logits))`` rather than ``F.softmax_cross_entropy``:
    nnabla 1.39's double backward of the latter fails for a batch of one.
    """
    return -F.sum(onehot * F.log_softmax(logits, axis=1), axis=1)
