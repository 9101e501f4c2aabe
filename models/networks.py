"""The classifiers, each described once as a list of layers, and the forward pass derived from it.

A model is a ``Model`` subclass whose ``layers`` list its network, lowest first, in a small
vocabulary (``Conv``, ``BatchNorm``, ``ReLU``, ``MaxPool``, ``Mask``, ``Affine``). Everything else
derives from that list: parameter creation (names and initialisation order), the forward pass
``logits``, the mask points of turn-over dropout and their sizes, the split of the network at a mask
point (``Model.split``), the layers with parameters (``Tap``, for EK-FAC) and, in ``models.autodiff``,
the forward-mode (tangent) pass. Adding a model is adding its class here (and to ``MODELS``).

Parameters are created with nnabla's parametric functions inside a *local* parameter scope
(``nn.parameter_scope("", scope)``), so several models can live side by side and be saved and
loaded as nnabla ``.h5`` files. The forward pass uses ``nnabla.functions`` on those variables so
that the same code can also run

* with a **tangent**: every linear layer ``f(h; W, b)`` becomes
  ``f(h; W, b) + eps[i] * f(h; U_W, U_b)`` for sample ``i``. ``eps`` is a (B,) variable held at 0,
  so ``d(sum_i loss_i)/d eps_i = <U, g_i>``: the product of a direction ``U`` with sample ``i``'s
  share of the mini-batch gradient, for the whole batch in one backward pass;
* with per-sample **masks** multiplied onto chosen activations (turn-over dropout);
* with per-sample **row weights** ``w`` inside the batch statistics of batch normalisation
  (training mode): ``d/dw_j`` at ``w = 1`` is the first-order effect of leaving row j out of the
  mini-batch, which in training mode also moves every other row's normalisation.

Batch normalisation: ``train=True`` normalises by the statistics of the mini-batch (and, in the
training graph only, updates the running statistics); ``train=False`` uses the running statistics.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import nnabla as nn
import nnabla.functions as F
import nnabla.initializer as I
import nnabla.parametric_functions as PF
import numpy as np

from common.fastmul import mul

Params = "OrderedDict[str, nn.Variable]"


@dataclass
class Tangent:
    """A direction ``U`` (same keys and shapes as the trainable parameters) and per-sample ``eps``."""

    eps: nn.Variable
    direction: Mapping[str, nn.Variable]


def _tangent_linear(op: Callable, h, params, prefix: str, tangent: Optional[Tangent], has_bias=True):
    W = params[f"{prefix}/W"]
    b = params[f"{prefix}/b"] if has_bias else None
    out = op(h, W, b)
    if tangent is not None:
        U = tangent.direction
        t = op(h, U[f"{prefix}/W"], U[f"{prefix}/b"] if has_bias else None)
        out = out + F.reshape(tangent.eps, (-1,) + (1,) * (len(out.shape) - 1)) * t
    return out


def channel_affine(h, scale, bias=None):
    """``h * scale + bias`` per channel, ``scale``/``bias`` of shape (1, C, 1, 1).

    A grouped 1x1 convolution (one group per channel): on nnabla's CPU backend it is several
    times faster, forward and backward, than the broadcasting ``Mul2``/``Add2`` it replaces, and
    unlike ``depthwise_convolution`` it can be differentiated twice by ``nn.grad``.
    """
    c = scale.shape[1]
    return F.convolution(h, F.reshape(scale, (c, 1, 1, 1)), None if bias is None else F.reshape(bias, (c,)),
                         group=c)


def weighted_batch_mean(a, weights=None):
    """Per-channel mean of ``a`` (B, C, H, W) over batch and space, shape (1, C, 1, 1).

    ``weights`` (a (B,) variable) weights row k by ``w_k``: ``sum_k w_k sum_hw a / (sum_k w_k HW)``
    (a GEMM, differentiable in ``a`` and ``w``); None: the plain mean.
    """
    if weights is None:
        return F.mean(a, axis=(0, 2, 3), keepdims=True)
    b, c = a.shape[:2]
    hw = int(np.prod(a.shape[2:]))
    s = F.affine(F.reshape(weights, (1, b)), F.reshape(a, (b, c * hw)))
    s = F.sum(F.reshape(s, (1, c, hw)), axis=2, keepdims=True)
    return F.reshape(s, (1, c, 1, 1)) / F.reshape(F.sum(weights) * float(hw), (1, 1, 1, 1))


#: Batch norm's running statistics: ``r <- BN_DECAY * r + (1 - BN_DECAY) * batch statistic``
#: (nnabla updates the running variance with the unbiased batch variance, n / (n - 1)).
BN_DECAY = 0.9


class Standardized(NamedTuple):
    """``batch_standardize``'s result: ``xhat = (h - mean) * inv``, ``inv = (var + eps)^-1/2``;
    ``mean`` and the biased ``var`` (1, C, 1, 1); ``running_var``: the unbiased variance
    ``var * n / (n - 1)`` (n = rows x H x W, row-weighted) that updates the running variance."""

    xhat: nn.Variable
    inv: nn.Variable
    mean: nn.Variable
    var: nn.Variable
    running_var: nn.Variable


def batch_standardize(h, weights=None, eps: float = 1e-5) -> Standardized:
    """Training-mode batch normalisation without its affine part, written out differentiably.

    The (optionally row-weighted) batch mean and biased variance per channel, as batch norm uses.
    nnabla 1.39's fused ``batch_normalization(output_stat=True)`` cannot be differentiated twice.
    """
    mean = weighted_batch_mean(h, weights)
    hc = channel_affine(h, F.constant(1.0, mean.shape), -mean)
    var = weighted_batch_mean(mul(hc, hc), weights)
    inv = F.pow_scalar(var + eps, -0.5)
    hw = float(np.prod(h.shape[2:]))
    if weights is None:
        n = h.shape[0] * hw
        running_var = var * (n / (n - 1.0))
    else:
        n = F.reshape(F.sum(weights) * hw, (1, 1, 1, 1))
        running_var = var * n / (n - 1.0)
    return Standardized(channel_affine(hc, inv), inv, mean, var, running_var)


def _batch_norm(h, params, prefix: str, train: bool, tangent: Optional[Tangent], stats, row_weights=None):
    """Batch normalisation; ``stats`` maps 'mean'/'var' names to the variables to use (and update).

    Training mode with ``row_weights`` (batch statistics weighted per row) or a tangent: the
    two-pass form of ``batch_standardize``, running statistics not updated. The analysis graphs
    use it; plain training keeps nnabla's fused kernel, whose variance ``E[h^2] - E[h]^2`` in
    float32 is less accurate where a channel's mean is large.
    """
    beta, gamma = params[f"{prefix}/beta"], params[f"{prefix}/gamma"]
    mean, var = stats[f"{prefix}/mean"], stats[f"{prefix}/var"]
    if train and (row_weights is not None or tangent is not None):
        xhat = batch_standardize(h, row_weights).xhat
        if tangent is None:
            return channel_affine(xhat, gamma, beta)
    elif tangent is None and not train and (mean.need_grad or var.need_grad):
        # nnabla's batch norm has no gradient w.r.t. the running statistics: written out.
        a = gamma * F.pow_scalar(var + 1e-5, -0.5)
        return channel_affine(h, a, beta - mean * a)
    elif tangent is None:
        return F.batch_normalization(h, beta, gamma, mean, var, axes=[1], decay_rate=BN_DECAY,
                                     eps=1e-5, batch_stat=train)
    else:
        # Unfused form so that the affine part can carry the per-sample tangent.
        zero = nn.Variable.from_numpy_array(np.zeros(beta.shape, np.float32))
        one = nn.Variable.from_numpy_array(np.ones(gamma.shape, np.float32))
        xhat = F.batch_normalization(h, zero, one, mean, var, axes=[1], decay_rate=BN_DECAY,
                                     eps=1e-5, batch_stat=train)
    U = tangent.direction
    e = F.reshape(tangent.eps, (-1, 1, 1, 1))
    return xhat * (gamma + e * U[f"{prefix}/gamma"]) + (beta + e * U[f"{prefix}/beta"])


def _masked(h, masks, name):
    if masks is None or name not in masks:
        return h
    m = masks[name]
    return h * F.reshape(m, m.shape + (1,) * (len(h.shape) - len(m.shape)))


# ---------------------------------------------------------------------- the layer vocabulary
class Pass(NamedTuple):
    """What a forward pass over layers needs besides its input (see ``run_layers``)."""

    params: Mapping[str, nn.Variable]
    train: bool
    tangent: Optional[Tangent]
    stats: Mapping[str, nn.Variable]
    masks: Optional[Mapping[str, nn.Variable]]
    row_weights: Optional[nn.Variable]


class Layer:
    """One step of a network, as data. ``kind`` names the step; its forward-mode (tangent) rule is
    the method of that name of ``models.autodiff._Jvp``."""

    kind: ClassVar[str] = ""

    def create(self, h: nn.Variable, rng: np.random.RandomState, num_classes: int) -> nn.Variable:
        """Create the layer's parameters (if any) in the current parameter scope; the output (shapes only)."""
        raise NotImplementedError

    def forward(self, h: nn.Variable, p: Pass) -> nn.Variable:
        """The layer's output on ``h``."""
        raise NotImplementedError

    def channels(self, c: int, num_classes: int) -> int:
        """Channels (or units) of the output, given ``c`` at the input."""
        return c


@dataclass(frozen=True)
class ParametricLayer(Layer):
    """A layer with parameters, named ``{scope}/{kind}/...`` (``prefix``): ``kind`` is also the scope
    nnabla's parametric function opens."""

    scope: str

    @property
    def prefix(self) -> str:
        return f"{self.scope}/{self.kind}"


@dataclass(frozen=True)
class Conv(ParametricLayer):
    """3x3 convolution, padding 1, stride 1, with bias: ``{scope}/conv/W`` (maps, in, 3, 3) and ``/b``."""

    maps: int
    kind: ClassVar[str] = "conv"

    @staticmethod
    def op(h: nn.Variable, W: nn.Variable, b: Optional[nn.Variable]) -> nn.Variable:
        """The linear map, for any ``W`` and ``b`` (or None) of the parameters' shapes."""
        return F.convolution(h, W, b, pad=(1, 1))

    def create(self, h, rng, num_classes):
        with nn.parameter_scope(self.scope):
            return PF.convolution(h, self.maps, (3, 3), pad=(1, 1), rng=rng)

    def forward(self, h, p):
        return _tangent_linear(self.op, h, p.params, self.prefix, p.tangent)

    def channels(self, c, num_classes):
        return self.maps


@dataclass(frozen=True)
class Affine(ParametricLayer):
    """Fully connected layer on the flattened input: ``{scope}/affine/W`` (in, units) and ``/b``.

    ``units`` None: the number of classes. ``w_std`` None: Glorot-uniform weights (nnabla's
    default), else normal with that standard deviation; zero bias either way.
    """

    units: Optional[int] = None
    w_std: Optional[float] = None
    kind: ClassVar[str] = "affine"

    @staticmethod
    def op(h: nn.Variable, W: nn.Variable, b: Optional[nn.Variable]) -> nn.Variable:
        """The linear map, for any ``W`` and ``b`` (or None) of the parameters' shapes."""
        return F.affine(h, W, b, base_axis=1)

    def create(self, h, rng, num_classes):
        units = self.channels(h.shape[1], num_classes)
        with nn.parameter_scope(self.scope):
            if self.w_std is None:
                return PF.affine(h, units, rng=rng)
            return PF.affine(h, units, w_init=I.NormalInitializer(self.w_std, rng=rng),
                             b_init=I.ConstantInitializer(0.0))

    def forward(self, h, p):
        return _tangent_linear(self.op, h, p.params, self.prefix, p.tangent)

    def channels(self, c, num_classes):
        return num_classes if self.units is None else self.units


@dataclass(frozen=True)
class BatchNorm(ParametricLayer):
    """Batch normalisation per channel: ``{scope}/bn/beta``, ``/gamma`` (trainable) and the running
    statistics ``/mean``, ``/var`` (see ``_batch_norm`` for the modes)."""

    kind: ClassVar[str] = "bn"

    def create(self, h, rng, num_classes):
        with nn.parameter_scope(self.scope):
            return PF.batch_normalization(h)

    def forward(self, h, p):
        return _batch_norm(h, p.params, self.prefix, p.train, p.tangent, p.stats, p.row_weights)


@dataclass(frozen=True)
class ReLU(Layer):
    """Rectified linear unit."""

    kind: ClassVar[str] = "relu"

    def create(self, h, rng, num_classes):
        return F.relu(h)

    def forward(self, h, p):
        return F.relu(h)


@dataclass(frozen=True)
class MaxPool(Layer):
    """Max pooling 2x2, stride 2."""

    kind: ClassVar[str] = "max_pool"

    def create(self, h, rng, num_classes):
        return F.max_pooling(h, (2, 2))

    def forward(self, h, p):
        return F.max_pooling(h, (2, 2))


@dataclass(frozen=True)
class Mask(Layer):
    """A turn-over dropout mask point called ``name``: the pass's ``masks[name]`` (B, channels),
    if given, multiplies the activation per row and channel; otherwise the identity."""

    name: str
    kind: ClassVar[str] = "mask"

    def create(self, h, rng, num_classes):
        return h

    def forward(self, h, p):
        return _masked(h, p.masks, self.name)


class Tap(NamedTuple):
    """A layer with parameters, its input and its output, recorded by a forward pass."""

    layer: ParametricLayer
    input: nn.Variable
    output: nn.Variable


def run_layers(layers: Sequence[Layer], h: nn.Variable, params: Mapping[str, nn.Variable], train: bool,
               tangent: Optional[Tangent] = None, stats: Optional[Mapping[str, nn.Variable]] = None,
               masks: Optional[Mapping[str, nn.Variable]] = None, row_weights: Optional[nn.Variable] = None,
               taps: Optional[List[Tap]] = None) -> nn.Variable:
    """``layers`` applied to ``h`` in order (arguments as ``Model.logits``; ``stats`` None: the
    statistics in ``params``); each layer with parameters appends a ``Tap`` to ``taps`` when given."""
    p = Pass(params, train, tangent, params if stats is None else stats, masks, row_weights)
    for layer in layers:
        out = layer.forward(h, p)
        if taps is not None and isinstance(layer, ParametricLayer):
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
        return any(isinstance(layer, Conv) for layer in self.layers)

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
    layers = (Affine("fc", w_std=0.01),)


class MLP(Model):
    """One hidden ReLU layer of 128 units."""

    name = "mlp"
    hidden = 128
    layers = (Affine("fc1", hidden), ReLU(), Mask("fc1"), Affine("fc2"))


def _cnn6_blocks(maps: Sequence[int]) -> Tuple[Layer, ...]:
    """Block k: conv3x3 + BN + ReLU, conv3x3 + ReLU, max-pool 2x2, mask point ``block{k}``."""
    layers: List[Layer] = []
    for k, m in enumerate(maps, start=1):
        layers += [Conv(f"conv{2 * k - 1}", m), BatchNorm(f"conv{2 * k - 1}"), ReLU(),
                   Conv(f"conv{2 * k}", m), ReLU(), MaxPool(), Mask(f"block{k}")]
    return tuple(layers)


class CNN6(Model):
    """The paper's network: three blocks of [conv3x3+BN+ReLU, conv3x3+ReLU+maxpool2], then affine.

    32/64/128 maps; 307,370 trainable parameters (+448 batch-norm statistics) for 1x32x32
    inputs and 10 classes.
    """

    name = "cnn6"
    maps = (32, 64, 128)
    layers = _cnn6_blocks(maps) + (Affine("fc"),)


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
