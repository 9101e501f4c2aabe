"""Per-sample gradients in factored form (``models.per_sample``) against nnabla's batch-of-one gradients."""
import numpy as np
import pytest

from datasets.batches import split_batches
from datasets.loader import small_digits
from models import build_model
from models.autodiff import Learner
from models.per_sample import PerSampleGradients


@pytest.mark.parametrize("name,size", [("cnn6", 8), ("mlp", 4), ("logreg", 4)])
def test_squared_norms_equal_the_batch_one_loop(name, size):
    """``||grad l(z_n)||^2`` over every trainable parameter (cnn6: convolutions and batch norm in
    inference mode) equals the squared norm of nnabla's gradient of sample n alone."""
    data = small_digits(n_train=24, n_val=8, size=size)
    model = build_model(name, (1, size, size), 10)
    learner = Learner(model, model.create_parameters(np.random.RandomState(4)))
    for x, y in split_batches(data, data.train, 8):
        learner.sgd_step(x, y, 0.05)  # batch norm's running statistics move away from their start
    x, y = next(split_batches(data, data.train, 12))
    got = PerSampleGradients(learner).squared_norms(x, y)
    ref = [sum(float(np.square(v.astype(np.float64)).sum())
               for v in learner.mean_loss_grad([(x[i:i + 1], y[i:i + 1])], train=False).values())
           for i in range(len(x))]
    assert got.shape == (12,)
    assert np.allclose(got, ref, rtol=1e-4)


def test_last_layer_factors_of_cnn6():
    """The last affine's inputs and ``p - e_y`` give its gradient ``a (p - e_y)^T`` (and ``p - e_y`` for b)."""
    data = small_digits(n_train=8, n_val=4, size=8)
    model = build_model("cnn6", (1, 8, 8), 10)
    learner = Learner(model, model.create_parameters(np.random.RandomState(1)))
    x, y = next(split_batches(data, data.train, 4))
    a, g = PerSampleGradients(learner).last_layer(x, y)
    last_w = [k for k in learner.trainable if k.endswith("affine/W")][-1]
    for i in range(4):
        ref = learner.mean_loss_grad([(x[i:i + 1], y[i:i + 1])], train=False)
        assert np.allclose(np.outer(a[i], g[i]), ref[last_w], rtol=1e-4, atol=1e-7)
        assert np.allclose(g[i], ref[last_w[:-1] + "b"], rtol=1e-4, atol=1e-7)
