"""The exact damped Gauss-Newton inverse on a finished label-noise run: does the choice of curvature
(PSD Gauss-Newton against the indefinite Hessian) explain EK-FAC's gap to MINRES (issue 20)?

Solves ``(G + alpha I) v = u`` by CG (``influence_functions.solvers.conjugate_gradient``) with exact
Gauss-Newton products over the whole training set, ``G v = (1/n) sum_i J_i' L_i J_i v``
(``J_i`` the Jacobian of sample i's logits, ``L_i = diag p_i - p_i p_i'``, batch norm in inference
mode as every solver): ``J_i v`` by the forward-mode pass of ``models.autodiff.Jvp``, then one
backward pass with the cotangent ``L_i J_i v`` held constant. It scores
``<v, grad l(z_j)> / n_train`` as ``influence_scores`` and counts the flipped labels among the 10%
most harmful, beside the run's own Influence_functions (MINRES, Hessian) and EK-FAC rankings.

    python bench/gn_detection.py RUN --data-dir DIR [--iters 15] [--damping 0.1] [--check]

``--check`` instead tests the product on small problems: on logistic regression the Gauss-Newton
matrix is the Hessian (the product must equal ``full_hvp``); on cnn6, ``G`` against
``(1/n) sum_i sum_c p_ic g_ic g_ic'`` from per-sample gradients of every class label (the Fisher
identity of softmax cross-entropy), and ``v'Gv >= 0``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def gn_product(learner, data, space, batch: int = 256):
    """``v -> G v`` (flattened), ``G`` the Gauss-Newton matrix of the mean training loss."""
    import nnabla as nn
    import nnabla.functions as F

    from datasets.batches import split_batches
    from models.autodiff import Jvp
    graphs = {}

    def build(b: int):
        x = nn.Variable((b,) + learner.model.input_shape)
        V = learner.direction_vars()
        logits, dlogits = Jvp(learner.model, learner.params, V, learner.stats_for(False), False).forward(x)
        p = F.softmax(logits, axis=1)
        r = p * dlogits - p * F.sum(p * dlogits, axis=1, keepdims=True)  # L_i J_i v per row
        r.persistent = True
        held = r.get_unlinked_variable(need_grad=False)  # the same values, outside the gradient
        grads = nn.grad([F.sum(logits * held)], list(learner.trainable.values()))
        for g in grads:
            if g is not None:
                g.persistent = True
        return x, V, r, grads

    n = len(data.train)

    def product(v: np.ndarray) -> np.ndarray:
        vd = space.unflatten(v)
        acc = np.zeros(space.dim)
        for x, _ in split_batches(data, data.train, batch):
            if len(x) not in graphs:
                graphs[len(x)] = build(len(x))
            xv, V, r, grads = graphs[len(x)]
            xv.d = x
            for k, var in V.items():
                var.d = vd[k]
            r.forward(clear_no_need_grad=True)
            F.sink(*[g for g in grads if g is not None]).forward(clear_no_need_grad=True)
            out = {k: (g.d.astype(np.float64) if g is not None else np.zeros(learner.trainable[k].shape))
                   for k, g in zip(learner.trainable, grads)}
            acc += space.flatten(out) / n
        return acc

    return product


def check() -> None:
    """The product against exact references on small problems (see the module's docstring)."""
    from cleansing.train import plain_sgd as train_sgd
    from datasets.batches import split_batches
    from datasets.loader import small_digits as digits4
    from influence_functions.inverse import ParamSpace, full_hvp
    from models import build_model
    from models.autodiff import Learner
    rng = np.random.default_rng(0)
    for name, size, n in (("logreg", 4, 300), ("cnn6", 8, 40)):
        data = digits4(n_train=n, n_val=20, size=size)
        model = build_model(name, (1, size, size), 10)
        learner = Learner(model, model.create_parameters(np.random.RandomState(0)))
        train_sgd(learner, data, epochs=3, lr=0.05)
        space = ParamSpace(learner)
        G = gn_product(learner, data, space, batch=16)
        v = rng.standard_normal(space.dim)
        gv = G(v)
        if name == "logreg":
            ref = full_hvp(learner, data, space)(v)
        else:  # (1/n) sum_i sum_c p_ic g_ic <g_ic, v>
            ref = np.zeros(space.dim)
            for x, _ in split_batches(data, data.train, 1):
                for c in range(10):
                    p_c = np.exp(-learner.losses_and_predictions(x, np.array([c]))[0][0])
                    g = space.flatten(learner.mean_loss_grad([(x, np.array([c]))]))
                    ref += p_c * g * (g @ v) / n
        err = np.linalg.norm(gv - ref) / np.linalg.norm(ref)
        print(f"{name}: |G v - reference| / |reference| = {err:.2e}; v'Gv = {v @ gv:.4g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?")
    ap.add_argument("--data-dir")
    ap.add_argument("--iters", type=int, default=15, help="CG iterations (MINRES had 15 in the run)")
    ap.add_argument("--damping", type=float, default=None, help="default: the run's")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    import logging
    logging.getLogger("nnabla").setLevel(logging.WARNING)
    if args.check:
        check()
        return
    from scipy.stats import spearmanr

    sys.path.insert(0, str(ROOT / "bench"))
    from ekfac_detection import load_run, ranking

    from influence_functions.inverse import ParamSpace, influence_scores
    from influence_functions.solvers import conjugate_gradient
    man, data, noisy, learner, u, stored = load_run(Path(args.run), args.data_dir)
    damping = man["damping"] if args.damping is None else args.damping
    space = ParamSpace(learner)
    t0 = time.time()
    v, info = conjugate_gradient(gn_product(learner, data, space), space.flatten(u), damping, max_iter=args.iters,
                                 tol=0.0, progress=lambda i, res: print(f"CG {i}: residual {res:.3g}", flush=True))
    scores = influence_scores(learner, data, space.unflatten(v))
    k = int(round(0.1 * len(data.train)))
    print(f"Gauss-Newton CG, {info.iterations} iterations, residual {info.residual:.3g}, {time.time() - t0:.0f} s")
    for name, s in [("gauss-newton cg", scores), *stored.items()]:
        row = f"{name}: {int(noisy[ranking(s)[:k]].sum())} of {int(noisy.sum())} flipped labels in the top {k}"
        if "Influence_functions" in stored:
            row += f", Spearman with MINRES {spearmanr(s, stored['Influence_functions'])[0]:.4f}"
        print(row)


if __name__ == "__main__":
    main()
