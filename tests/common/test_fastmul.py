"""common.fastmul: same-shape products through MulN with exact graph-level gradients."""
import nnabla as nn
import nnabla.functions as F
import numpy as np
import pytest
from nnabla import backward_functions

from common import fastmul
from common.fastmul import mul
from tests.helpers import data, make, rand_vec


def var(a, need_grad=True):
    return nn.Variable.from_numpy_array(np.asarray(a, np.float32), need_grad=need_grad)


def run(*outs):
    F.sink(*outs).forward(clear_no_need_grad=True)
    return [o.d.copy() for o in outs]


def test_mul_gradient_is_exact_where_an_input_is_zero():
    # nnabla's own MulN backward divides by the inputs: NaN at 0. Ours is dy * other input.
    rs = np.random.RandomState(0)
    a, b, c = rs.randn(2, 3, 4), (rs.randn(2, 3, 4) > 0) * rs.randn(2, 3, 4), rs.randn(2, 3, 4)
    A, B, C = var(a), var(b), var(c, need_grad=False)
    ga, gb = nn.grad([F.sum(mul(A, B) * C)], [A, B])
    ga, gb = run(ga, gb)
    assert (b == 0).any()
    np.testing.assert_allclose(ga, b * c, rtol=1e-6)
    np.testing.assert_allclose(gb, a * c, rtol=1e-6)


def test_mul_second_derivative_of_a_square():
    # d/da sum(a*a*c) = 2ac; d/da of <2ac, v> = 2cv.
    rs = np.random.RandomState(1)
    a, c, v = rs.randn(5), rs.randn(5), rs.randn(5)
    A = var(a)
    g = nn.grad([F.sum(mul(mul(A, A), var(c, False)))], [A])[0]
    h = nn.grad([F.sum(g * var(v, False))], [A])[0]
    g, h = run(g, h)
    np.testing.assert_allclose(g, 2 * a * c, rtol=1e-5)
    np.testing.assert_allclose(h, 2 * c * v, rtol=1e-5)


def test_mul_refuses_broadcasting():
    with pytest.raises(ValueError, match=r"mul needs equal shapes, got \(2, 3\) and \(1, 3\)"):
        mul(var(np.ones((2, 3))), var(np.ones((1, 3))))


def test_broadcasting_mul2_and_other_powers_keep_their_gradients():
    rs = np.random.RandomState(2)
    a, s = rs.randn(4, 3), rs.randn(1, 3)
    A, Sv = var(a), var(s)
    ga, gs = nn.grad([F.sum(A * Sv)], [A, Sv])
    gp = nn.grad([F.sum(F.pow_scalar(A, 3.0))], [A])[0]
    ga, gs, gp = run(ga, gs, gp)
    np.testing.assert_allclose(ga, np.broadcast_to(s, a.shape), rtol=1e-6)
    np.testing.assert_allclose(gs, a.sum(axis=0, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(gp, 3 * a ** 2, rtol=1e-5)


def test_relu_second_derivative_through_the_registered_backward():
    # d/dx sum(relu(x) * c) = c [x > 0]; its derivative in x is 0, in c is [x > 0].
    x = np.array([-1.0, 0.0, 2.0, 3.0])
    X, Cv = var(x), var([1.0, 2.0, 3.0, 4.0])
    g = nn.grad([F.sum(F.relu(X) * Cv)], [X])[0]
    gc = nn.grad([F.sum(g)], [Cv])[0]
    g, gc = run(g, gc)
    np.testing.assert_array_equal(g, [0.0, 0.0, 3.0, 4.0])
    np.testing.assert_array_equal(gc, [0.0, 0.0, 1.0, 1.0])


def test_fused_step_agrees_with_nnablas_stock_backward_functions():
    # The same cnn6 influence step with nnabla's registered backward functions restored.
    x, y = data(8)
    fast = make("cnn6")
    u = rand_vec(fast)
    dots_fast, hv_fast = fast.grad_dot_and_hvp(x, y, u)
    registered = {k: backward_functions.registry[k] for k in ("MulN", "Mul2", "ReLU", "PowScalar")}
    ours_mul_n = backward_functions.registry["MulN"]
    try:
        for name, f in fastmul._STOCK.items():
            backward_functions.register(name, f)
        # The stock MulN backward is NaN at zeros; MulN graphs need ours, Mul2/ReLU/Pow use stock.
        stock = make("cnn6")
        dots_stock, hv_stock = stock.grad_dot_and_hvp(x, y, u)
    finally:
        for name, f in registered.items():
            backward_functions.register(name, f)
    assert backward_functions.registry["MulN"] is ours_mul_n
    np.testing.assert_allclose(dots_fast, dots_stock, rtol=1e-5, atol=1e-6 * np.abs(dots_stock).max())
    for k in hv_stock:
        np.testing.assert_allclose(hv_fast[k], hv_stock[k], rtol=1e-4,
                                   atol=1e-5 * max(np.abs(hv_stock[k]).max(), 1e-12))
