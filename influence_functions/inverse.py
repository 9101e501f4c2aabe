"""Koh & Liang's influence functions on a ``Learner``, the inverse-Hessian math (``estimators`` holds the
pipeline's adapters): ``v ~= (H + alpha I)^-1 u``, then
``infl_j = <v, grad l(z_j)> / n_train`` for every training sample.

* ``H``: the Hessian of the mean training loss at the final parameters, over the un-augmented
  training samples, with batch normalisation in inference mode (running statistics), so that
  ``H`` is the Hessian of one fixed function (``train=False`` in every product). Trainable
  parameters only: the batch-norm running statistics are not parameters of that function.
* ``u``: the gradient of the mean validation loss at the same parameters (``Trial.u``).
* Sign (docs/SPEC.md section 2): removing ``z_j`` moves the optimum by ``+(1/n) H^-1 grad l(z_j)``, so the
  mean validation loss changes by ``+(1/n) <u, H^-1 grad l(z_j)> = <v, g_j> / n``: negative =
  removing it lowers the validation loss = harmful. The original example stored the negated
  value, so its ascending order removed the most helpful samples first.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
from tqdm import tqdm

from common.errors import UserError
from datasets import DataBundle, to_network_input
from datasets.batches import split_batches
from models.autodiff import Learner

from .solvers import HVP, SolverInfo, SolverOptions, solve

#: Rows per Hessian-vector product in a full pass, and per per-sample gradient product when
#: scoring, for a convolutional model (cnn6) on 32x32 images (about 0.6 GB each with nnabla 1.39 on
#: the CPU; scaled down for larger images); the others use 256 rows.
FULL_PASS_ROWS_32PX = 64
SCORE_ROWS_32PX = 128


def chunk_rows(learner: Learner, data: DataBundle, rows_at_32px: int) -> int:
    """Rows per chunk: memory of the convolutional graphs grows with batch x image area."""
    if not learner.model.convolutional:
        return 256
    h, w = data.image_shape[1:]
    return int(max(8, min(256, rows_at_32px * 1024 // (h * w))))


def default_damping(dataset: str) -> float:
    """The original example's damping: 10.0 for cifar10, 0.1 otherwise."""
    return 10.0 if str(dataset).lower() == "cifar10" else 0.1


class ParamSpace:
    """Flattening of the learner's trainable parameters into one float64 vector and back."""

    def __init__(self, learner: Learner):
        self.names = list(learner.trainable)
        self.shapes = [tuple(learner.trainable[k].shape) for k in self.names]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.dim = int(self.offsets[-1])

    def flatten(self, vec: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(vec[k], np.float64).reshape(-1) for k in self.names])

    def unflatten(self, flat: np.ndarray) -> Dict[str, np.ndarray]:
        return OrderedDict((k, flat[a:b].reshape(s)) for k, s, a, b in
                           zip(self.names, self.shapes, self.offsets[:-1], self.offsets[1:]))


def full_hvp(learner: Learner, data: DataBundle, space: ParamSpace, batch: Optional[int] = None) -> HVP:
    """``v -> H v``, ``H`` the Hessian of the mean loss over all training rows (inference mode)."""
    n = len(data.train)
    batch = batch or chunk_rows(learner, data, FULL_PASS_ROWS_32PX)

    def hvp(v: np.ndarray) -> np.ndarray:
        vd = space.unflatten(v)
        acc = np.zeros(space.dim)
        for x, y in split_batches(data, data.train, batch):
            acc += (len(x) / n) * space.flatten(learner.hessian_vector_product(x, y, vd, train=False))
        return acc

    return hvp


def minibatch_hvps(learner: Learner, data: DataBundle, space: ParamSpace, batch_size: int,
                   seed: int) -> Callable[[int], Iterator[HVP]]:
    """``epoch -> iterator of mini-batch products`` over the un-augmented training set, in a
    fresh seeded order per epoch (each ``H_b`` the Hessian of the mini-batch's mean loss)."""
    n = len(data.train)

    def one_pass(epoch: int) -> Iterator[HVP]:
        order = np.random.default_rng([seed, 17, epoch]).permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            x = to_network_input(data.train.images[idx], data.mean, data.std)
            y = data.train.labels[idx]

            def hvp_b(v: np.ndarray, x=x, y=y) -> np.ndarray:
                return space.flatten(learner.hessian_vector_product(x, y, space.unflatten(v), train=False))

            yield hvp_b

    return one_pass


def influence_scores(learner: Learner, data: DataBundle, v: Mapping[str, np.ndarray],
                     batch: Optional[int] = None) -> np.ndarray:
    """``<v, grad l(z_j)> / n_train`` for every training position j (batched, inference mode)."""
    n = len(data.train)
    batch = batch or chunk_rows(learner, data, SCORE_ROWS_32PX)
    out = np.empty(n)
    pos = 0
    for x, y in split_batches(data, data.train, batch):
        out[pos:pos + len(x)] = learner.per_sample_grad_dot(x, y, v, train=False)
        pos += len(x)
    return out / n


def inverse_hvp(learner: Learner, data: DataBundle, u: Mapping[str, np.ndarray], damping: float,
                options: SolverOptions = SolverOptions(), batch_size: int = 32, seed: int = 0,
                show_progress: bool = False, desc: str = "inverse HVP") -> Tuple[Dict[str, np.ndarray], SolverInfo]:
    """``v ~= (H + damping I)^-1 u`` by ``options.solver``, with the residual measured on the full H."""
    space = ParamSpace(learner)
    steps_per_pass = -(-len(data.train) // batch_size)
    krylov = options.solver in ("cg", "minres")
    bar = tqdm(total=options.cg_iters, desc=desc, unit="it", disable=not (show_progress and krylov), leave=False)

    def progress(k: int, res: float) -> None:
        bar.update(1)
        bar.set_postfix(residual=f"{res:.2e}")

    try:
        v, info = solve(full_hvp(learner, data, space), minibatch_hvps(learner, data, space, batch_size, seed),
                        space.flatten(u), damping, options, steps_per_pass=steps_per_pass, seed=seed,
                        progress=progress)
    finally:
        bar.close()
    return space.unflatten(v), info


def influence_functions(learner: Learner, data: DataBundle, u: Mapping[str, np.ndarray], damping: float,
                        options: SolverOptions = SolverOptions(), batch_size: int = 32, seed: int = 0,
                        show_progress: bool = False, desc: str = "Influence_functions",
                        sign: float = 1.0) -> Tuple[np.ndarray, SolverInfo]:
    """Scores over training positions (negative = harmful) and the solver's report.

    ``sign=-1`` reproduces the original example's stored (negated) value, for comparison only.
    """
    v, info = inverse_hvp(learner, data, u, damping, options, batch_size, seed, show_progress, desc)
    return sign * influence_scores(learner, data, v), info


#: the most parameters for which ``exact_self_influence`` forms the Hessian (a check on small models)
MAX_EXACT_PARAMS = 5000


def exact_self_influence(learner: Learner, data: DataBundle, damping: float,
                         max_params: int = MAX_EXACT_PARAMS) -> np.ndarray:
    """Scores ``-g_j^T (H + damping I)^-1 g_j / n_train`` with the Hessian formed explicitly (one
    full-batch product per parameter) and every per-sample gradient from its own batch of one: the
    exact self-influence, affordable on small models only (a check of EK-FAC's, not a default)."""
    space = ParamSpace(learner)
    if space.dim > max_params:
        raise UserError(f"exact self-influence forms the {space.dim} x {space.dim} Hessian of model "
                        f"{learner.model.name!r}, over the limit of {max_params} parameters; use "
                        f"Influence_functions_ekfac_self")
    hvp = full_hvp(learner, data, space)
    H = np.stack([hvp(e) for e in np.eye(space.dim)], axis=1)
    H = 0.5 * (H + H.T)
    grads = np.stack([space.flatten(learner.mean_loss_grad([(x, y)], train=False))
                      for x, y in split_batches(data, data.train, 1)])
    solved = np.linalg.solve(H + damping * np.eye(space.dim), grads.T)
    return -(grads.T * solved).sum(axis=0) / len(data.train)


SOLVER_COLUMNS: List[str] = ["method", "seed", "solver", "damping", "iterations", "passes", "residual",
                             "converged", "seconds", "note"]


def solver_row(method: str, seed: int, damping: float, info: SolverInfo) -> dict:
    """One row of ``summary/solver.csv``."""
    return {"method": method, "seed": seed, "solver": info.solver, "damping": damping,
            "iterations": info.iterations, "passes": round(info.passes, 3), "residual": info.residual,
            "converged": bool(info.converged), "seconds": round(info.seconds, 3), "note": info.note}
