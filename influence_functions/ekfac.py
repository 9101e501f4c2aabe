"""EK-FAC influence functions: ``v = (G + lambda I)^-1 u`` with ``G`` an eigenvalue-corrected
Kronecker-factored approximation of the Gauss-Newton (Fisher) matrix (George et al. 2018; Grosse et
al. 2023; Kronfluence's default), then ``infl_j = <v, grad l(z_j)> / n_train`` as for every method.

Per linear layer (affine, convolution) with homogeneous input ``a`` (the layer input, plus a 1 for
the bias; for a convolution the unfolded 3x3 patch at one output position, KFC) and pre-activation
gradient ``g = d l / d out``, the per-sample gradient of the layer matrix ``M = [W | b]``
(``out x (in + 1)``) is ``G_n = sum_t g_{n,t} a_{n,t}^T`` (``t``: output positions, one for affine):

1. ``A = E[sum_t a a^T]``, ``S = E[sum_t g g^T]`` over the training set; ``Q_A``, ``Q_S`` their
   eigenvectors (pass 1);
2. ``Lambda[i, j] = (1/n) sum_n E_y[(Q_S^T G_n Q_A)_{ij}^2]``: the Fisher's diagonal in the
   Kronecker eigenbasis, fitted from per-sample gradients (pass 2);
3. ``V = Q_S [(Q_S^T U Q_A) / (Lambda + lambda)] Q_A^T`` for the layer's block ``U`` of ``u``.

The Fisher is block-diagonal across layers (no cross-layer terms). Batch norm's scale and shift
(cnn6) are kept as diagonal blocks with the same correction in the trivial basis:
``v = u / (E[g_param^2] + lambda)`` per scalar (``g_gamma = sum_hw g xhat``, ``g_beta = sum_hw g``,
inference mode: ``xhat`` from the running statistics).

Labels ``y`` of ``g`` (``fisher``):

* ``sampled`` (default; Kronfluence's): one label per sample and pass drawn from the model's
  predictive distribution, seeded. ``E_y[g g^T]`` is then the true Fisher, which for softmax
  cross-entropy equals the Gauss-Newton matrix ``J^T (diag p - p p^T) J``: positive
  semi-definite curvature of the same objective MINRES inverts (minus the second-derivative-of-
  the-network term that makes ``H`` indefinite on a CNN). The empirical Fisher (true labels) is
  a poor curvature estimate and is dominated by exactly the samples influence should find: a
  mislabeled sample's large gradient inflates the curvature along itself and shrinks its score.
* ``exact``: the expectation over all classes weighted by ``p`` (C backward passes per batch:
  the exact Gauss-Newton matrix; for tests and small models).
* ``empirical``: the true labels (for comparison).

Everything runs with batch norm in inference mode (``train=False``), as the other solvers.
Per-sample gradients come in factored form from one forward and one data-gradient backward pass
per batch (the layers' inputs and output gradients, the model's ``Tap`` records), never one graph per sample;
memory is bounded by the batch (``chunk_rows``). The scores use the exact batched per-sample
products ``Learner.per_sample_grad_dot`` (``estimator.influence_scores``), the same code as
MINRES' scores, so both share one sign convention.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from datasets import DataBundle
from datasets.batches import split_batches
from models.autodiff import Learner
from models.layers import Tap
from models.per_sample import LayerGradients, TapGraph

from .inverse import chunk_rows, influence_scores

FISHERS = ("sampled", "exact", "empirical")
#: Rows per batch of the factor passes for a convolutional model (cnn6) at 32x32 (the unfolded
#: patches of a batch of 64 take about 80 MB per layer in float32); the others use 256 rows.
FACTOR_ROWS_32PX = 64


@dataclass(frozen=True)
class EkfacOptions:
    """EK-FAC settings (the driver's ``--ekfac-fisher``)."""

    fisher: str = "sampled"


@dataclass
class EkfacInfo:
    """What an EK-FAC run did: seconds per phase and the label mode."""

    fisher: str
    passes: int = 0  # passes over the training set (forward + data-gradient backward(s))
    seconds: Dict[str, float] = field(default_factory=dict)
    layers: List[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))


# ---------------------------------------------------------------------------- blocks
class _Block(LayerGradients):
    """One layer's factors and eigenvalue correction (its per-sample gradients: ``LayerGradients``)."""

    def __init__(self, tap: Tap, learner: Learner):
        super().__init__(tap, learner, "EK-FAC")
        if self.kind == "bn":
            self.lam = {k: 0.0 for k in self.names}
        else:
            self.A = 0.0
            self.S = 0.0
            self.lam = 0.0

    # ---------------------------------------------------------------- the three steps
    def add_factors(self, a: Optional[np.ndarray], g: Optional[np.ndarray]) -> None:
        """``A += sum [a, 1][a, 1]^T``, ``S += sum g g^T`` over rows and positions (float32 GEMMs per batch,
        float64 sums; SciPy's SYRK, half the products, was slower here)."""
        if self.kind == "bn":
            return
        if a is not None:
            a2 = a.reshape(-1, a.shape[-1])
            if not hasattr(self, "a_sum"):
                self.a_sum, self.rows = 0.0, 0
            self.A = self.A + (a2.T @ a2).astype(np.float64)
            self.a_sum = self.a_sum + a2.sum(axis=0, dtype=np.float64)
            self.rows += len(a2)
        if g is not None:
            g2 = g.reshape(-1, g.shape[-1])
            self.S = self.S + (g2.T @ g2).astype(np.float64)

    def eigen(self) -> None:
        if self.kind == "bn":
            return
        A = np.block([[self.A, self.a_sum[:, None]], [self.a_sum[None, :], np.array([[float(self.rows)]])]])
        _, QA = np.linalg.eigh(A)
        _, QS = np.linalg.eigh(self.S)
        self.QA, self.QS = QA.astype(np.float32), QS.astype(np.float32)
        del self.A, self.S, self.a_sum

    def prepare(self, a: np.ndarray, order: Optional[str] = None):
        """A batch's activations for ``add_correction``: projected ``[a, 1] Q_A`` when that is the
        cheaper order (affine layers; convolutions whose patches are long against their positions),
        else as they are (the per-sample gradients are formed first)."""
        if self.kind == "bn":
            return a
        T, din, dout = a.shape[1], self.QA.shape[0], self.QS.shape[0]
        act_first = T * din * din + T * dout * dout + T * dout * din
        grad_first = T * dout * din + dout * dout * din + dout * din * din
        if order == "projected" or (order is None and (T == 1 or act_first <= grad_first)):
            return ("projected", a @ self.QA[:-1] + self.QA[-1])
        return ("raw", a)

    def add_correction(self, prepared, g: np.ndarray) -> None:
        """``Lambda += sum_n (Q_S^T G_n Q_A)^2`` for a batch."""
        if self.kind == "bn":
            for k, gr in self.bn_grads(prepared, g).items():
                self.lam[k] = self.lam[k] + np.square(gr.astype(np.float64)).sum(axis=0)
            return
        how, a = prepared
        if how == "projected":
            pg = g @ self.QS  # (B, T, out)
            if pg.shape[1] == 1:
                self.lam = self.lam + np.square(pg[:, 0].astype(np.float64)).T @ np.square(a[:, 0].astype(np.float64))
                return
            P = np.matmul(pg.transpose(0, 2, 1), a)  # (B, out, in + 1): projected per-sample gradients
        else:
            G = self.sample_gradients(a, g)
            P = (np.matmul(self.QS.T, G).reshape(-1, G.shape[2]) @ self.QA).reshape(G.shape)
        np.square(P, out=P)
        self.lam = self.lam + P.sum(axis=0).astype(np.float64)

    def self_products(self, prepared, g: np.ndarray, damping: float, n: int) -> np.ndarray:
        """This block's share of ``g_m^T (G + damping I)^-1 g_m`` for every row m: ``sum_ij (Q_S^T G_m
        Q_A)_ij^2 / (Lambda_ij / n + damping)`` (``prepare``'d activations, ``output_grads``)."""
        if self.kind == "bn":
            return sum((np.square(gr.astype(np.float64)) / (self.lam[k] / n + damping)).sum(axis=1)
                       for k, gr in self.bn_grads(prepared, g).items())
        how, a = prepared
        inv = 1.0 / (self.lam / n + damping)  # (out, in + 1)
        if how == "projected":
            pg = g @ self.QS
            if pg.shape[1] == 1:
                return np.einsum("bo,oi,bi->b", np.square(pg[:, 0].astype(np.float64)), inv,
                                 np.square(a[:, 0].astype(np.float64)))
            P = np.matmul(pg.transpose(0, 2, 1), a)
        else:
            G = self.sample_gradients(a, g)
            P = (np.matmul(self.QS.T, G).reshape(-1, G.shape[2]) @ self.QA).reshape(G.shape)
        return (np.square(P.astype(np.float64)) * inv).sum(axis=(1, 2))

    # ---------------------------------------------------------------- layer matrices
    def to_matrix(self, vec: Mapping[str, np.ndarray]) -> np.ndarray:
        W, b = np.asarray(vec[self.names[0]], np.float64), np.asarray(vec[self.names[1]], np.float64)
        if self.kind == "affine":  # nnabla affine: W (in, out)
            return np.hstack([W.reshape(-1, W.shape[-1]).T, b.reshape(-1, 1)])
        return np.hstack([W.reshape(W.shape[0], -1), b.reshape(-1, 1)])

    def from_matrix(self, M: np.ndarray, shapes: Mapping[str, tuple]) -> Dict[str, np.ndarray]:
        Ws, bs = shapes[self.names[0]], shapes[self.names[1]]
        if self.kind == "affine":
            W = M[:, :-1].T.reshape(Ws)
        else:
            W = M[:, :-1].reshape(Ws)
        return {self.names[0]: W, self.names[1]: M[:, -1].reshape(bs)}

    def precondition(self, u: Mapping[str, np.ndarray], damping: float, n: int,
                     shapes: Mapping[str, tuple]) -> Dict[str, np.ndarray]:
        """This block of ``(G + damping I)^-1 u`` (``Lambda`` summed over ``n`` samples)."""
        if self.kind == "bn":
            return {k: np.asarray(u[k], np.float64) / (self.lam[k].reshape(np.shape(u[k])) / n + damping)
                    for k in self.names}
        QA, QS = self.QA.astype(np.float64), self.QS.astype(np.float64)
        Ut = QS.T @ self.to_matrix(u) @ QA
        return self.from_matrix(QS @ (Ut / (self.lam / n + damping)) @ QA.T, shapes)


# ---------------------------------------------------------------------------- the estimator
def _cotangents(p: np.ndarray, y: np.ndarray, fisher: str, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Cotangents ``c`` with ``sum over yields of c c^T`` = the label expectation of ``(p - e_y)(p - e_y)^T``
    (``exact``), or one sample of it."""
    n, C = p.shape
    eye = np.eye(C)
    if fisher == "exact":
        for k in range(C):
            yield np.sqrt(p[:, k:k + 1]) * (p - eye[k])
    elif fisher == "sampled":
        cum = np.cumsum(p, axis=1)
        draw = np.minimum((rng.random((n, 1)) * cum[:, -1:] > cum).sum(axis=1), C - 1)
        yield p - eye[draw]
    elif fisher == "empirical":
        yield p - eye[np.asarray(y).reshape(-1)]
    else:
        raise ValueError(f"unknown Fisher {fisher!r}; choose one of {', '.join(FISHERS)}")


class Ekfac:
    """The fitted EK-FAC approximation of the Gauss-Newton matrix of the mean training loss."""

    def __init__(self, learner: Learner, data: DataBundle, options: EkfacOptions = EkfacOptions(), seed: int = 0,
                 batch: Optional[int] = None, show_progress: bool = False, desc: str = "EK-FAC"):
        if options.fisher not in FISHERS:
            raise ValueError(f"unknown Fisher {options.fisher!r}; choose one of {', '.join(FISHERS)}")
        self.learner, self.data, self.options = learner, data, options
        self.n = len(data.train)
        self.batch = batch or chunk_rows(learner, data, FACTOR_ROWS_32PX)
        self.info = EkfacInfo(options.fisher)
        self.shapes = {k: tuple(v.shape) for k, v in learner.trainable.items()}
        self._graphs: Dict[int, TapGraph] = {}
        self.blocks: Optional[List[_Block]] = None
        rngs = [np.random.default_rng([seed, 29, k]) for k in range(2)]
        t0 = time.time()
        self._pass(0, rngs[0], show_progress, f"{desc} factors")
        for b in self.blocks:
            b.eigen()
        self.info.seconds["factors"] = time.time() - t0
        t0 = time.time()
        self._pass(1, rngs[1], show_progress, f"{desc} correction")
        self.info.seconds["correction"] = time.time() - t0

    def graph(self, batch: int) -> TapGraph:
        """The inference-mode tap graph for ``batch`` rows (built once per size)."""
        if batch not in self._graphs:
            self._graphs[batch] = TapGraph(self.learner, batch)
        return self._graphs[batch]

    def _pass(self, which: int, rng: np.random.Generator, show_progress: bool, desc: str) -> None:
        bar = tqdm(total=self.n, desc=desc, unit="sample", disable=not show_progress, leave=False)
        for x, y in split_batches(self.data, self.data.train, self.batch):
            g = self.graph(len(x))
            if self.blocks is None:
                self.blocks = [_Block(t, self.learner) for t in g.layers]
                covered = {k for b in self.blocks for k in b.names}
                missing = set(self.learner.trainable) - covered
                if missing:
                    raise ValueError(f"EK-FAC does not cover parameters {sorted(missing)}")
                self.info.layers = [b.prefix for b in self.blocks]
            p = g.forward(x)
            acts = [b.activations(h) for b, h in zip(self.blocks, g.inputs())]
            if which == 0:
                for b, a in zip(self.blocks, acts):
                    b.add_factors(a, None)
            else:
                acts = [b.prepare(a) for b, a in zip(self.blocks, acts)]
            for c in _cotangents(p, y, self.options.fisher, rng):
                for b, a, gout in zip(self.blocks, acts, g.backward(c)):
                    go = b.output_grads(gout)
                    if which == 0:
                        b.add_factors(None, go)
                    else:
                        b.add_correction(a, go)
            bar.update(len(x))
        bar.close()
        self.info.passes += 1

    def inverse_product(self, u: Mapping[str, np.ndarray], damping: float) -> Dict[str, np.ndarray]:
        """``(G + damping I)^-1 u`` block by block (a dict over the trainable parameters)."""
        v: Dict[str, np.ndarray] = {}
        for b in self.blocks:
            v.update(b.precondition(u, damping, self.n, self.shapes))
        return {k: v[k] for k in self.learner.trainable}

    def self_influence(self, damping: float, show_progress: bool = False, desc: str = "EK-FAC self") -> np.ndarray:
        """``g_j^T (G + damping I)^-1 g_j`` for every training position j, ``g_j = grad l(z_j)`` with
        its own label, in the eigenbasis: each sample's gradient once, no solve (one more pass)."""
        out = np.empty(self.n)
        pos = 0
        bar = tqdm(total=self.n, desc=desc, unit="sample", disable=not show_progress, leave=False)
        for x, y in split_batches(self.data, self.data.train, self.batch):
            g = self.graph(len(x))
            p = g.forward(x)
            acts = [b.prepare(b.activations(h)) for b, h in zip(self.blocks, g.inputs())]
            outs = g.backward(p - np.eye(p.shape[1])[np.asarray(y).reshape(-1)])
            out[pos:pos + len(x)] = sum(b.self_products(a, b.output_grads(o), damping, self.n)
                                        for b, a, o in zip(self.blocks, acts, outs))
            pos += len(x)
            bar.update(len(x))
        bar.close()
        self.info.passes += 1
        return out

    def fisher_product(self, w: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """``G w`` (the approximation itself, for checks): ``(G + 0 I)`` applied block by block."""
        out: Dict[str, np.ndarray] = {}
        for b in self.blocks:
            if b.kind == "bn":
                out.update({k: np.asarray(w[k], np.float64) * b.lam[k].reshape(np.shape(w[k])) / self.n
                            for k in b.names})
                continue
            QA, QS = b.QA.astype(np.float64), b.QS.astype(np.float64)
            out.update(b.from_matrix(QS @ ((QS.T @ b.to_matrix(w) @ QA) * b.lam / self.n) @ QA.T, self.shapes))
        return {k: out[k] for k in self.learner.trainable}


def ekfac_influence(learner: Learner, data: DataBundle, u: Mapping[str, np.ndarray], damping: float,
                    options: EkfacOptions = EkfacOptions(), seed: int = 0, show_progress: bool = False,
                    desc: str = "Influence_functions_ekfac") -> Tuple[np.ndarray, EkfacInfo]:
    """Scores ``<(G + damping I)^-1 u, grad l(z_j)> / n_train`` over training positions (negative =
    harmful, as ``influence_functions``) and what the fit did."""
    scores, info = ekfac_influence_many(learner, data, [u], damping, options, seed, show_progress, desc)
    return scores[:, 0], info


def ekfac_influence_many(learner: Learner, data: DataBundle, us: Sequence[Mapping[str, np.ndarray]], damping: float,
                         options: EkfacOptions = EkfacOptions(), seed: int = 0, show_progress: bool = False,
                         desc: str = "Influence_functions_ekfac") -> Tuple[np.ndarray, EkfacInfo]:
    """(n_train, K): ``ekfac_influence`` for K directions ``us`` (e.g. K targets' loss gradients) from
    one fit of G (the fit reads only the training set): each column equals the single-direction score."""
    ek = Ekfac(learner, data, options, seed=seed, show_progress=show_progress, desc=desc)
    t0 = time.time()
    scores = np.stack([influence_scores(learner, data, ek.inverse_product(u, damping)) for u in us], axis=1)
    ek.info.seconds["scores"] = time.time() - t0
    ek.info.passes += len(us)
    return scores, ek.info


def ekfac_self_influence(learner: Learner, data: DataBundle, damping: float, options: EkfacOptions = EkfacOptions(),
                         seed: int = 0, show_progress: bool = False,
                         desc: str = "Influence_functions_ekfac_self") -> Tuple[np.ndarray, EkfacInfo]:
    """Scores ``-g_j^T (G + damping I)^-1 g_j / n_train`` (self-influence, negated so that the most
    self-influential samples come first in the influence CSV) and what the fit did."""
    ek = Ekfac(learner, data, options, seed=seed, show_progress=show_progress, desc=desc)
    t0 = time.time()
    scores = -ek.self_influence(damping, show_progress, f"{desc} scores") / len(data.train)
    ek.info.seconds["scores"] = time.time() - t0
    return scores, ek.info
