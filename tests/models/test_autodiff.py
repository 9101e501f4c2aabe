"""The shared primitives against independent computations."""
import numpy as np
import pytest

from models.autodiff import vdot, vnorm
from tests.helpers import data, make, rand_vec


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn6"])
def test_batched_products_equal_one_sample_at_a_time(name):
    L = make(name)
    x, y = data(6)
    u = rand_vec(L)
    batched = L.per_sample_grad_dot(x, y, u, train=False)
    loop = np.array([vdot(u, L.mean_loss_grad([(x[i:i + 1], y[i:i + 1])])) for i in range(6)])
    assert batched.shape == (6,)
    np.testing.assert_allclose(batched, loop, rtol=1e-4, atol=1e-6 * np.abs(loop).max())


def test_training_mode_products_sum_to_the_minibatch_gradient():
    # With batch statistics the per-sample shares couple, but they must add up to the batch gradient.
    L = make("cnn6")
    x, y = data(8)
    u = rand_vec(L)
    dots = L.per_sample_grad_dot(x, y, u, train=True)
    batch = 8 * vdot(u, L.mean_loss_grad([(x, y)], train=True))
    assert abs(dots.sum() - batch) <= 1e-4 * abs(batch)


def test_running_statistics_are_untouched_by_influence_graphs():
    L = make("cnn6")
    x, y = data(4)
    before = {k: L.params[k].d.copy() for k in L.stat_names}
    L.per_sample_grad_dot(x, y, rand_vec(L), train=True)
    L.hessian_vector_product(x, y, rand_vec(L), train=True)
    L.mean_loss_grad([(x, y)], train=True)
    for k in L.stat_names:
        np.testing.assert_array_equal(L.params[k].d, before[k])


def test_hessian_vector_product_equals_explicit_logistic_regression_hessian():
    L = make("logreg", shape=(1, 4, 4), classes=5, scale=0.3)
    x, y = data(12, shape=(1, 4, 4), classes=5)
    v = rand_vec(L)
    hv = L.hessian_vector_product(x, y, v, train=False)
    W = L.params["fc/affine/W"].d.astype(np.float64)
    b = L.params["fc/affine/b"].d.astype(np.float64)
    X = x.reshape(12, -1).astype(np.float64)
    z = X @ W + b
    P = np.exp(z - z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    dz = X @ v["fc/affine/W"] + v["fc/affine/b"]
    r = P * dz - P * (P * dz).sum(1, keepdims=True)  # (diag p - p p^T) dz per row
    ref = {"fc/affine/W": X.T @ r / 12, "fc/affine/b": r.sum(0) / 12}
    err = vnorm({k: hv[k] - ref[k] for k in ref}) / vnorm(ref)
    assert err < 1e-5, err


def test_hessian_vector_product_matches_finite_differences_on_mlp():
    L = make("mlp", shape=(1, 8, 8))
    x, y = data(16, shape=(1, 8, 8))
    v = rand_vec(L, unit=True)
    hv = L.hessian_vector_product(x, y, v, train=False)
    st = L.state()
    h = 1e-3

    def grad_at(s):
        L.set_state({k: (st[k] + s * h * v[k]).astype(np.float32) if k in v else st[k] for k in st})
        return L.mean_loss_grad([(x, y)])

    gp, gm = grad_at(1), grad_at(-1)
    L.set_state(st)
    fd = {k: (gp[k] - gm[k]) / (2 * h) for k in gp}
    err = vnorm({k: hv[k] - fd[k] for k in fd}) / vnorm(fd)
    assert err < 2e-2, err


@pytest.mark.parametrize("train", [False, True])
def test_cnn6_hessian_is_symmetric(train):
    # ReLU networks defeat finite differences (kinks); symmetry checks the double backward instead.
    L = make("cnn6")
    x, y = data(4)
    v, w = rand_vec(L, 3, unit=True), rand_vec(L, 4, unit=True)
    a = vdot(w, L.hessian_vector_product(x, y, v, train=train))
    b = vdot(v, L.hessian_vector_product(x, y, w, train=train))
    assert abs(a - b) <= 1e-3 * max(abs(a), abs(b)) + 1e-7


def test_batch_of_one_works_in_every_graph():
    # nnabla 1.39's double backward of softmax_cross_entropy fails for one row; our loss does not.
    L = make("cnn6")
    x, y = data(1)
    v = rand_vec(L)
    assert L.per_sample_grad_dot(x, y, v).shape == (1,)
    assert set(L.hessian_vector_product(x, y, v)) == set(L.trainable)


def test_sgd_step_scales_by_the_original_batch_size():
    a, b = make("logreg"), make("logreg")
    x, y = data(4)
    w0 = a.params["fc/affine/W"].d.copy()
    a.sgd_step(x, y, lr=0.1)  # mean over 4 rows
    b.sgd_step(x, y, lr=0.1, batch_size=8)  # sum over 4 rows / 8: half the step
    np.testing.assert_allclose(b.params["fc/affine/W"].d - w0, (a.params["fc/affine/W"].d - w0) / 2, rtol=1e-4,
                               atol=1e-8)


def test_row_weighted_batch_statistics_drop_a_row_at_weight_zero():
    import nnabla as nn
    import nnabla.functions as F

    from models.layers.batch_norm import batch_standardize
    rs = np.random.RandomState(3)
    h = rs.randn(6, 3, 4, 4).astype(np.float32) * 2 + 1
    w = nn.Variable.from_numpy_array(np.array([1, 1, 0, 1, 1, 1], np.float32))
    xhat = batch_standardize(nn.Variable.from_numpy_array(h), w)[0]
    xhat.forward()
    kept = np.delete(h, 2, axis=0)
    ref = F.batch_normalization(nn.Variable.from_numpy_array(kept),
                                nn.Variable.from_numpy_array(np.zeros((1, 3, 1, 1), np.float32)),
                                nn.Variable.from_numpy_array(np.ones((1, 3, 1, 1), np.float32)),
                                nn.Variable((1, 3, 1, 1)), nn.Variable((1, 3, 1, 1)), batch_stat=True)
    ref.forward()
    np.testing.assert_allclose(np.delete(xhat.d, 2, axis=0), ref.d, rtol=1e-4, atol=1e-5)


def test_removal_products_predict_leaving_a_row_out_of_a_batch_norm_step():
    # <u, G(S)> - <u, G(S without i)> computed by actually dropping row i (batch statistics of the
    # other rows change too): the removal product follows it, the row's own gradient share does not.
    L = make("cnn6", shape=(1, 16, 16))
    x, y = data(16, shape=(1, 16, 16))
    u = rand_vec(L)
    full = 16 * vdot(u, L.mean_loss_grad([(x, y)], train=True))
    actual = np.array([full - 15 * vdot(u, L.mean_loss_grad([(np.delete(x, i, 0), np.delete(y, i))], train=True))
                       for i in range(16)])
    removal = L.removal_grad_dot(x, y, u, train=True)
    share = L.per_sample_grad_dot(x, y, u, train=True)
    r_removal, r_share = np.corrcoef(removal, actual)[0, 1], np.corrcoef(share, actual)[0, 1]
    assert r_removal > 0.8 and r_removal > r_share + 0.1, (r_removal, r_share)


def test_batch_standardize_is_accurate_where_the_mean_is_large():
    import nnabla as nn

    from models.layers.batch_norm import batch_standardize
    h = (np.random.RandomState(0).randn(8, 4, 8, 8) * 0.5 + 30.0).astype(np.float32)
    xhat = batch_standardize(nn.Variable.from_numpy_array(h))[0]
    xhat.forward()
    h64 = h.astype(np.float64)
    m = h64.mean(axis=(0, 2, 3), keepdims=True)
    ref = (h64 - m) / np.sqrt(((h64 - m) ** 2).mean(axis=(0, 2, 3), keepdims=True) + 1e-5)
    assert np.abs(xhat.d - ref).max() < 1e-4


def test_running_statistics_gradient_matches_finite_differences():
    L = make("cnn6")
    x, y = data(16)
    for _ in range(5):
        L.sgd_step(x, y, 0.0)  # running statistics move towards the batch statistics
    xv, yv = data(24, seed=7)
    g = L.running_stats_grad([(xv, yv)])
    assert sorted(g) == sorted(L.stat_names) and len(g) == 6
    base = L.state()
    for name, c in (("conv1/bn/mean", 3), ("conv3/bn/var", 5)):
        h = 1e-2 * max(1.0, abs(float(base[name].reshape(-1)[c])))
        losses = []
        for sign in (1, -1):
            s = {k: v.copy() for k, v in base.items()}
            s[name].reshape(-1)[c] += sign * h
            L.set_state(s)
            losses.append(L.evaluate([(xv, yv)])[0])
        L.set_state(base)
        fd = (losses[0] - losses[1]) / (2 * h)
        assert abs(g[name].reshape(-1)[c] - fd) <= 2e-2 * abs(fd) + 1e-6, (name, g[name].reshape(-1)[c], fd)


def _one_step_removals(L, x, y, xv, yv, lr):
    """Actual change of the validation loss when each row leaves one SGD step (same batch size)."""
    start = L.state()

    def after(rows):
        L.set_state(start)
        L.sgd_step(x[rows], y[rows], lr, batch_size=len(x))
        return L.evaluate([(xv, yv)])[0]

    base = after(np.arange(len(x)))
    actual = np.array([after(np.delete(np.arange(len(x)), j)) - base for j in range(len(x))])
    L.set_state(start)
    L.sgd_step(x, y, lr)
    u, u_stats = L.mean_loss_grad([(xv, yv)], train=False), L.running_stats_grad([(xv, yv)])
    L.set_state(start)
    return actual, u, u_stats


def test_step_backward_includes_what_removal_does_to_the_running_statistics():
    # At a small learning rate the parameters barely move and the running statistics carry much
    # of a removal's effect on the validation loss: with them the prediction is close to exact.
    L = make("cnn6")
    x, y = data(8)
    xv, yv = data(64, seed=5)
    for _ in range(30):
        L.sgd_step(x, y, 0.0)
    actual, u, u_stats = _one_step_removals(L, x, y, xv, yv, 1e-4)
    without = L.step_backward(x, y, 1e-4, u, None)[0]
    with_stats, u_prev, u_stats_prev = L.step_backward(x, y, 1e-4, u, u_stats)
    ref, ref_prev, _ = L.step_backward(x, y, 1e-4, u, u_stats, fused=False)
    np.testing.assert_allclose(with_stats, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    assert vnorm({k: u_prev[k] - ref_prev[k] for k in u}) <= 1e-5 * vnorm(ref_prev)
    assert all(np.allclose(u_stats_prev[k], 0.9 * u_stats[k]) for k in u_stats)
    err_with, err_without = np.abs(with_stats - actual).max(), np.abs(without - actual).max()
    assert np.corrcoef(actual, with_stats)[0, 1] > 0.98
    assert err_with < 0.7 * err_without, (err_with, err_without)
