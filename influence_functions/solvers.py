"""Solvers for ``(H + alpha I) v = u``, pure functions on flat float64 vectors.

``H`` is never formed: the solvers see it only through Hessian-vector products.

* ``hvp(v) -> H v``: the full-batch product (the Hessian of the mean training loss);
* ``minibatch_hvps(epoch) -> iterable of hvp_b``: one pass over the training set in a seeded
  order, each ``hvp_b(v) -> H_b v`` the product with the Hessian of one mini-batch's mean loss
  (an unbiased estimate of ``H v``).

The tests pass explicit matrices; ``influence_functions.inverse`` passes nnabla double
backward products. Every solver returns ``(v, SolverInfo)``; ``solve`` adds the relative residual
``||(H + alpha I) v - u|| / ||u||`` measured with the full-batch ``hvp`` (one extra pass), so a
solve that did not converge (or diverged, as the original example's did on MNIST) is visible.

Solvers:

``cg``     conjugate gradient on full-batch products (exact arithmetic: the solution in at most
           dim iterations): ``scipy.sparse.linalg.cg`` on a ``LinearOperator``. Stops at ``tol`` relative
           residual or ``max_iter`` iterations, or
           when it meets a direction of non-positive curvature (``H + alpha I`` not positive
           definite: a non-convex model with too little damping), keeping the iterate so far.
``minres`` (the default) MINRES (Paige & Saunders, 1975) on full-batch products: the same Krylov space as CG,
           but it minimises the residual at every iteration (so it never rises above 1) and it
           solves symmetric *indefinite* systems too. At the final parameters of a non-convex
           model (MLP, cnn6) ``H`` has negative eigenvalues and ``H + 0.1 I`` is often indefinite:
           there CG breaks down and MINRES still converges. Stops like CG (``tol``, ``max_iter``).
           Written out rather than ``scipy.sparse.linalg.minres``: SciPy's stops on
           ``||r|| <= tol (||A|| ||v|| + ||u||)``-type tests, which left a relative residual of 3e-5
           at tol 1e-5 on the logistic-regression test problem (10 products instead of 12), and its
           callback gets only the iterate, so reporting the residual per iteration would cost one
           more full-batch product each (twice the cost); here ``phibar`` is that residual for free
           (bench/NOTES.md, 2026-11-30).
``sgd``    the original example's: minimise ``0.5 v'(H_b + alpha I)v - u'v`` by momentum SGD
           (nnabla's ``Momentum``: ``m <- mu m + lr g; v <- v - m``) over training mini-batches,
           from ``v = 0``, 2 epochs, lr 0.005, momentum 0.9. It minimises a quadratic, so it
           diverges along directions where ``H + alpha I`` has negative curvature.
``lissa``  Agarwal et al. (2017) as used by Koh & Liang: ``w_0 = u``,
           ``w_k = u + (I - (H_k + alpha I)/scale) w_{k-1}`` with a fresh mini-batch Hessian
           ``H_k`` per step, ``depth`` steps, estimate ``w / scale`` averaged over ``repeats``
           runs. It converges when ``scale`` exceeds the largest eigenvalue of ``H_k + alpha I``;
           ``scale=None`` picks 1.2 x an estimate of it from 20 power-iteration steps on
           mini-batch products. Like ``sgd`` it diverges along negative curvature.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional, Tuple

import numpy as np

HVP = Callable[[np.ndarray], np.ndarray]
MinibatchHVPs = Callable[[int], Iterable[HVP]]

SOLVERS = ("cg", "minres", "sgd", "lissa")


@dataclass
class SolverInfo:
    """What a solve did: iterations, full-batch-equivalent passes of HVPs, residual, notes."""

    solver: str
    iterations: int = 0
    passes: float = 0.0  # Hessian-vector products, in full passes over the training set
    residual: float = float("nan")  # ||(H + alpha I) v - u|| / ||u||, full-batch H
    converged: bool = False
    seconds: float = 0.0
    notes: list = field(default_factory=list)

    @property
    def note(self) -> str:
        return "; ".join(self.notes)


def relative_residual(hvp: HVP, v: np.ndarray, u: np.ndarray, damping: float) -> float:
    """``||(H + damping I) v - u|| / ||u||`` (0 when u = 0 and v solves it)."""
    r = hvp(v) + damping * v - u
    nu = float(np.linalg.norm(u))
    nr = float(np.linalg.norm(r))
    return nr / nu if nu > 0 else nr


# ---------------------------------------------------------------------------- solvers
class _StopSolve(Exception):
    """Raised inside a LinearOperator's product to end a SciPy solve early (keeping its last iterate)."""


def conjugate_gradient(hvp: HVP, u: np.ndarray, damping: float, max_iter: int = 50, tol: float = 1e-5,
                       progress: Optional[Callable[[int, float], None]] = None) -> Tuple[np.ndarray, SolverInfo]:
    """CG for ``(H + damping I) v = u`` from ``v = 0`` with full-batch products ``hvp``:
    ``scipy.sparse.linalg.cg`` on a ``LinearOperator``.

    SciPy asks for one product ``q = (H + aI) p`` per iteration, with ``p`` the search direction:
    the operator checks the curvature ``p'q`` there and ends the solve (keeping the last iterate)
    when it is not positive or not finite. The callback keeps the residual by SciPy's own
    recurrence ``r <- r - (r'r / p'q) q`` (no extra product) for ``progress``.
    """
    from scipy.sparse.linalg import LinearOperator, cg

    info = SolverInfo("cg")
    u = np.asarray(u, np.float64)
    nu = float(np.linalg.norm(u))
    if nu == 0.0:
        info.converged = True
        return np.zeros_like(u), info
    state = {"x": np.zeros_like(u), "r": u.copy(), "p": None, "q": None}

    def matvec(p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, np.float64).reshape(-1)
        q = hvp(p) + damping * p
        info.passes += 1
        pq = float(np.dot(p, q))
        if not np.isfinite(pq):
            info.notes.append(f"non-finite Hessian-vector product at iteration {info.iterations + 1}")
            raise _StopSolve
        if pq <= 0.0:
            info.notes.append(f"stopped at iteration {info.iterations + 1}: non-positive curvature p'(H+aI)p = "
                              f"{pq:.3g} (H + alpha I is not positive definite: use --solver minres or raise "
                              f"--damping)")
            raise _StopSolve
        state["p"], state["q"] = p, q
        return q

    def callback(xk: np.ndarray) -> None:
        r = state["r"]
        state["r"] = r - (np.dot(r, r) / np.dot(state["p"], state["q"])) * state["q"]
        state["x"] = np.array(xk, np.float64)
        info.iterations += 1
        if progress is not None:
            progress(info.iterations, float(np.linalg.norm(state["r"])) / nu)

    op = LinearOperator((len(u), len(u)), matvec=matvec, dtype=np.float64)
    try:
        v, _ = cg(op, u, rtol=tol, atol=0.0, maxiter=max_iter, callback=callback)
    except _StopSolve:
        v = state["x"]
    info.converged = bool(np.linalg.norm(state["r"]) <= tol * nu)
    return np.asarray(v, np.float64), info


def minres(hvp: HVP, u: np.ndarray, damping: float, max_iter: int = 50, tol: float = 1e-5,
           progress: Optional[Callable[[int, float], None]] = None) -> Tuple[np.ndarray, SolverInfo]:
    """MINRES for the symmetric (possibly indefinite) ``(H + damping I) v = u`` from ``v = 0``.

    Lanczos with Givens rotations (the unpreconditioned form of Paige & Saunders' algorithm,
    as in SciPy's ``minres``); ``phibar`` is the residual norm of the current iterate.
    """
    info = SolverInfo("minres")
    u = np.asarray(u, np.float64)
    v = np.zeros_like(u)
    beta1 = float(np.linalg.norm(u))
    if beta1 == 0.0:
        info.converged = True
        return v, info
    r1 = u.copy()
    r2 = u.copy()
    y = u.copy()
    beta, oldb = beta1, 0.0
    dbar = epsln = 0.0
    phibar = beta1
    cs, sn = -1.0, 0.0
    w = np.zeros_like(u)
    w2 = np.zeros_like(u)
    tiny = np.finfo(np.float64).eps
    for k in range(max_iter):
        q = y / beta  # Lanczos vector
        y = hvp(q) + damping * q
        info.passes += 1
        if k > 0:
            y = y - (beta / oldb) * r1
        alfa = float(q @ y)
        y = y - (alfa / beta) * r2
        r1, r2 = r2, y
        oldb, beta = beta, float(np.linalg.norm(y))
        if not (np.isfinite(alfa) and np.isfinite(beta)):
            info.notes.append(f"non-finite Hessian-vector product at iteration {k + 1}")
            break
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln = sn * beta
        dbar = -cs * beta
        gamma = max(float(np.hypot(gbar, beta)), tiny)
        cs, sn = gbar / gamma, beta / gamma
        phi = cs * phibar
        phibar = sn * phibar
        w1, w2 = w2, w
        w = (q - oldeps * w1 - delta * w2) / gamma
        v = v + phi * w
        info.iterations = k + 1
        if progress is not None:
            progress(k + 1, phibar / beta1)
        if phibar <= tol * beta1:
            info.converged = True
            break
        if beta <= tiny * beta1:  # invariant Krylov subspace: v is exact
            break
    return v, info


def momentum_sgd(minibatch_hvps: MinibatchHVPs, u: np.ndarray, damping: float, epochs: int = 2,
                 lr: float = 0.005, momentum: float = 0.9, v0: Optional[np.ndarray] = None,
                 steps_per_pass: Optional[int] = None) -> Tuple[np.ndarray, SolverInfo]:
    """The original example's solver: momentum SGD on ``0.5 v'(H_b + aI)v - u'v``, from ``v0`` (0)."""
    info = SolverInfo("sgd")
    u = np.asarray(u, np.float64)
    v = np.zeros_like(u) if v0 is None else np.array(v0, np.float64)
    m = np.zeros_like(u)
    for epoch in range(epochs):
        for hvp_b in minibatch_hvps(epoch):
            g = hvp_b(v) + damping * v - u
            m = momentum * m + lr * g
            v = v - m
            info.iterations += 1
            if not np.all(np.isfinite(v)):
                info.notes.append(f"diverged (non-finite v) at step {info.iterations}")
                return v, info
    if steps_per_pass:
        info.passes = info.iterations / steps_per_pass
    return v, info


def estimate_top_eigenvalue(stream: Iterator[HVP], dim: int, steps: int = 20, seed: int = 0) -> float:
    """Largest eigenvalue of the mini-batch Hessians, by power iteration on successive batches.

    Returns the largest Rayleigh quotient seen over the last half of the steps.
    """
    w = np.random.default_rng(seed).standard_normal(dim)
    w /= np.linalg.norm(w)
    quotients = []
    for _ in range(steps):
        h = next(stream)(w)
        quotients.append(float(w @ h))
        n = float(np.linalg.norm(h))
        if not np.isfinite(n) or n == 0.0:
            break
        w = h / n
    tail = quotients[len(quotients) // 2:] or quotients
    return max(tail) if tail else 0.0


def _endless(minibatch_hvps: MinibatchHVPs, start_epoch: int = 0) -> Iterator[HVP]:
    for epoch in itertools.count(start_epoch):
        yield from minibatch_hvps(epoch)


def lissa(minibatch_hvps: MinibatchHVPs, u: np.ndarray, damping: float, scale: Optional[float] = None,
          depth: int = 1000, repeats: int = 1, steps_per_pass: Optional[int] = None,
          power_steps: int = 20, seed: int = 0) -> Tuple[np.ndarray, SolverInfo]:
    """LiSSA: ``w <- u + (I - (H_k + aI)/scale) w`` for ``depth`` steps; estimate ``w / scale``."""
    info = SolverInfo("lissa")
    u = np.asarray(u, np.float64)
    stream = _endless(minibatch_hvps)
    used = 0
    if scale is None:
        top = estimate_top_eigenvalue(stream, len(u), power_steps, seed)
        used += power_steps
        scale = 1.2 * (max(top, 0.0) + damping)
        if not scale > 0:
            scale = 1.0
        info.notes.append(f"scale {scale:.4g} (1.2 x estimated top eigenvalue {top:.4g} + damping)")
    else:
        info.notes.append(f"scale {scale:.4g}")
    total = np.zeros_like(u)
    for _ in range(repeats):
        w = u.copy()
        for _k in range(depth):
            hw = next(stream)(w)
            w = u + w - (hw + damping * w) / scale
            used += 1
            info.iterations += 1
            if not np.all(np.isfinite(w)):
                info.notes.append(f"diverged (non-finite) at step {info.iterations}: raise --lissa-scale or --damping")
                if steps_per_pass:
                    info.passes = used / steps_per_pass
                return w / scale, info
        total += w / scale
    if steps_per_pass:
        info.passes = used / steps_per_pass
    return total / repeats, info


# ---------------------------------------------------------------------------- dispatcher
@dataclass(frozen=True)
class SolverOptions:
    """Settings of the four solvers (the drivers' flags)."""

    solver: str = "minres"
    cg_iters: int = 50  # cg and minres: most iterations (full-batch products)
    tol: float = 1e-5  # cg/minres stop here; 'converged' means residual <= tol, for every solver
    sgd_epochs: int = 2
    sgd_lr: float = 0.005
    sgd_momentum: float = 0.9
    lissa_scale: Optional[float] = None
    lissa_depth: int = 1000
    lissa_repeats: int = 1


def solve(hvp: HVP, minibatch_hvps: Optional[MinibatchHVPs], u: np.ndarray, damping: float,
          options: SolverOptions = SolverOptions(), steps_per_pass: Optional[int] = None,
          seed: int = 0, progress: Optional[Callable[[int, float], None]] = None) -> Tuple[np.ndarray, SolverInfo]:
    """Run ``options.solver`` and measure its relative residual with the full-batch ``hvp``."""
    t0 = time.time()
    if options.solver == "cg":
        v, info = conjugate_gradient(hvp, u, damping, options.cg_iters, options.tol, progress)
    elif options.solver == "minres":
        v, info = minres(hvp, u, damping, options.cg_iters, options.tol, progress)
    elif options.solver == "sgd":
        v, info = momentum_sgd(minibatch_hvps, u, damping, options.sgd_epochs, options.sgd_lr,
                               options.sgd_momentum, steps_per_pass=steps_per_pass)
    elif options.solver == "lissa":
        v, info = lissa(minibatch_hvps, u, damping, options.lissa_scale, options.lissa_depth,
                        options.lissa_repeats, steps_per_pass=steps_per_pass, seed=seed)
    else:
        raise ValueError(f"unknown solver '{options.solver}'; choose one of {', '.join(SOLVERS)}")
    if np.all(np.isfinite(v)):
        info.residual = relative_residual(hvp, v, u, damping)
    else:
        info.residual = float("inf")
    info.converged = bool(info.residual <= options.tol)
    info.passes += 1  # the residual's full pass
    info.seconds = time.time() - t0
    return v, info
