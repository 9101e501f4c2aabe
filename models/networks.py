"""The classifiers, written as pure functions of an explicit parameter dictionary.

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
from typing import Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

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


def _conv(h, params, prefix, tangent):
    return _tangent_linear(lambda x, W, b: F.convolution(x, W, b, pad=(1, 1)), h, params, prefix, tangent)


def _affine(h, params, prefix, tangent):
    return _tangent_linear(lambda x, W, b: F.affine(x, W, b, base_axis=1), h, params, prefix, tangent)


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


class Model:
    """A classifier: parameter creation plus a forward pass ``logits(x, params, train, ...)``."""

    name: str = ""
    #: Layer outputs that accept a per-sample mask, lowest first (turn-over dropout).
    mask_points: Tuple[str, ...] = ()

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

    def mask_shapes(self) -> Dict[str, int]:
        """Channels (or units) of each mask point."""
        raise NotImplementedError

    def _create(self, x, rng) -> None:
        raise NotImplementedError

    def logits(self, x: nn.Variable, params: Mapping[str, nn.Variable], train: bool,
               tangent: Optional[Tangent] = None, stats: Optional[Mapping[str, nn.Variable]] = None,
               masks: Optional[Mapping[str, nn.Variable]] = None,
               row_weights: Optional[nn.Variable] = None) -> nn.Variable:
        """Class scores for ``x``. ``stats`` overrides the batch-norm statistics variables;
        ``row_weights`` weights the rows inside training-mode batch statistics (models without
        batch normalisation ignore it)."""
        raise NotImplementedError


class LogReg(Model):
    """Multinomial logistic regression on the flattened image."""

    name = "logreg"

    def _create(self, x, rng):
        with nn.parameter_scope("fc"):
            PF.affine(x, self.num_classes, w_init=I.NormalInitializer(0.01, rng=rng),
                      b_init=I.ConstantInitializer(0.0))

    def logits(self, x, params, train, tangent=None, stats=None, masks=None, row_weights=None):
        return _affine(x, params, "fc/affine", tangent)


class MLP(Model):
    """One hidden ReLU layer of 128 units."""

    name = "mlp"
    hidden = 128
    mask_points = ("fc1",)

    def mask_shapes(self):
        return {"fc1": self.hidden}

    def _create(self, x, rng):
        with nn.parameter_scope("fc1"):
            h = PF.affine(x, self.hidden, w_init=I.UniformInitializer(
                I.calc_uniform_lim_glorot(int(np.prod(self.input_shape)), self.hidden), rng=rng))
        with nn.parameter_scope("fc2"):
            PF.affine(h, self.num_classes, w_init=I.UniformInitializer(
                I.calc_uniform_lim_glorot(self.hidden, self.num_classes), rng=rng))

    def logits(self, x, params, train, tangent=None, stats=None, masks=None, row_weights=None):
        h = F.relu(_affine(x, params, "fc1/affine", tangent))
        h = _masked(h, masks, "fc1")
        return _affine(h, params, "fc2/affine", tangent)


class CNN6(Model):
    """The paper's network: three blocks of [conv3x3+BN+ReLU, conv3x3+ReLU+maxpool2], then affine.

    32/64/128 maps; 307,370 trainable parameters (+448 batch-norm statistics) for 1x32x32
    inputs and 10 classes.
    """

    name = "cnn6"
    maps = (32, 64, 128)
    mask_points = ("block1", "block2", "block3")

    def mask_shapes(self):
        return dict(zip(self.mask_points, self.maps))

    def _create(self, x, rng):
        h = x
        for k, m in enumerate(self.maps, start=1):
            with nn.parameter_scope(f"conv{2 * k - 1}"):
                h = PF.convolution(h, m, (3, 3), pad=(1, 1), rng=rng)
                h = PF.batch_normalization(h)
            with nn.parameter_scope(f"conv{2 * k}"):
                h = PF.convolution(h, m, (3, 3), pad=(1, 1), rng=rng)
            h = F.max_pooling(h, (2, 2))
        with nn.parameter_scope("fc"):
            PF.affine(h, self.num_classes, rng=rng)

    def logits(self, x, params, train, tangent=None, stats=None, masks=None, row_weights=None):
        stats = params if stats is None else stats
        h = x
        for k in range(1, len(self.maps) + 1):
            h = _conv(h, params, f"conv{2 * k - 1}/conv", tangent)
            h = F.relu(_batch_norm(h, params, f"conv{2 * k - 1}/bn", train, tangent, stats, row_weights))
            h = F.relu(_conv(h, params, f"conv{2 * k}/conv", tangent))
            h = F.max_pooling(h, (2, 2))
            h = _masked(h, masks, f"block{k}")
        return _affine(h, params, "fc/affine", tangent)


MODELS: Dict[str, type] = {m.name: m for m in (CNN6, LogReg, MLP)}


def build_model(name: str, input_shape: Sequence[int], num_classes: int) -> Model:
    """The model called ``name`` (``cnn6``, ``logreg``, ``mlp``) for the given input and classes."""
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
