"""Fast paths against the reference paths they replace (same math, rounding only)."""
import numpy as np
import pytest

from models.autodiff import vnorm
from tests.helpers import data, make, rand_vec


def rel(a, b):
    return vnorm({k: a[k] - b[k] for k in b}) / vnorm(b)


@pytest.mark.parametrize("name,train", [("logreg", False), ("mlp", True), ("cnn6", False), ("cnn6", True)])
def test_forward_mode_hvp_equals_double_backward(name, train):
    L = make(name)
    x, y = data(8)
    u = rand_vec(L)
    ref = L.hessian_vector_product(x, y, u, train=train, method="double_backward")
    assert rel(L.hessian_vector_product(x, y, u, train=train, method="forward"), ref) < 1e-5


@pytest.mark.parametrize("name,train", [("mlp", False), ("mlp", True), ("cnn6", False), ("cnn6", True)])
def test_fused_dots_and_hvp_equal_separate_calls(name, train):
    L = make(name)
    x, y = data(8)
    u = rand_vec(L)
    dots, hv = L.grad_dot_and_hvp(x, y, u, train=train)
    ref_dots = L.removal_grad_dot(x, y, u, train=train)
    ref_hv = L.hessian_vector_product(x, y, u, train=train, method="double_backward")
    np.testing.assert_allclose(dots, ref_dots, rtol=1e-5, atol=1e-5 * np.abs(ref_dots).max())
    assert rel(hv, ref_hv) < 1e-5
    if not (name == "cnn6" and train):
        # Without batch statistics, removing a row removes exactly its own gradient.
        own = L.per_sample_grad_dot(x, y, u, train=train, method="eps")
        np.testing.assert_allclose(dots, own, rtol=1e-5, atol=1e-5 * np.abs(own).max())


def test_tap_products_equal_eps_products():
    L = make("cnn6")
    x, y = data(8)
    u = rand_vec(L)
    for train in (False, True):
        a = L.per_sample_grad_dot(x, y, u, train=train, method="taps")
        b = L.per_sample_grad_dot(x, y, u, train=train, method="eps")
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_fast_graphs_leave_running_statistics_alone():
    L = make("cnn6")
    x, y = data(4)
    before = {k: L.params[k].d.copy() for k in L.stat_names}
    L.grad_dot_and_hvp(x, y, rand_vec(L), train=True)
    L.hessian_vector_product(x, y, rand_vec(L), train=True, method="forward")
    L.per_sample_grad_dot(x, y, rand_vec(L), train=True, method="taps")
    for k in L.stat_names:
        np.testing.assert_array_equal(L.params[k].d, before[k])


def test_prefetching_yields_the_same_states_in_order():
    from sgd_influence.infl import _prefetched
    calls = []

    def state_at(t):
        calls.append(t)
        return {"w": np.full(3, float(t))}

    got = [s["w"][0] for s in _prefetched(state_at, [5, 4, 3, 2])]
    assert got == [5.0, 4.0, 3.0, 2.0] and calls == [5, 4, 3, 2]


def test_fused_prefetched_influence_equals_reference_influence(tmp_path):
    # cnn6 on a few digits with Hara's cache: fused + prefetch against separate calls, no prefetch.
    from cleansing.config import make_config
    from cleansing.paths import RunPaths
    from cleansing.train import TrainConfig, load_training, train_with_trace
    from cleansing.trial import load_trial_data, validation_loss_grad
    from common.params_io import load_params
    from sgd_influence.infl import sgd_influence
    cfg = make_config(dataset="digits", out=str(tmp_path), n_train=48, n_val=16, n_test=16, show_progress=False,
                    train=TrainConfig(model="cnn6", epochs=1, batch_size=16, lr=0.05, augment=True))
    data = load_trial_data(cfg, 0)
    paths = RunPaths(tmp_path)
    train_with_trace(cfg.train, data, paths, 0, save_hara=True, show_progress=False)
    trace, learner = load_training(cfg.train, data, paths, 0)
    u = validation_loss_grad(learner, data)
    for state_at in (None, lambda t: load_params(paths.step_params(0, t))):
        fast = sgd_influence(learner, data, trace, u, True, state_at=state_at)
        learner.default_hvp, learner.default_dot = "double_backward", "taps"  # reference HVP, separate calls
        ref = sgd_influence(learner, data, trace, u, True, state_at=state_at, fused=False, prefetch=False)
        learner.default_hvp, learner.default_dot = "auto", "auto"
        err = np.abs(fast - ref).max() / np.abs(ref).max()
        assert err < 1e-5, err


def test_every_training_mode_hvp_normalises_the_same_way_where_the_mean_is_large():
    # Inputs with a large mean make float32 batch statistics sensitive to how they are summed;
    # forward-mode, fused and double-backward HVPs share one normalisation, so they still agree.
    L = make("cnn6")
    x, y = data(8)
    x = x * 0.1 + 30.0
    u = rand_vec(L)
    ref = L.hessian_vector_product(x, y, u, train=True, method="double_backward")
    fused = L.grad_dot_and_hvp(x, y, u, train=True)[1]
    forward = L.hessian_vector_product(x, y, u, train=True, method="forward")
    assert rel(fused, ref) < 1e-5
    assert rel(forward, fused) < 1e-6
