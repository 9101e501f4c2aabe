"""Batch normalisation per channel: ``beta``, ``gamma`` (trainable) and the running statistics
``mean``, ``var``; its arithmetic, written out where nnabla's fused kernel cannot be differentiated.

``train=True`` normalises by the statistics of the mini-batch (and, in the training graph only,
updates the running statistics); ``train=False`` uses the running statistics. Per-row weights
``w`` inside the batch statistics (training mode): ``d/dw_j`` at ``w = 1`` is the first-order effect
of leaving row j out of the mini-batch, which in training mode also moves every other row's
normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Tuple

import nnabla as nn
import nnabla.functions as F
import nnabla.initializer as I
import numpy as np

from common.fastmul import mul

from .base import Layer

#: Batch norm's running statistics: ``r <- BN_DECAY * r + (1 - BN_DECAY) * batch statistic``
#: (nnabla updates the running variance with the unbiased batch variance, n / (n - 1)).
BN_DECAY = 0.9
EPS = 1e-5


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


class Standardized(NamedTuple):
    """``batch_standardize``'s result: ``xhat = (h - mean) * inv``, ``inv = (var + eps)^-1/2``;
    ``mean`` and the biased ``var`` (1, C, 1, 1); ``running_var``: the unbiased variance
    ``var * n / (n - 1)`` (n = rows x H x W, row-weighted) that updates the running variance."""

    xhat: nn.Variable
    inv: nn.Variable
    mean: nn.Variable
    var: nn.Variable
    running_var: nn.Variable


def batch_standardize(h, weights=None, eps: float = EPS) -> Standardized:
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


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Over axis 1 of feature maps (B, C, H, W) or of an affine layer's output (B, C), as (B, C, 1, 1);
    parameters named in full (``conv1/bn/beta``), created as ``PF.batch_normalization`` does (beta 0,
    gamma 1, mean 0, var 1, of shape (1, C, 1, 1) or the file's ``shape``)."""

    beta: str
    gamma: str
    mean: str
    var: str
    shape: Tuple[int, ...] = ()
    kind: ClassVar[str] = "batch_norm"
    functions: ClassVar[Tuple[str, ...]] = ("BatchNormalization",)
    tap: ClassVar[str] = "bn"

    @classmethod
    def scoped(cls, scope: str) -> BatchNorm:
        """Named as ``PF.batch_normalization`` under ``scope``: ``{scope}/bn/beta`` ..."""
        return cls(*(f"{scope}/bn/{k}" for k in ("beta", "gamma", "mean", "var")))

    @property
    def prefix(self) -> str:
        """The parameters' common scope (``conv1/bn``)."""
        return self.mean[:-len("/mean")]

    def parameter_names(self) -> Tuple[str, ...]:
        """The trainable parameters, in the order of the per-sample factors."""
        return (self.gamma, self.beta)

    def create(self, h, rng, num_classes):
        shape = self.shape or (1, h.shape[1]) + (1,) * (len(h.shape) - 2)
        for name, value, need_grad in ((self.beta, 0.0, True), (self.gamma, 1.0, True), (self.mean, 0.0, False),
                                       (self.var, 1.0, False)):
            nn.parameter.get_parameter_or_create(name, tuple(shape), I.ConstantInitializer(value), need_grad)
        return h

    def forward(self, h, p):
        P, S = p.params, p.stats
        beta, gamma, mean, var = P[self.beta], P[self.gamma], S[self.mean], S[self.var]
        flat = len(h.shape) == 2
        if flat and p.train and p.tangent is None and p.row_weights is None:
            # plain training: nnabla's fused kernel on the parameters themselves (it updates the
            # running statistics, which a reshaped view would not let it do)
            return F.batch_normalization(h, beta, gamma, mean, var, axes=[1], decay_rate=BN_DECAY, eps=EPS,
                                         batch_stat=True)
        U = p.tangent.direction if p.tangent is not None else None
        if flat:
            c4 = (1, h.shape[1], 1, 1)
            beta, gamma, mean, var = (F.reshape(v, c4) for v in (beta, gamma, mean, var))
            U = U and {k: F.reshape(U[k], c4) for k in (self.beta, self.gamma)}
            out = self._normalise(F.reshape(h, h.shape + (1, 1)), beta, gamma, mean, var, p, U)
            return F.reshape(out, h.shape)
        return self._normalise(h, beta, gamma, mean, var, p, U)

    def _normalise(self, h, beta, gamma, mean, var, p, U):
        """Feature maps. Training mode with row weights or a tangent: the two-pass form of
        ``batch_standardize``, running statistics not updated (the analysis graphs); plain training
        keeps nnabla's fused kernel, whose variance ``E[h^2] - E[h]^2`` in float32 is less accurate
        where a channel's mean is large."""
        train = p.train
        if train and (p.row_weights is not None or U is not None):
            xhat = batch_standardize(h, p.row_weights).xhat
            if U is None:
                return channel_affine(xhat, gamma, beta)
        elif U is None and not train and (mean.need_grad or var.need_grad):
            # nnabla's batch norm has no gradient w.r.t. the running statistics: written out.
            a = gamma * F.pow_scalar(var + EPS, -0.5)
            return channel_affine(h, a, beta - mean * a)
        elif U is None:
            return F.batch_normalization(h, beta, gamma, mean, var, axes=[1], decay_rate=BN_DECAY, eps=EPS,
                                         batch_stat=train)
        else:
            # Unfused form so that the affine part can carry the per-sample tangent.
            zero = nn.Variable.from_numpy_array(np.zeros(beta.shape, np.float32))
            one = nn.Variable.from_numpy_array(np.ones(gamma.shape, np.float32))
            xhat = F.batch_normalization(h, zero, one, mean, var, axes=[1], decay_rate=BN_DECAY, eps=EPS,
                                         batch_stat=train)
        e = F.reshape(p.tangent.eps, (-1, 1, 1, 1))
        return xhat * (gamma + e * U[self.gamma]) + (beta + e * U[self.beta])

    def jvp(self, j, h, dh):
        """Feature maps only (``NnpModel.forward_mode`` declines batch norm after an affine layer).
        Training mode differentiates the (row-weighted) batch statistics and records them in
        ``j.batch_stats`` as ``(mean name, var name, batch mean, unbiased batch variance)``: what the
        training step feeds into the running statistics."""
        beta, gamma = j.P[self.beta], j.P[self.gamma]
        mean, var = j.stats[self.mean], j.stats[self.var]
        w = j.weights
        if j.train:
            st = batch_standardize(h, w)
            xhat, inv = st.xhat, st.inv
            j.batch_stats.append((self.mean, self.var, st.mean, st.running_var))
            out = channel_affine(xhat, gamma, beta)
        else:
            out = F.batch_normalization(h, beta, gamma, mean, var, axes=[1], decay_rate=BN_DECAY, eps=EPS,
                                        batch_stat=False)
            inv = F.pow_scalar(var + EPS, -0.5)
            xhat = channel_affine(h, inv, -mean * inv)
        t = channel_affine(xhat, j.V[self.gamma], j.V[self.beta])
        j.taps.append((out, t))
        if not j.tangent:
            return out, None
        if dh is None:  # the input does not depend on the parameters
            return out, t
        a = gamma * inv
        if not j.train:
            return out, channel_affine(dh, a) + t
        # Batch statistics (row-weighted means where weights are given):
        # d xhat = (dc - xhat * mean(xhat * dc)) / s with dc = dh - mean(dh);
        # mean(xhat * dc) = mean(xhat * dh) as mean(xhat) = 0.
        mdh = weighted_batch_mean(dh, w)
        m = weighted_batch_mean(mul(xhat, dh), w)
        return out, channel_affine(dh, a, -a * mdh) + channel_affine(xhat, -a * m) + t

    def batch_statistics(self, h: nn.Variable, weights: nn.Variable, stats) -> Tuple[str, str, nn.Variable,
                                                                                     nn.Variable]:
        """``(mean name, var name, row-weighted batch mean, unbiased batch variance)`` of a training
        pass on ``h``, in the running statistics' shapes (``stats``)."""
        st = batch_standardize(F.reshape(h, h.shape + (1, 1)) if len(h.shape) == 2 else h, weights)
        return (self.mean, self.var, F.reshape(st.mean, stats[self.mean].shape),
                F.reshape(st.running_var, stats[self.var].shape))

    @classmethod
    def from_nnp(cls, f, inputs, shapes, where):
        from common.errors import UserError
        p = f.batch_normalization_param
        if len(inputs) != 5 or p.no_scale or p.no_bias:
            raise UserError(f"{where}: function BatchNormalization ({f.name}) without beta or gamma is not supported")
        if list(p.axes) not in ([], [1]) or not np.isclose(p.decay_rate, BN_DECAY) or not np.isclose(p.eps, EPS):
            raise UserError(f"{where}: function BatchNormalization ({f.name}) needs axes [1], decay_rate 0.9 and "
                            f"eps 1e-5 (NNC's defaults), got {list(p.axes)}, {p.decay_rate:g}, {p.eps:g}")
        prefix = inputs[1][:-len("/beta")]
        if [n[len(prefix):] for n in inputs[1:]] != ["/beta", "/gamma", "/mean", "/var"]:
            raise UserError(f"{where}: function BatchNormalization ({f.name}) needs parameters named P/beta, "
                            f"P/gamma, P/mean, P/var, got {', '.join(inputs[1:])}")
        return cls(inputs[1], inputs[2], inputs[3], inputs[4], tuple(shapes[inputs[1]]))

    # ------------------------------------------------------------------ per-sample factors
    def check_tap(self, user: str) -> None:
        """Every batch norm is covered."""

    def tap_prepare(self, params) -> Tuple[np.ndarray, np.ndarray]:
        """The running mean and ``(var + eps)^-1/2`` (1, C, 1, 1), float32."""
        mean = params[self.mean].d.astype(np.float32).reshape(1, -1, 1, 1)
        var = params[self.var].d.astype(np.float32).reshape(1, -1, 1, 1)
        return mean, 1.0 / np.sqrt(var + np.float32(EPS))

    @staticmethod
    def tap_activations(h: np.ndarray, prepared: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """``xhat`` from the running statistics, (B, C, HW)."""
        if h.ndim == 2:  # after an affine layer
            h = h.reshape(h.shape + (1, 1))
        mean, inv = prepared
        return ((h - mean) * inv).reshape(h.shape[0], h.shape[1], -1)

    @staticmethod
    def tap_output_grads(g: np.ndarray) -> np.ndarray:
        """(B, C, HW) output gradients."""
        return g.reshape(g.shape[0], g.shape[1], -1)
