"""Tests of influence_functions: the solvers on explicit matrices, the nnabla products and scores
against a float64 Hessian of logistic regression, the sign against leave-one-out retraining, and
the eval_influence_functions.py driver end to end.

The logistic-regression problems use the digits data block-averaged to 4x4 (170 parameters), so
that the Hessian can be formed explicitly: H = mean_n kron(x_n x_n', diag(p_n) - p_n p_n') with
x_n = [pixels, 1], in the parameter order W (16, 10) then b (10,).
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import eval_influence_functions as driver
from cleansing.cli import run_main
from cleansing.train import plain_sgd as train_sgd
from datasets import DataBundle, Split, to_network_input
from datasets.batches import split_batches
from datasets.loader import small_digits as digits4
from estimators import REGISTRY
from influence_functions import (
    EKFAC,
    NAME,
    InfluenceOptions,
    SolverOptions,
    conjugate_gradient,
    default_damping,
    influence_functions,
    lissa,
    minres,
    momentum_sgd,
    solve,
)
from influence_functions.inverse import ParamSpace, full_hvp, influence_scores, inverse_hvp, minibatch_hvps
from influence_functions.solvers import estimate_top_eigenvalue, relative_residual
from models import build_model
from models.autodiff import Learner

ALPHA = 0.1


# ---------------------------------------------------------------------------- helpers
def random_symmetric(n, low, high, seed):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * rng.uniform(low, high, n)) @ q.T, rng.standard_normal(n)


def exact_minibatches(matrices):
    """``epoch -> iterator of products`` cycling through explicit mini-batch Hessians."""
    def one_pass(epoch):
        for m in matrices:
            yield lambda v, m=m: m @ v
    return one_pass


def features(data: DataBundle, split: Split) -> np.ndarray:
    x = to_network_input(split.images, data.mean, data.std).reshape(len(split), -1).astype(np.float64)
    return np.hstack([x, np.ones((len(x), 1))])


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def logreg_hessian(X, theta, weights=None):
    """Hessian of (1/n) sum_n w_n l_n at theta (17, 10), float64: mean_n w_n kron(x x', diag(p) - p p')."""
    P = softmax(X @ theta)
    w = np.ones(len(X)) if weights is None else weights
    A = np.einsum("na,ab->nab", P, np.eye(P.shape[1])) - np.einsum("na,nb->nab", P, P)
    H = np.einsum("n,ni,nj,nab->iajb", w, X, X, A, optimize=True)
    return H.reshape(theta.size, theta.size) / len(X)


def theta_of(learner) -> np.ndarray:
    W = learner.params["fc/affine/W"].d.astype(np.float64)
    b = learner.params["fc/affine/b"].d.astype(np.float64)
    return np.vstack([W, b[None]])


def set_theta(learner, theta):
    learner.params["fc/affine/W"].d = theta[:-1]
    learner.params["fc/affine/b"].d = theta[-1]


def new_logreg(seed=0) -> Learner:
    model = build_model("logreg", (1, 4, 4), 10)
    return Learner(model, model.create_parameters(np.random.RandomState(seed)))


@pytest.fixture(scope="module")
def problem():
    """Logistic regression on 4x4 digits (1,197 training samples) after 30 epochs of SGD."""
    data = digits4()
    learner = new_logreg()
    train_sgd(learner, data, epochs=30, lr=0.1)
    n = len(data.train)
    space = ParamSpace(learner)
    X = features(data, data.train)
    H = logreg_hessian(X, theta_of(learner))
    u = space.flatten(learner.mean_loss_grad(split_batches(data, data.val), train=False))
    ref = np.linalg.solve(H + ALPHA * np.eye(len(u)), u)
    return SimpleNamespace(data=data, learner=learner, space=space, X=X, H=H, u=u, ref=ref,
                           hvp=full_hvp(learner, data, space),
                           minibatches=minibatch_hvps(learner, data, space, 32, seed=0),
                           steps_per_pass=-(-n // 32))


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------------------- pure solvers
def test_cg_and_minres_solve_an_explicit_spd_system():
    H, u = random_symmetric(60, 0.01, 5.0, seed=1)
    ref = np.linalg.solve(H + ALPHA * np.eye(60), u)
    for solver in (conjugate_gradient, minres):
        v, info = solver(lambda x: H @ x, u, ALPHA, max_iter=200, tol=1e-10)
        assert info.converged and info.iterations <= 60
        assert rel(v, ref) < 1e-8
        assert relative_residual(lambda x: H @ x, v, u, ALPHA) < 1e-9


def test_minres_solves_indefinite_system_where_cg_stops():
    H, u = random_symmetric(60, -2.0, 5.0, seed=2)  # H + 0.1 I indefinite
    ref = np.linalg.solve(H + ALPHA * np.eye(60), u)
    v, info = minres(lambda x: H @ x, u, ALPHA, max_iter=300, tol=1e-10)
    assert info.converged and rel(v, ref) < 1e-8
    v, info = conjugate_gradient(lambda x: H @ x, u, ALPHA, max_iter=300, tol=1e-10)
    assert not info.converged and "non-positive curvature" in info.note and "minres" in info.note


def test_stochastic_solvers_converge_on_exact_minibatch_hessians():
    # Mini-batch Hessians whose mean is H: both solvers aim at (H + alpha I)^-1 u.
    H, u = random_symmetric(30, 0.5, 3.0, seed=3)
    rng = np.random.default_rng(4)
    noise = [(lambda a: (a + a.T) / 2)(0.05 * rng.standard_normal((30, 30))) for _ in range(4)]
    noise = [n - sum(noise) / 4 for n in noise]
    batches = exact_minibatches([H + n for n in noise])
    ref = np.linalg.solve(H + ALPHA * np.eye(30), u)
    v, info = momentum_sgd(exact_minibatches([H]), u, ALPHA, epochs=2000, lr=0.005, momentum=0.9)
    assert info.iterations == 2000 and rel(v, ref) < 1e-6
    v, info = lissa(exact_minibatches([H]), u, ALPHA, scale=4.0, depth=2000)
    assert rel(v, ref) < 1e-6
    v, info = lissa(batches, u, ALPHA, scale=None, depth=3000)
    assert "estimated top eigenvalue" in info.note and rel(v, ref) < 0.05
    top = estimate_top_eigenvalue(iter([lambda x: H @ x] * 40), 30, steps=40)
    assert abs(top - np.linalg.eigvalsh(H)[-1]) < 1e-2 * np.linalg.eigvalsh(H)[-1]


def test_solve_reports_full_batch_residual_and_divergence():
    H, u = random_symmetric(20, -1.0, 2.0, seed=5)  # negative curvature: LiSSA and SGD diverge
    v, info = solve(lambda x: H @ x, exact_minibatches([H]), u, ALPHA,
                    SolverOptions(solver="lissa", lissa_scale=3.0, lissa_depth=400))
    assert info.residual > 1 and not info.converged
    v, info = solve(lambda x: H @ x, None, u, ALPHA, SolverOptions(solver="minres", cg_iters=100))
    assert info.converged and info.residual < 1e-5
    assert info.residual == pytest.approx(relative_residual(lambda x: H @ x, v, u, ALPHA))
    assert info.passes == info.iterations + 1


# ---------------------------------------------------------------------------- nnabla products
def test_full_hvp_matches_float64_hessian(problem):
    rng = np.random.default_rng(6)
    for _ in range(3):
        v = rng.standard_normal(problem.space.dim)
        assert rel(problem.hvp(v), problem.H @ v) < 1e-5
    # the mini-batch products of one pass average (weighted by rows) to the full product
    v = rng.standard_normal(problem.space.dim)
    n = len(problem.data.train)
    sizes = [min(32, n - s) for s in range(0, n, 32)]
    avg = sum(sz / n * h(v) for sz, h in zip(sizes, problem.minibatches(0)))
    assert rel(avg, problem.H @ v) < 1e-5


@pytest.mark.parametrize("solver", ["cg", "minres"])
def test_krylov_solvers_match_numpy_solve(problem, solver):
    v, info = solve(problem.hvp, None, problem.u, ALPHA, SolverOptions(solver=solver))
    assert info.converged and info.iterations < 50
    assert rel(v, problem.ref) < 1e-4
    assert info.residual < 1e-4


def test_original_sgd_solver_residual(problem):
    """The example's solver (lr 0.005, momentum 0.9, from v = 0): 2 epochs of 38 steps leave a
    residual of about 0.44 on this problem; 12 epochs bring it below 0.1."""
    short, info2 = solve(problem.hvp, problem.minibatches, problem.u, ALPHA, SolverOptions(solver="sgd"),
                         steps_per_pass=problem.steps_per_pass)
    assert info2.iterations == 2 * problem.steps_per_pass
    assert 0.1 < info2.residual < 1.0
    v, info = solve(problem.hvp, problem.minibatches, problem.u, ALPHA,
                    SolverOptions(solver="sgd", sgd_epochs=12), steps_per_pass=problem.steps_per_pass)
    assert info.residual < 0.1
    assert info.residual == pytest.approx(relative_residual(lambda x: problem.H @ x, v, problem.u, ALPHA), rel=1e-3)


def test_lissa_residual(problem):
    """LiSSA with the default depth (1,000 mini-batch steps) and automatic scale: residual about
    0.08 here (the floor of its mini-batch noise), solution within about 4%."""
    v, info = solve(problem.hvp, problem.minibatches, problem.u, ALPHA, SolverOptions(solver="lissa"),
                    steps_per_pass=problem.steps_per_pass)
    assert info.iterations == 1000
    assert info.residual < 0.2 and rel(v, problem.ref) < 0.1
    scale = float(info.note.split()[1])
    assert scale > np.linalg.eigvalsh(problem.H)[-1] + ALPHA


def test_scores_are_per_sample_gradient_products(problem):
    rng = np.random.default_rng(7)
    v = rng.standard_normal(problem.space.dim)
    scores = influence_scores(problem.learner, problem.data, problem.space.unflatten(v))
    P = softmax(problem.X @ theta_of(problem.learner))
    R = P - np.eye(10)[problem.data.train.labels]
    grads = np.einsum("ni,nc->nic", problem.X, R).reshape(len(R), -1)  # (n, 17*10): W rows then b
    expected = grads @ v / len(R)
    assert rel(scores, expected) < 1e-5


def test_inverse_hvp_wrapper_uses_inference_mode_hessian(problem):
    v, info = inverse_hvp(problem.learner, problem.data, problem.space.unflatten(problem.u), ALPHA)
    assert info.solver == "minres" and rel(problem.space.flatten(v), problem.ref) < 1e-4


# ---------------------------------------------------------------------------- the sign
def test_sign_matches_leave_one_out_retraining():
    """On L2-regularised logistic regression (so that the damped Hessian is the exact Hessian of the
    training objective) infl_j = <v, g_j>/n predicts the change of the mean validation loss when z_j
    is removed and the model retrained to convergence: negative = removing it helps."""
    data = digits4(n_train=80, n_val=200, seed=3)
    X, Xv = features(data, data.train), features(data, data.val)
    Y, Yv = np.eye(10)[data.train.labels], np.eye(10)[data.val.labels]
    n = len(X)

    def objective(flat, weights):
        theta = flat.reshape(17, 10)
        P = softmax(X @ theta)
        loss = -np.sum(weights * np.sum(Y * np.log(P), axis=1)) / n + 0.5 * ALPHA * flat @ flat
        grad = X.T @ (weights[:, None] * (P - Y)) / n + ALPHA * theta
        return loss, grad.ravel()

    def fit(weights, start):  # Newton's method to a gradient norm of 1e-12
        flat = start.copy()
        for _ in range(50):
            _, grad = objective(flat, weights)
            if np.linalg.norm(grad) < 1e-12:
                return flat
            hess = logreg_hessian(X, flat.reshape(17, 10), weights) + ALPHA * np.eye(170)
            flat = flat - np.linalg.solve(hess, grad)
        raise AssertionError("Newton's method did not converge")

    def val_loss(flat):
        return float(-np.mean(np.sum(Yv * np.log(softmax(Xv @ flat.reshape(17, 10))), axis=1)))

    theta = fit(np.ones(n), np.zeros(170))
    base = val_loss(theta)
    actual = np.empty(n)
    for j in range(n):
        w = np.ones(n)
        w[j] = 0.0
        actual[j] = val_loss(fit(w, theta)) - base

    learner = new_logreg()
    set_theta(learner, theta.reshape(17, 10))
    u = learner.mean_loss_grad(split_batches(data, data.val), train=False)
    scores, info = influence_functions(learner, data, u, ALPHA, SolverOptions(solver="cg"))
    assert info.residual < 1e-4
    assert stats.pearsonr(scores, actual)[0] > 0.95  # a flipped sign gives about -0.95
    big = np.abs(actual) > 0.1 * np.abs(actual).max()
    assert np.all(np.sign(scores[big]) == np.sign(actual[big]))
    slope = float(scores @ actual / (actual @ actual))
    assert 0.7 < slope < 1.3
    # the original example's stored value is the negation: its most harmful is our most helpful
    assert np.argmin(-scores) == np.argmax(scores)


# ---------------------------------------------------------------------------- pipeline
def test_default_damping_and_cli_defaults():
    assert default_damping("cifar10") == 10.0 and default_damping("mnist") == 0.1
    assert default_damping("digits") == 0.1 and default_damping("own/train.csv") == 0.1
    cfg = driver.DRIVER.config([], REGISTRY)
    opts = cfg.option(InfluenceOptions)
    # EK-FAC by default (a few minutes on digits); MINRES and the other solvers with --methods Influence_functions
    assert cfg.out == os.path.abspath("output_influence_functions") and list(cfg.methods) == [EKFAC, "Random"]
    assert opts.ekfac_fisher == "sampled" and "ekfac_fisher" in cfg.manifest(REGISTRY)
    assert opts.solver == "minres" and opts.cg_iters == 50 and opts.resolved_damping(cfg.data.dataset) == 0.1
    assert opts.sgd_epochs == 2 and opts.sgd_lr == 0.005 and opts.sgd_momentum == 0.9
    cfg = driver.DRIVER.config(["-ds", "cifar10"], REGISTRY)
    assert cfg.option(InfluenceOptions).resolved_damping("cifar10") == 10.0
    cfg = driver.DRIVER.config(["-ds", "cifar10", "--damping", "0.5", "--solver", "lissa"], REGISTRY)
    opts = cfg.option(InfluenceOptions)
    assert opts.resolved_damping("cifar10") == 0.5 and opts.solver == "lissa"
    assert cfg.manifest(REGISTRY)["damping"] == 0.5 and cfg.manifest(REGISTRY)["solver"] == "lissa"


def test_driver_writes_the_output_tree(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["-m", "logreg", "-e", "2", "-r", "0", "10", "--n-train", "300", "-j", "1", "--no-progress",
            "-o", str(out), "--methods", NAME, "Random"]
    assert run_main(driver.main, argv) == 0
    for method, prefix in [(NAME, "influence_influence_functions_0"), ("Random", "influence_random_0")]:
        frame = pd.read_csv(out / "influence" / method / f"{prefix}.csv")
        assert list(frame.columns[:4]) == ["x:image", "y:label", "influence", "datasource_index"]
        assert len(frame) == 300 and sorted(frame.datasource_index) == list(range(300))
        assert np.all(np.diff(frame.influence) >= 0)
        for n in (0, 10):
            score = pd.read_csv(out / "score" / method / f"score_delete_worst_{n}_seed_0.csv")
            assert list(score.columns) == ["val_loss", "test_loss", "val_accuracy", "test_accuracy"]
    summary = pd.read_csv(out / "summary" / "summary.csv")
    assert {NAME, "Random", "No_Removal"} <= set(summary.method)
    assert (out / "fig" / "result.png").stat().st_size > 0
    solver = pd.read_csv(out / "summary" / "solver.csv")
    assert list(solver.columns) == ["method", "seed", "solver", "damping", "iterations", "passes", "residual",
                                    "converged", "seconds", "note"]
    row = solver.iloc[0]
    assert row.method == NAME and row.seed == 0 and row.solver == "minres" and row.damping == 0.1
    assert 0 < row.iterations <= 50 and row.residual < 1e-2
    # the scores are <v, g_j> / n: the Influence_functions CSV is not all zeros and is finite
    infl = pd.read_csv(out / "influence" / NAME / "influence_influence_functions_0.csv").influence
    assert np.all(np.isfinite(infl)) and np.abs(infl).max() > 0

    # rerun: complete outputs are kept, nothing recomputed
    log = out / "logs" / "solver_seed_0.csv"
    stamp = os.stat(log).st_mtime_ns
    assert run_main(driver.main, argv) == 0
    assert os.stat(log).st_mtime_ns == stamp
    # other solver settings on the same folder are refused with a one-line message
    capsys.readouterr()
    assert run_main(driver.main, argv + ["--solver", "sgd"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "solver minres -> sgd" in err


def test_original_sign_method_negates_the_stored_influence(tmp_path):
    from cleansing.influence_csv import influence_frame, write_influence_csv
    from cleansing.paths import RunPaths
    from cleansing.trial import Trial
    from common.errors import UserError
    from influence_functions import ORIGINAL_SIGN, original_sign

    paths = RunPaths(tmp_path)
    trial = Trial(cfg=None, seed=3, data=SimpleNamespace(train=np.zeros(4)), paths=paths, trace=None, learner=None)
    with pytest.raises(UserError, match=f"scores of seed 3 are missing: list {NAME} before the methods that reuse"):
        original_sign(trial)
    scores = np.array([0.3, -0.2, 0.1, -0.5])
    csv = paths.influence_csv(NAME, 3)
    csv.parent.mkdir(parents=True)
    write_influence_csv(csv, influence_frame(np.array(["a", "b", "c", "d"]), np.arange(4), scores))
    assert np.array_equal(original_sign(trial), -scores)
    # its ascending order (removal order) is the most helpful first: positions 0, 2, 1, 3
    assert list(np.argsort(original_sign(trial), kind="stable")) == [0, 2, 1, 3]
    assert ORIGINAL_SIGN == "Influence_functions_original_sign"


# ---------------------------------------------------------------------------- EK-FAC
def ekfac_reference(X, P, U, damping):
    """EK-FAC of logistic regression in float64 from explicit per-sample gradients and the exact
    label expectation: per sample and class k, G = x (p - e_k)' (17, 10) with weight p_k;
    A = sum x x', S = sum (diag p - p p'), Lambda = mean_n sum_k p_k (Q_A' G Q_S)^2."""
    A = X.T @ X
    S = np.einsum("nc,cd->cd", P, np.eye(10)) - P.T @ P
    QA, QS = np.linalg.eigh(A)[1], np.linalg.eigh(S)[1]
    lam = np.zeros((X.shape[1], 10))
    for k in range(10):
        R = P - np.eye(10)[k]
        proj = np.einsum("ni,nc->nic", X @ QA, R @ QS)
        lam += np.einsum("n,nic->ic", P[:, k], proj ** 2)
    lam /= len(X)
    return QA @ ((QA.T @ U @ QS) / (lam + damping)) @ QS.T


def test_ekfac_matches_float64_reference_on_logistic_regression(problem):
    """The nnabla factors (layer taps, label cotangents, eigenbasis, correction) equal a float64
    re-derivation from explicit per-sample gradients (differences are float32 rounding)."""
    from influence_functions.ekfac import Ekfac, EkfacOptions
    ek = Ekfac(problem.learner, problem.data, EkfacOptions("exact"))
    v = problem.space.flatten(ek.inverse_product(problem.space.unflatten(problem.u), ALPHA))
    P = softmax(problem.X @ theta_of(problem.learner))
    ref = ekfac_reference(problem.X, P, problem.u.reshape(17, 10), ALPHA).ravel()
    assert rel(v, ref) < 1e-4  # measured 3e-7


def test_ekfac_is_exact_where_the_fisher_is_a_kronecker_product():
    """Logistic regression at zero weights predicts p = 1/10 for every sample, so the Hessian
    (= Gauss-Newton = Fisher) is exactly E[x x'] (x) (diag p - p p'): EK-FAC equals the damped
    inverse to float32 rounding."""
    from influence_functions.ekfac import Ekfac, EkfacOptions
    data = digits4(n_train=300, n_val=100)
    learner = new_logreg()
    set_theta(learner, np.zeros((17, 10), np.float32))
    space = ParamSpace(learner)
    H = logreg_hessian(features(data, data.train), np.zeros((17, 10)))
    u = learner.mean_loss_grad(split_batches(data, data.val), train=False)
    ref = np.linalg.solve(H + ALPHA * np.eye(170), space.flatten(u))
    v = space.flatten(Ekfac(learner, data, EkfacOptions("exact")).inverse_product(u, ALPHA))
    assert rel(v, ref) < 1e-4  # measured 3e-7


def test_ekfac_against_the_exact_damped_inverse_on_logistic_regression(problem):
    """Trained logistic regression (1,197 samples): the Hessian is the Gauss-Newton matrix but no
    longer a Kronecker product (p varies with x). Measured: relative error of v 0.20 (exact label
    expectation) and 0.21 (sampled labels); Spearman of the scores with the exact-inverse scores
    0.984 and 0.979."""
    from influence_functions.ekfac import Ekfac, EkfacOptions
    exact_scores = influence_scores(problem.learner, problem.data, problem.space.unflatten(problem.ref))
    for fisher, bound in (("exact", 0.25), ("sampled", 0.3)):
        ek = Ekfac(problem.learner, problem.data, EkfacOptions(fisher), seed=0)
        v = ek.inverse_product(problem.space.unflatten(problem.u), ALPHA)
        assert rel(problem.space.flatten(v), problem.ref) < bound
        scores = influence_scores(problem.learner, problem.data, v)
        assert stats.spearmanr(scores, exact_scores)[0] > 0.95
    # the fitted approximation itself against H (measured 0.22 with the exact label expectation),
    # and the empirical Fisher (true labels), a worse curvature estimate (measured 0.53)
    w = np.random.default_rng(8).standard_normal(problem.space.dim)
    errors = {}
    for fisher in ("exact", "empirical"):
        ek = Ekfac(problem.learner, problem.data, EkfacOptions(fisher))
        errors[fisher] = rel(problem.space.flatten(ek.fisher_product(problem.space.unflatten(w))), problem.H @ w)
    assert errors["exact"] < 0.25 and errors["empirical"] > 0.4


def test_ekfac_on_a_one_hidden_layer_network_against_the_exact_gauss_newton_inverse():
    """MLP (16-128-10) on 300 4x4 digits: the Gauss-Newton matrix J'(diag p - pp')J formed
    explicitly (3,466 parameters). Here EK-FAC drops the cross-layer blocks and the first layer's
    inputs and output gradients are correlated, so the Kronecker assumption holds less well.
    Measured: relative error 0.52 (exact block-diagonal inverse: 0.25), Spearman of the scores
    with the exact-inverse scores 0.905 (exact labels) and 0.909 (sampled)."""
    from influence_functions.ekfac import Ekfac, EkfacOptions
    data = digits4(n_train=300, n_val=200)
    n = len(data.train)
    model = build_model("mlp", (1, 4, 4), 10)
    learner = Learner(model, model.create_parameters(np.random.RandomState(0)))
    train_sgd(learner, data, epochs=30, lr=0.1)
    space = ParamSpace(learner)
    assert space.names == ["fc1/affine/W", "fc1/affine/b", "fc2/affine/W", "fc2/affine/b"]
    X = to_network_input(data.train.images, data.mean, data.std).reshape(n, -1).astype(np.float64)
    W1, b1, W2, b2 = (learner.trainable[k].d.astype(np.float64) for k in space.names)
    pre = X @ W1 + b1
    m = (pre > 0).astype(np.float64)
    h = pre * m
    P = softmax(h @ W2 + b2)
    eye = np.eye(10)
    J = np.concatenate([np.einsum("ni,jc,nj->ncij", X, W2, m).reshape(n, 10, -1), np.einsum("jc,nj->ncj", W2, m),
                        np.einsum("nj,cd->ncjd", h, eye).reshape(n, 10, -1), np.broadcast_to(eye, (n, 10, 10))], axis=2)
    root = np.einsum("nc,cd->ncd", np.sqrt(P), eye) - np.einsum("nc,nd->ncd", P, np.sqrt(P))  # diag p - pp' = BB'
    Z = np.einsum("ncq,ncd->qnd", J, root).reshape(space.dim, -1)
    G = Z @ Z.T / n
    u = learner.mean_loss_grad(split_batches(data, data.val), train=False)
    ref = np.linalg.solve(G + ALPHA * np.eye(space.dim), space.flatten(u))
    exact_scores = influence_scores(learner, data, space.unflatten(ref))
    for fisher in ("exact", "sampled"):
        v = Ekfac(learner, data, EkfacOptions(fisher), seed=0).inverse_product(u, ALPHA)
        assert rel(space.flatten(v), ref) < 0.6
        assert stats.spearmanr(influence_scores(learner, data, v), exact_scores)[0] > 0.85


def test_ekfac_factored_per_sample_gradients_of_cnn6_equal_nnabla_gradients():
    """cnn6 (convolutions, batch norm, affine) on 8x8 digits: each sample's gradient rebuilt from
    the layer taps (unfolded 3x3 patches x output gradients, batch norm's xhat, affine inputs)
    equals nnabla's gradient of that sample's loss, parameter by parameter (inference mode)."""
    from influence_functions.ekfac import _Block
    from models.per_sample import TapGraph
    data = digits4(n_train=40, n_val=20, size=8)
    model = build_model("cnn6", (1, 8, 8), 10)
    learner = Learner(model, model.create_parameters(np.random.RandomState(1)))
    x, y = next(split_batches(data, data.train, 6))
    for xb, yb in list(split_batches(data, data.train, 8)) * 3:  # trained a little: running statistics move
        learner.sgd_step(xb, yb, 0.05)
    graph = TapGraph(learner, len(x))
    p = graph.forward(x)
    blocks = [_Block(t, learner) for t in graph.layers]
    assert [b.kind for b in blocks] == ["conv", "bn", "conv"] * 3 + ["affine"]
    acts = [b.activations(h) for b, h in zip(blocks, graph.inputs())]
    outs = [b.output_grads(g) for b, g in zip(blocks, graph.backward(p - np.eye(10)[y]))]
    shapes = {k: tuple(v.shape) for k, v in learner.trainable.items()}
    for i in range(len(x)):
        ref = learner.mean_loss_grad([(x[i:i + 1], y[i:i + 1])], train=False)
        for b, a, g in zip(blocks, acts, outs):
            if b.kind == "bn":
                mine = {k: v[i].reshape(shapes[k]) for k, v in b.bn_grads(a, g).items()}
            else:
                mine = b.from_matrix(b.sample_gradients(a[i:i + 1], g[i:i + 1])[0].astype(np.float64), shapes)
            for k, val in mine.items():
                assert rel(val, ref[k]) < 1e-4, k


def test_ekfac_scores_correlate_with_minres_scores_on_cnn6():
    """cnn6 on 200 8x8 digits, 10 epochs: EK-FAC (sampled labels) against 10 MINRES iterations on
    the exact Hessian (relative residual 0.47). They differ by more than EK-FAC's own error: H is
    indefinite at these weights and the Gauss-Newton matrix is not (its exact damped inverse, by
    CG on Gauss-Newton products, scores with Spearman 0.53 against MINRES' at 100 iterations).
    Measured: Spearman 0.56, Pearson 0.56; a flipped sign would give about -0.56."""
    from influence_functions.ekfac import EkfacOptions, ekfac_influence
    data = digits4(n_train=200, n_val=200, size=8)
    model = build_model("cnn6", (1, 8, 8), 10)
    learner = Learner(model, model.create_parameters(np.random.RandomState(0)))
    train_sgd(learner, data, epochs=10, lr=0.05)
    u = learner.mean_loss_grad(split_batches(data, data.val), train=False)
    minres_scores, info = influence_functions(learner, data, u, ALPHA, SolverOptions(cg_iters=10))
    assert info.iterations == 10 and info.residual < 0.6
    scores, ek = ekfac_influence(learner, data, u, ALPHA, EkfacOptions("sampled"), seed=0)
    assert ek.passes == 3 and len(ek.layers) == 10
    assert stats.spearmanr(scores, minres_scores)[0] > 0.4
    assert stats.pearsonr(scores, minres_scores)[0] > 0.4


def test_driver_runs_ekfac_beside_minres(tmp_path):
    """--methods Influence_functions_ekfac Influence_functions: both CSVs, both rows of
    summary/solver.csv, and on logistic regression the two rankings agree (Spearman 0.98 in-process
    on 1,197 samples, test_ekfac_against_the_exact_damped_inverse_on_logistic_regression)."""
    out = tmp_path / "out"
    argv = ["-m", "logreg", "-e", "2", "-r", "0", "10", "--n-train", "300", "-j", "1", "--no-progress",
            "-o", str(out), "--methods", EKFAC, NAME, "Random"]
    assert run_main(driver.main, argv) == 0
    ek = pd.read_csv(out / "influence" / EKFAC / "influence_influence_functions_ekfac_0.csv")
    mr = pd.read_csv(out / "influence" / NAME / "influence_influence_functions_0.csv")
    assert len(ek) == 300 and np.all(np.diff(ek.influence) >= 0) and np.abs(ek.influence).max() > 0
    both = ek.merge(mr, on="datasource_index", suffixes=("_ek", "_mr"))
    assert stats.spearmanr(both.influence_ek, both.influence_mr)[0] > 0.9
    solver = pd.read_csv(out / "summary" / "solver.csv").set_index("method")
    assert solver.loc[EKFAC, "solver"] == "ekfac-sampled" and solver.loc[EKFAC, "passes"] == 3
    assert solver.loc[NAME, "solver"] == "minres"
    assert (out / "logs" / "solver_influence_functions_ekfac_seed_0.csv").is_file()


def projected_conv_gradients(ek, learner, data):
    """For each convolution of a fitted ``Ekfac``, a batch of 16's activations, output gradients and
    per-sample gradients in the eigenbasis, ``Q_S' G_n Q_A`` (float64)."""
    from models.per_sample import TapGraph
    x, y = next(split_batches(data, data.train, 16))
    graph = TapGraph(learner, len(x))
    p = graph.forward(x)
    for b, h, g in zip(ek.blocks, graph.inputs(), graph.backward(p - np.eye(10)[y])):
        if b.kind == "conv":
            a, go = b.activations(h), b.output_grads(g)
            G = b.sample_gradients(a, go).astype(np.float64)
            yield b, a, go, np.matmul(np.matmul(b.QS.T.astype(np.float64), G), b.QA.astype(np.float64))


def test_ekfac_correction_is_the_same_in_both_orders_on_cnn6():
    """The correction of a convolution is summed either from projected activations ([a, 1] Q_A,
    then Q_S' g with them) or from per-sample gradients projected afterwards (Q_S' G_n Q_A), each
    layer taking the cheaper: both give the same Lambda, and equal a float64 computation."""
    from influence_functions.ekfac import Ekfac, EkfacOptions
    data = digits4(n_train=64, n_val=20, size=8)
    model = build_model("cnn6", (1, 8, 8), 10)
    learner = Learner(model, model.create_parameters(np.random.RandomState(2)))
    for xb, yb in list(split_batches(data, data.train, 16)) * 2:
        learner.sgd_step(xb, yb, 0.05)
    ek = Ekfac(learner, data, EkfacOptions("empirical"))
    convs = 0
    for b, a, go, P in projected_conv_gradients(ek, learner, data):
        ref = (P ** 2).sum(axis=0)
        for order in ("projected", "raw"):
            b.lam = 0.0
            b.add_correction(b.prepare(a, order), go)
            assert rel(b.lam, ref) < 1e-4, (b.prefix, order)
        convs += 1
    assert convs == 6


# ---------------------------------------------------------------------------- self-influence
def explicit_operator(apply, space) -> np.ndarray:
    """The matrix of a linear map on parameter dicts, column by column (float64)."""
    return np.stack([space.flatten(apply(space.unflatten(e))) for e in np.eye(space.dim)], axis=1)


def per_sample_gradient_rows(learner, data) -> np.ndarray:
    """(n, P) per-sample loss gradients from batches of one (nnabla's own backward)."""
    space = ParamSpace(learner)
    return np.stack([space.flatten(learner.mean_loss_grad([(x, y)], train=False))
                     for x, y in split_batches(data, data.train, 1)])


@pytest.mark.parametrize("model_name", ["logreg", "mlp"])
def test_ekfac_self_influence_equals_the_explicit_quadratic_form(model_name):
    """``Ekfac.self_influence`` against ``g^T (G + alpha I)^-1 g`` with G the fitted EK-FAC matrix
    formed explicitly (``fisher_product`` on every basis vector) and g from batches of one."""
    from influence_functions.ekfac import Ekfac, EkfacOptions
    data = digits4(n_train=120, n_val=40)
    model = build_model(model_name, (1, 4, 4), 10)
    learner = Learner(model, model.create_parameters(np.random.RandomState(1)))
    train_sgd(learner, data, epochs=5, lr=0.1)
    space = ParamSpace(learner)
    ek = Ekfac(learner, data, EkfacOptions("sampled"), seed=3)
    G = explicit_operator(ek.fisher_product, space)
    grads = per_sample_gradient_rows(learner, data)
    ref = np.einsum("np,np->n", grads, np.linalg.solve(G + ALPHA * np.eye(space.dim), grads.T).T)
    got = ek.self_influence(ALPHA)
    assert got.shape == (len(data.train),)
    assert rel(got, ref) < 1e-4
    assert np.all(got > 0)


def test_ekfac_self_influence_of_convolutions_in_both_orders():
    """cnn6 at 8x8: each convolution's share from projected activations and from projected
    per-sample gradients equals a float64 computation of sum (Q_S' G_n Q_A)^2 / (Lambda / n + alpha)."""
    from influence_functions.ekfac import Ekfac, EkfacOptions
    data = digits4(n_train=48, n_val=20, size=8)
    model = build_model("cnn6", (1, 8, 8), 10)
    learner = Learner(model, model.create_parameters(np.random.RandomState(2)))
    ek = Ekfac(learner, data, EkfacOptions("empirical"))
    for b, a, go, P in projected_conv_gradients(ek, learner, data):
        ref = (P ** 2 / (b.lam / ek.n + ALPHA)).sum(axis=(1, 2))
        for order in ("projected", "raw"):
            assert rel(b.self_products(b.prepare(a, order), go, ALPHA, ek.n), ref) < 1e-4, (b.prefix, order)


def test_exact_self_influence_against_the_float64_logistic_regression_hessian(problem):
    """``exact_self_influence``: ``-g_j^T (H + alpha I)^-1 g_j / n`` with H and g_j by hand."""
    from influence_functions import exact_self_influence
    n = len(problem.data.train)
    P = softmax(problem.X @ theta_of(problem.learner))
    onehot = np.eye(10)[problem.data.train.labels]
    grads = np.einsum("ni,nc->nic", problem.X, P - onehot).reshape(n, -1)  # rows in theta's (17, 10) order
    ref = -np.einsum("np,np->n", grads, np.linalg.solve(problem.H + ALPHA * np.eye(problem.space.dim), grads.T).T) / n
    got = exact_self_influence(problem.learner, problem.data, ALPHA)
    assert rel(got, ref) < 1e-4


def test_exact_self_influence_refuses_a_large_model():
    from common.errors import UserError
    from influence_functions import exact_self_influence
    data = digits4(n_train=20, n_val=10)
    model = build_model("mlp", (1, 4, 4), 10)
    learner = Learner(model, model.create_parameters(np.random.RandomState(0)))
    with pytest.raises(UserError, match=r"exact self-influence forms the 3466 x 3466 Hessian .* over the limit of "
                                        r"1000 parameters; use Influence_functions_ekfac_self"):
        exact_self_influence(learner, data, ALPHA, max_params=1000)
