"""SGD-influence estimators: "Hara" (Hara et al., 2019) and "Ours" (Suzuki et al., 2021).

Both run the backward recursion over the steps t of the last epoch, T-1 down to its first:

    infl_j += (lr_t / |S_t|) d/dw_j <u, G_t(w)>           for j in S_t
    u      <- u - lr_t H_t(theta_t) u                    H_t: Hessian of the mini-batch mean loss

with ``G_t(w) = grad sum_{k in S_t} w_k l(z_k; theta_t)`` at ``w = 1``, the weights also inside
the batch statistics of training-mode batch norm (``Learner.removal_grad_dot``): leaving z_j out
of a step drops it from the loss and from the normalisation of the other rows. Without batch
norm, ``d/dw_j <u, G_t> = <u, grad l(z_j; theta_t)>`` as in Hara et al.

from ``u = grad of the mean validation loss at theta_T``. ``infl_j`` estimates the change of
the mean validation loss when z_j is left out of the last epoch (negative = harmful). "Hara"
uses the parameters cached before every step; "Ours" uses theta_T at every step.

Batch norm's running statistics ``r`` are part of the state the validation loss depends on
(inference mode), and every training step moves them: ``r <- d r + (1 - d) s_t(w)`` with
``s_t`` the batch mean or unbiased variance of its rows. With ``u_stats = dL_val/dr`` at the
end, each step adds ``- (1 - d) d/dw_j <u_stats, s_t>`` to ``infl_j``, ``u`` gains
``(1 - d) d<u_stats, s_t>/dtheta`` and ``u_stats <- d u_stats`` (``Learner.step_backward``).
The papers leave this term out (``u_stats=None``); at small learning rates it is a
large part of the actual effect of leaving a sample out.

Speed: by default each step runs one graph whose forward pass serves both the per-sample
products and the Hessian-vector product (forward-mode tangents, ``models.autodiff._Jvp``), and
Hara's parameter files are read one step ahead by a thread. Same math as the separate calls.

Network mode: the per-sample products and Hessian-vector products run batch normalisation in
training mode on the whole recorded mini-batch, as the training step they retrace did.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Mapping, Optional

import numpy as np
from tqdm import tqdm

from cleansing.estimator import Trace
from datasets import DataBundle
from datasets.batches import training_batch
from models.autodiff import Learner

StateAt = Callable[[int], Mapping[str, np.ndarray]]


def _prefetched(state_at: StateAt, steps) -> Iterator[Mapping[str, np.ndarray]]:
    """``state_at(t)`` for each t of ``steps`` in order, the next one read by a thread meanwhile."""
    steps = [int(t) for t in steps]
    if not steps:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hara-prefetch") as pool:
        pending = pool.submit(state_at, steps[0])
        for nxt in steps[1:] + [None]:
            state = pending.result()
            if nxt is not None:
                pending = pool.submit(state_at, nxt)
            yield state


def sgd_influence(learner: Learner, data: DataBundle, trace: Trace, u: Mapping[str, np.ndarray],
                  augment: bool, state_at: Optional[StateAt] = None, show_progress: bool = False,
                  desc: str = "influence", fused: bool = True, prefetch: bool = True,
                  max_steps: Optional[int] = None, u_stats: Optional[Mapping[str, np.ndarray]] = None
                  ) -> np.ndarray:
    """Influence of every training sample on ``<u, theta_T>`` through the last epoch.

    ``state_at(t)`` returns the parameters before step t (Hara); ``None`` keeps the learner's
    current parameters at every step (Ours). The learner's parameters are restored on return.
    Returns a float64 array over training positions (0 for samples outside the last epoch).

    ``fused``: per step, one graph gives both the per-sample products and the Hessian-vector
    product (``Learner.grad_dot_and_hvp``); False makes the two separate calls (the reference).
    ``prefetch``: read ``state_at`` of the next step in a thread while this one computes.
    ``max_steps``: only the last ``max_steps`` steps (benchmarks; the result is then partial).
    ``u_stats``: the derivative of the same function w.r.t. batch norm's running statistics
    (``validation_loss_stats_grad``); None leaves their effect out, as the papers do.
    """
    infl = np.zeros(len(data.train))
    u = {k: np.asarray(v, np.float64) for k, v in u.items()}
    u_stats = {k: np.asarray(v, np.float64) for k, v in (u_stats or {}).items()}
    final_state = learner.state() if state_at is not None else None
    steps = trace.last_epoch_steps()[::-1]
    if max_steps is not None:
        steps = steps[:max_steps]
    states = None
    if state_at is not None:
        states = _prefetched(state_at, steps) if prefetch else (state_at(int(t)) for t in steps)
    try:
        for t in tqdm(steps, desc=desc, unit="step", disable=not show_progress, leave=False):
            if states is not None:
                learner.set_state(next(states))
            idx, seeds = trace.batch(int(t))
            x, y = training_batch(data, idx, seeds, augment)
            delta, u, u_stats = learner.step_backward(x, y, float(trace.lr[t]), u, u_stats, fused=fused)
            infl[idx] += delta
    finally:
        if states is not None and hasattr(states, "close"):
            states.close()
        if final_state is not None:
            learner.set_state(final_state)
    return infl
