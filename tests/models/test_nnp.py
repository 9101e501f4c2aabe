"""Neural Network Console models (``.nnp``, issue 34): files written in the tests by nnabla's own
``nnabla.utils.save.save``, read by ``models.nnp``, compared with nnabla's own forward of the file
(``NnpLoader``), differentiated (per-sample products against the batch-1 loop, Hessian-vector
products against finite differences of the gradient) and run through a driver."""
from __future__ import annotations

import io
import os
import zipfile
from collections import OrderedDict

import nnabla as nn
import nnabla.functions as F
import nnabla.parametric_functions as PF
import numpy as np
import pandas as pd
import pytest

from common.errors import UserError
from datasets import to_network_input
from datasets.loader import load_dataset
from models import build_model
from models.autodiff import Learner
from models.layers import RELU, Affine, BatchNorm, Convolution
from models.networks import MAX_POOL_2X2, Model
from models.nnp import NnpModel, load_file_parameters, nnp_fingerprint


def save_nnp(path, build, input_shape=(1, 28, 28), raw_pixels=True, seed=0, optimizer=False, parameter_format=".h5"):
    """Write ``build(x) -> class scores`` as an .nnp with one executor (softmax output) and, with
    ``optimizer``, a training network (softmax cross-entropy) that an optimizer names, as NNC does."""
    import nnabla.solvers as S
    from nnabla.utils.save import save
    scope: OrderedDict = OrderedDict()
    rng = np.random.RandomState(seed)
    with nn.parameter_scope("", scope):
        x = nn.Variable((2,) + tuple(input_shape))
        scores = build(x)
        y = F.softmax(scores)
        for v in nn.get_parameters(grad_only=False).values():  # non-trivial stored values
            if v.need_grad:
                v.d = rng.normal(0, 0.3, v.shape)
        contents = {"networks": [{"name": "runtime", "batch_size": 2, "outputs": {"y": y}, "names": {"x": x}}],
                    "executors": [{"name": "runtime", "network": "runtime", "data": ["x"], "output": ["y"],
                                   "no_image_normalization": raw_pixels}]}
        if optimizer:
            xt, t = nn.Variable((2,) + tuple(input_shape)), nn.Variable((2, 1))
            loss = F.mean(F.softmax_cross_entropy(build(xt), t))
            solver = S.Sgd(0.01)
            solver.set_parameters(nn.get_parameters())
            contents["networks"].insert(0, {"name": "training", "batch_size": 2, "outputs": {"loss": loss},
                                            "names": {"x": xt, "y": t}})
            contents["datasets"] = [{"name": "train", "uri": "train.csv", "variables": {"x": xt, "y": t},
                                     "shuffle": True, "batch_size": 2, "no_image_normalization": raw_pixels}]
            contents["optimizers"] = [{"name": "optimizer", "solver": solver, "network": "training",
                                       "dataset": "train", "weight_decay": 0, "lr_decay": 1,
                                       "lr_decay_interval": 1, "update_interval": 1}]
        save(str(path), contents, parameter_format=parameter_format)
    return path


def lenet(x):
    """28x28 input scaled by 1/255, two 5x5 unpadded convolutions with max pooling, two affine layers."""
    h = F.mul_scalar(x, 1.0 / 255.0)
    h = F.max_pooling(F.relu(PF.convolution(h, 4, (5, 5), name="conv1")), (2, 2))
    h = F.max_pooling(F.relu(PF.convolution(h, 8, (5, 5), name="conv2")), (2, 2))
    h = F.relu(PF.affine(h, 16, name="fc3"))
    return PF.affine(h, 10, name="fc4")


def zoo(x, dropout=False, flat_bn=True):
    """Every other supported kind: strided/dilated/grouped convolution, batch norm, the activations,
    average and global pooling, reshape, add-scalar (dropout: nnabla's forward would drop)."""
    h = F.mul_scalar(x, 1.0 / 255.0)
    h = F.add_scalar(h, -0.5)
    h = PF.convolution(h, 4, (3, 3), pad=(1, 1), stride=(2, 2), name="c1")
    h = PF.batch_normalization(h, batch_stat=False, name="bn1")
    h = F.leaky_relu(h, 0.1)
    h = PF.convolution(h, 4, (3, 3), pad=(2, 2), dilation=(2, 2), group=2, name="c2")
    h = F.elu(h, 1.0)
    h = F.average_pooling(h, (2, 2))
    h = F.swish(h)
    if dropout:
        h = F.dropout(h, 0.2)
    h = F.reshape(h, (h.shape[0], 4 * 7 * 7))
    h = PF.affine(h, 12, name="f1")
    h = F.tanh(PF.batch_normalization(h, batch_stat=False, name="bn2") if flat_bn else h)
    h = F.reshape(h, (h.shape[0], 3, 2, 2))
    h = F.sigmoid(F.global_average_pooling(h))
    return PF.affine(h, 10, name="f2")


def graph(x):
    """A residual connection (Add2) and a concatenation of two branches."""
    h = F.mul_scalar(x, 1.0 / 255.0)
    a = F.relu(PF.convolution(h, 4, (3, 3), pad=(1, 1), name="g1"))
    b = PF.convolution(a, 4, (3, 3), pad=(1, 1), name="g2")
    h = F.concatenate(F.relu(a + b), a, axis=1)
    return PF.affine(F.max_pooling(h, (4, 4)), 10, name="g3")


def resbn(x):
    """A small residual network with batch norm (inference mode, as NNC's runtime network): conv-bn-relu,
    conv-bn, Add2 with the skip, relu, affine."""
    h = F.mul_scalar(x, 1.0 / 255.0)
    a = F.relu(PF.batch_normalization(PF.convolution(h, 4, (3, 3), pad=(1, 1), name="r1"), batch_stat=False,
                                      name="r1"))
    b = PF.batch_normalization(PF.convolution(a, 4, (3, 3), pad=(1, 1), name="r2"), batch_stat=False, name="r2")
    return PF.affine(F.max_pooling(F.relu(a + b), (4, 4)), 10, name="r3")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 0, n_train=40, n_val=8, n_test=8)


def nnabla_scores(path, images: np.ndarray, scores_name: str) -> np.ndarray:
    """nnabla's own forward of the file's network on 0..255 pixel values."""
    from nnabla.utils.nnp_graph import NnpLoader
    net = NnpLoader(str(path)).get_network("runtime", batch_size=len(images))
    net.inputs["x"].d = images
    out = net.variables[scores_name]
    out.forward()
    return out.d.copy()


@pytest.mark.parametrize("build", [lenet, zoo, graph, resbn])
def test_logits_equal_nnablas_forward_of_the_file(tmp_path, digits, build):
    path = save_nnp(tmp_path / "net.nnp", build)
    model = build_model(str(path), digits.image_shape, digits.num_classes)
    assert isinstance(model, NnpModel) and model.spec.input_shape == (1, 28, 28)
    params = model.create_parameters(np.random.RandomState(0))
    load_file_parameters(model, params)
    images = digits.test.images[:5]
    x = nn.Variable.from_numpy_array(to_network_input(images, digits.mean, digits.std))
    ours = model.logits(x, params, train=False)
    ours.forward()
    raw = images[:, :, 2:30, 2:30].astype(np.float32)  # the centre crop to the file's 28x28
    theirs = nnabla_scores(path, raw, model.spec.scores_name)
    np.testing.assert_allclose(ours.d, theirs, rtol=1e-4, atol=1e-4)


def test_the_optimizers_network_is_taken(tmp_path, digits):
    path = save_nnp(tmp_path / "net.nnp", lenet, optimizer=True)
    model = build_model(str(path), digits.image_shape, digits.num_classes)
    assert model.spec.network == "training" and model.spec.pixel_scale == 1.0
    assert model.spec.scores_name.startswith("@training/Affine")
    assert [type(layer).__name__ for layer in model.layers] == [
        "Elementwise", "Convolution", "Elementwise", "Pooling", "Convolution", "Elementwise", "Pooling",
        "Affine", "Elementwise", "Affine"]


def test_dropout_is_the_identity(tmp_path, digits):
    a = build_model(str(save_nnp(tmp_path / "a.nnp", zoo)), digits.image_shape, 10)
    b = build_model(str(save_nnp(tmp_path / "b.nnp", lambda x: zoo(x, dropout=True))), digits.image_shape, 10)
    assert len(b.layers) == len(a.layers) + 1
    x = nn.Variable.from_numpy_array(to_network_input(digits.test.images[:4], digits.mean, digits.std))
    for model in (a, b):
        params = model.create_parameters(np.random.RandomState(0))
        load_file_parameters(model, params)
        out = model.logits(x, params, train=True)
        out.forward()
        model.out = out.d.copy()
    np.testing.assert_array_equal(a.out, b.out)


def test_initialisation_is_seeded_and_from_the_files_shapes(tmp_path, digits):
    path = save_nnp(tmp_path / "net.nnp", lenet)
    model = build_model(str(path), digits.image_shape, digits.num_classes)
    a = model.create_parameters(np.random.RandomState(1))
    b = model.create_parameters(np.random.RandomState(1))
    c = model.create_parameters(np.random.RandomState(2))
    stored = model.file_parameters()
    assert list(a) == ["conv1/conv/W", "conv1/conv/b", "conv2/conv/W", "conv2/conv/b", "fc3/affine/W",
                       "fc3/affine/b", "fc4/affine/W", "fc4/affine/b"]
    for k in a:
        assert a[k].shape == stored[k].shape
        np.testing.assert_array_equal(a[k].d, b[k].d)
    assert not np.array_equal(a["conv1/conv/W"].d, c["conv1/conv/W"].d)
    assert not np.any(a["fc4/affine/b"].d)
    lim = np.sqrt(6.0 / (1 * 25 + 4 * 25))  # nnabla's Glorot-uniform limit for conv1
    assert np.abs(a["conv1/conv/W"].d).max() <= lim


class Twin(Model):
    """``twin``'s network in the built-in layer vocabulary (forward-mode products, layer taps)."""

    name = "nnp_twin"
    layers = (Convolution.scoped("c1", 4), BatchNorm.scoped("c1"), RELU, MAX_POOL_2X2,
              Convolution.scoped("c2", 4), RELU, MAX_POOL_2X2, Affine.scoped("fc"))


def twin(x):
    """``Twin`` as a file: 0..1 images (NNC's image normalisation), ``2x - 1`` = the project's grey
    normalisation, then the same layers under the same parameter names."""
    h = F.add_scalar(F.mul_scalar(x, 2.0), -1.0)
    h = F.relu(PF.batch_normalization(PF.convolution(h, 4, (3, 3), pad=(1, 1), name="c1"), name="c1"))
    h = F.max_pooling(h, (2, 2))
    h = F.max_pooling(F.relu(PF.convolution(h, 4, (3, 3), pad=(1, 1), name="c2")), (2, 2))
    return PF.affine(h, 10, name="fc")


def close(a, b, rtol=2e-3, scale=None):
    """Agreement up to float32 rounding, relative to the largest entry (or to ``scale``)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.abs(b).max() if scale is None else scale
    assert np.abs(a - b).max() <= rtol * scale, (np.abs(a - b).max(), scale)


def test_products_equal_the_built_in_vocabularys(tmp_path, digits):
    """The same network as an .nnp (its layers' forward-mode rules and layer taps, and the generic
    paths: 'eps' per-sample products, double-backward Hessian-vector products) and in the built-in
    vocabulary: the per-sample products (also against the batch-1 loop), Hessian-vector products,
    removal products and whole pulled-back training steps agree in both network modes, batch norm
    and its running statistics included."""
    path = save_nnp(tmp_path / "twin.nnp", twin, input_shape=(1, 32, 32), raw_pixels=False)
    model = build_model(str(path), digits.image_shape, 10)
    ours = Learner(model, model.create_parameters(np.random.RandomState(0)))
    ref_model = Twin(digits.image_shape, 10)
    ref = Learner(ref_model, ref_model.create_parameters(np.random.RandomState(0)))
    assert list(ours.params) == list(ref.params)
    rng = np.random.RandomState(3)
    state = {k: (v.d + 0.1 * rng.standard_normal(v.shape) if v.need_grad else v.d) for k, v in ours.params.items()}
    state["c1/bn/var"] = 0.5 + rng.random_sample(state["c1/bn/var"].shape)
    ours.set_state(state)
    ref.set_state(state)
    x = to_network_input(digits.train.images[:6], digits.mean, digits.std)
    y = digits.train.labels[:6]
    u = {k: rng.standard_normal(v.shape) for k, v in ours.trainable.items()}
    assert ours.hvp_method() == "forward" and ref.hvp_method() == "forward"
    for train in (False, True):
        for method in ("taps", "eps"):
            close(ours.per_sample_grad_dot(x, y, u, train=train, method=method),
                  ref.per_sample_grad_dot(x, y, u, train=train))
        close(ours.removal_grad_dot(x, y, u, train=train), ref.removal_grad_dot(x, y, u, train=train))
        b = ref.hessian_vector_product(x, y, u, train=train)
        scale = max(np.abs(v).max() for v in b.values())  # blocks that vanish (c1's bias before batch norm)
        for method in ("forward", "double_backward"):
            a = ours.hessian_vector_product(x, y, u, train=train, method=method)
            for k in u:
                close(a[k], b[k], scale=scale)
    u_stats = {k: rng.standard_normal(ours.params[k].shape) for k in ours.stat_names}
    for fused in (True, False):
        a, b = ours.step_backward(x, y, 0.1, u, u_stats, fused=fused), ref.step_backward(x, y, 0.1, u, u_stats)
        close(a[0], b[0])
        for k in u:
            close(a[1][k], b[1][k])
    a, b = ours.running_stats_products(x, u_stats), ref.running_stats_products(x, u_stats)
    close(a[0], b[0])
    for k in u:
        close(a[1][k], b[1][k], scale=max(np.abs(v).max() for v in b[1].values()))
    loop = [ours.per_sample_grad_dot(x[i:i + 1], y[i:i + 1], u, train=False) for i in range(6)]
    close(np.concatenate(loop), ours.per_sample_grad_dot(x, y, u, train=False))


def test_fingerprint_tells_networks_apart(tmp_path, digits):
    a = save_nnp(tmp_path / "a.nnp", lenet)
    b = save_nnp(tmp_path / "b.nnp", zoo)
    fa = nnp_fingerprint(str(a), digits.image_shape, 10)
    assert fa == nnp_fingerprint(str(a), digits.image_shape, 10)
    assert fa != nnp_fingerprint(str(b), digits.image_shape, 10)


def test_unsupported_function_is_one_line(tmp_path, digits):
    def cube(x):
        h = F.mul_scalar(x, 1.0 / 255.0)
        h = F.pow_scalar(PF.affine(h, 8, name="f1"), 3.0)
        return PF.affine(h, 10, name="f2")
    path = save_nnp(tmp_path / "cube.nnp", cube)
    with pytest.raises(UserError) as err:
        build_model(str(path), digits.image_shape, 10)
    msg = str(err.value)
    assert "PowScalar" in msg and str(path) in msg and "\n" not in msg
    import eval_sgd_influence as driver
    from cleansing.cli import run_main
    out = tmp_path / "out"
    assert run_main(driver.main, ["-m", str(path), "-o", str(out), "--methods", "Random", "--no-progress"]) == 2
    assert not out.exists()

    def gated(x):
        h = PF.affine(F.mul_scalar(x, 1.0 / 255.0), 8, name="f1")
        return PF.affine(h * F.sigmoid(h), 10, name="f2")
    path = save_nnp(tmp_path / "gated.nnp", gated)
    with pytest.raises(UserError, match="Mul2"):
        build_model(str(path), digits.image_shape, 10)


@pytest.mark.parametrize("build", [graph, zoo, resbn])
def test_graph_products_are_exact(tmp_path, digits, build):
    """On a graph (Add2, Concatenate) and on the other kinds (batch norm after an affine layer too):
    per-sample products equal each row's own gradient (inference mode where batch norm couples the
    rows), and the Hessian-vector products are symmetric; training updates batch norm's running
    statistics."""
    path = save_nnp(tmp_path / "net.nnp", build)
    model = build_model(str(path), digits.image_shape, 10)
    learner = Learner(model, model.create_parameters(np.random.RandomState(0)))
    assert model.forward_mode == (build is not zoo)  # zoo: batch norm after an affine layer, generic paths
    train = not learner.stat_names
    x = to_network_input(digits.train.images[:5], digits.mean, digits.std)
    y = digits.train.labels[:5]
    rng = np.random.RandomState(1)
    u, v = ({k: rng.standard_normal(p.shape) for k, p in learner.trainable.items()} for _ in range(2))
    dots = learner.per_sample_grad_dot(x, y, u, train=train)
    rows = [learner.mean_loss_grad([(x[i:i + 1], y[i:i + 1])]) for i in range(5)]
    close(dots, [sum(np.vdot(u[k], g[k]) for k in u) for g in rows])
    hu, hv = (learner.hessian_vector_product(x, y, w, train=True) for w in (u, v))
    a, b = sum(np.vdot(v[k], hu[k]) for k in u), sum(np.vdot(u[k], hv[k]) for k in u)
    assert abs(a - b) <= 1e-4 * max(abs(a), abs(b))
    before = {k: learner.params[k].d.copy() for k in learner.stat_names}
    learner.sgd_step(x, y, 0.1)
    assert all(np.abs(learner.params[k].d - v).max() > 0 for k, v in before.items())


def test_driver_runs_on_an_nnp_file(tmp_path, capsys):
    import eval_sgd_influence as driver
    from cleansing.cli import run_main
    path = save_nnp(tmp_path / "lenet.nnp", lenet)
    out = tmp_path / "out"
    argv = ["-m", str(path), "-ds", "digits", "-e", "1", "-bs", "16", "-lr", "0.05", "-r", "0", "4",
            "--n-train", "48", "--n-val", "16", "--n-test", "16", "-j", "1", "--no-progress", "--gallery", "0",
            "-o", str(out), "--methods", "Hara", "Ours", "Random"]
    assert run_main(driver.main, argv) == 0
    for method in ("Hara", "Ours", "Random"):
        files = list((out / "influence" / method).glob("influence_*_0.csv"))
        assert len(files) == 1, method
        frame = pd.read_csv(files[0])
        assert len(frame) == 48 and np.isfinite(frame.influence).all()
    manifest = (out / "manifest.json").read_text()
    assert str(path) in manifest and "model_fingerprint" in manifest
    # Dask worker processes rebuild the network from the path alone: the same influences
    out2 = tmp_path / "out2"
    assert run_main(driver.main, argv + ["-o", str(out2), "-j", "2"]) == 0  # the last -o, -j count
    for method in ("Hara", "Ours"):
        (a,), (b,) = ((o / "influence" / method).glob("influence_*_0.csv") for o in (out, out2))
        assert a.read_bytes() == b.read_bytes()
    # the same path holding another network: refused like any changed setting
    save_nnp(path, zoo)
    capsys.readouterr()
    assert run_main(driver.main, argv) == 2
    assert "model_fingerprint" in capsys.readouterr().err


def test_influence_functions_and_batch_norm_networks_run(tmp_path):
    """MINRES influence functions on the LeNet; Hara and Ours (batch norm's running-statistics terms
    by the generic path) and TracIn on a network with batch normalisation."""
    import eval_influence_functions as if_driver
    import eval_sgd_influence as driver
    from cleansing.cli import run_main
    from influence_functions import NAME
    common = ["-ds", "digits", "-e", "1", "-bs", "16", "-r", "0", "--n-train", "32", "--n-val", "16", "--n-test",
              "16", "-j", "1", "--no-progress", "--gallery", "0"]
    lenet_path = save_nnp(tmp_path / "lenet.nnp", lenet)
    out = tmp_path / "if"
    assert run_main(if_driver.main, ["-m", str(lenet_path), *common, "-o", str(out), "--methods", NAME]) == 0
    frame = pd.read_csv(next((out / "influence" / NAME).glob("influence_*_0.csv")))
    assert len(frame) == 32 and np.isfinite(frame.influence).all()
    twin_path = save_nnp(tmp_path / "twin.nnp", twin, input_shape=(1, 32, 32), raw_pixels=False)
    out = tmp_path / "bn"
    methods = ["Hara", "Ours", "TracIn"]
    assert run_main(driver.main, ["-m", str(twin_path), *common, "-o", str(out), "--methods", *methods]) == 0
    for method in ("Hara", "Ours", "TracIn"):
        frame = pd.read_csv(next((out / "influence" / method).glob("influence_*_0.csv")))
        assert len(frame) == 32 and np.isfinite(frame.influence).all()


def test_driver_refuses_a_missing_or_foreign_file(tmp_path, capsys):
    import eval_sgd_influence as driver
    from cleansing.cli import run_main
    other = tmp_path / "notes.nnp"
    other.write_text("not a zip")
    for bad in (str(tmp_path / "missing.nnp"), str(other), "nosuchmodel"):
        out = tmp_path / "out"
        with pytest.raises(SystemExit) as exit_:
            run_main(driver.main, ["-m", bad, "-o", str(out), "--methods", "Random"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "-m/--model" in err
        assert not out.exists()


def strided(x):
    """Convolutions with stride, padding and dilation, batch norm on maps and after an affine layer."""
    h = F.mul_scalar(x, 1.0 / 255.0)
    h = F.relu(PF.convolution(h, 3, (3, 3), pad=(1, 1), stride=(2, 2), name="s1"))
    h = PF.batch_normalization(PF.convolution(h, 4, (3, 2), pad=(2, 1), dilation=(2, 1), name="s2"), name="s2")
    h = F.relu(PF.batch_normalization(PF.affine(F.relu(h), 8, name="s3"), name="s3"))
    return PF.affine(h, 10, name="s4")


@pytest.mark.parametrize("build", [lenet, strided, graph])
def test_layer_taps_give_each_rows_gradient(tmp_path, digits, build):
    """The factored per-sample gradients (``models.per_sample``, EK-FAC's and TracIn's) of any
    2-D convolution: each row's squared gradient norm equals that of its own gradient."""
    from models.per_sample import PerSampleGradients
    path = save_nnp(tmp_path / "net.nnp", build)
    model = build_model(str(path), digits.image_shape, 10)
    learner = Learner(model, model.create_parameters(np.random.RandomState(0)))
    for k in learner.stat_names:  # batch norm's running statistics, not the defaults
        learner.params[k].d = 0.5 + np.random.RandomState(1).random_sample(learner.params[k].shape)
    x = to_network_input(digits.train.images[:5], digits.mean, digits.std)
    y = digits.train.labels[:5]
    norms = PerSampleGradients(learner).squared_norms(x, y)
    if build is strided:  # a grouped convolution is refused in one line
        grouped = build_model(str(save_nnp(tmp_path / "zoo.nnp", zoo)), digits.image_shape, 10)
        with pytest.raises(UserError, match="one group"):
            PerSampleGradients(Learner(grouped, grouped.create_parameters(np.random.RandomState(0)))).squared_norms(
                x, y)
    rows = [learner.mean_loss_grad([(x[i:i + 1], y[i:i + 1])]) for i in range(5)]
    close(norms, [sum(np.square(g[k]).sum() for k in g) for g in rows])


def conv_only(x):
    """No Affine layer: a convolution to the classes' maps, averaged."""
    h = F.mul_scalar(x, 1.0 / 255.0)
    return F.reshape(F.global_average_pooling(PF.convolution(h, 10, (3, 3), name="c")), (x.shape[0], 10))


def test_ekfac_and_turnover_dropout_run(tmp_path, capsys):
    """EK-FAC on the LeNet's 5x5 convolutions; turn-over dropout masks the input of its last Affine
    layer; a network without Affine layer has no mask point: one line, exit 2."""
    import eval_influence_functions as if_driver
    import eval_turnover_dropout as td_driver
    from cleansing.cli import run_main
    from influence_functions import EKFAC
    path = save_nnp(tmp_path / "lenet.nnp", lenet)
    common = ["-m", str(path), "-e", "1", "-bs", "16", "-r", "0", "--n-train", "32", "--n-val", "16", "--n-test",
              "16", "-j", "1", "--no-progress", "--gallery", "0"]
    out = tmp_path / "a"
    assert run_main(if_driver.main, common + ["-o", str(out), "--methods", EKFAC]) == 0
    frame = pd.read_csv(next((out / "influence" / EKFAC).glob("influence_*_0.csv")))
    assert len(frame) == 32 and np.isfinite(frame.influence).all()
    import json

    from turnover_dropout import NAME
    out = tmp_path / "b"
    assert run_main(td_driver.main, common + ["-o", str(out)]) == 0
    frame = pd.read_csv(next((out / "influence" / NAME).glob("influence_*_0.csv")))
    assert len(frame) == 32 and np.isfinite(frame.influence).all() and frame.influence.std() > 0
    assert json.loads((out / "manifest.json").read_text())["td_layers"] == list(build_model(
        str(path), (1, 28, 28), 10).mask_points)
    capsys.readouterr()
    other = save_nnp(tmp_path / "conv_only.nnp", conv_only)
    common[1] = str(other)
    assert run_main(td_driver.main, common + ["-o", str(tmp_path / "c")]) == 2
    assert "turn-over dropout" in capsys.readouterr().err


def test_turnover_mask_point_is_the_last_affine_layers_input(tmp_path, digits):
    """The LeNet's mask point: the 16 units entering fc4; ones change nothing, zeros leave fc4's bias,
    a unit's zero equals zeroing its row of fc4's weight."""
    path = save_nnp(tmp_path / "lenet.nnp", lenet)
    data = load_dataset("digits", 0, n_train=40, n_val=8, n_test=8, image_size=(28, 28))
    model = build_model(str(path), data.image_shape, 10)
    (point,) = model.mask_points
    assert model.mask_shapes() == {point: 16}
    params = model.create_parameters(np.random.RandomState(0))
    load_file_parameters(model, params)
    x = nn.Variable.from_numpy_array(to_network_input(data.test.images[:4], data.mean, data.std))

    def run(mask, p=params):
        out = model.logits(x, p, False, masks={point: nn.Variable.from_numpy_array(mask)})
        out.forward()
        return out.d.copy()
    plain = model.logits(x, params, False)
    plain.forward()
    np.testing.assert_array_equal(run(np.ones((4, 16), np.float32)), plain.d)
    np.testing.assert_allclose(run(np.zeros((4, 16), np.float32)), np.tile(params["fc4/affine/b"].d, (4, 1)),
                               atol=1e-6)
    mask = np.ones((4, 16), np.float32)
    mask[:, 3] = 0
    cut = OrderedDict((k, nn.Variable.from_numpy_array(v.d.copy())) for k, v in params.items())
    cut["fc4/affine/W"].d[3] = 0
    out = model.logits(x, cut, False)
    out.forward()
    np.testing.assert_allclose(run(mask), out.d, rtol=1e-6, atol=1e-6)
    with pytest.raises(UserError, match="mask point"):
        model.logits(x, params, False, masks={"nowhere": nn.Variable((4, 16))})


def test_nnp_weights_start_from_the_files_parameters(tmp_path, digits, capsys):
    import json

    import eval_sgd_influence as driver
    from cleansing.cli import run_main
    from cleansing.train import TrainConfig, new_learner
    path = save_nnp(tmp_path / "lenet.nnp", lenet)
    for seed in (0, 1):
        learner = new_learner(TrainConfig(model=str(path), nnp_weights=True), digits, seed)
        stored = learner.model.file_parameters()
        for k, v in learner.params.items():
            np.testing.assert_array_equal(v.d, stored[k])
    common = ["-e", "1", "-bs", "16", "-r", "0", "--n-train", "32", "--n-val", "16", "--n-test", "16", "-j", "1",
              "--no-progress", "--gallery", "0", "--methods", "Random"]
    out = tmp_path / "out"
    assert run_main(driver.main, ["-m", str(path), "--nnp-weights", "-o", str(out), *common]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["nnp_weights"] is True
    assert manifest["model_fingerprint"] != nnp_fingerprint(str(path), digits.image_shape, 10)
    capsys.readouterr()
    assert run_main(driver.main, ["-m", "logreg", "--nnp-weights", "-o", str(tmp_path / "o2"), *common]) == 2
    assert "--nnp-weights" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_protobuf_parameters_and_a_fresh_process(tmp_path, digits):
    """Parameters stored as .protobuf load alike; another process (a Dask worker) rebuilds the model
    from the path alone, with the same fingerprint."""
    import subprocess
    import sys
    h5 = save_nnp(tmp_path / "h5.nnp", lenet)
    pb = save_nnp(tmp_path / "pb.nnp", lenet, parameter_format=".protobuf")
    a, b = (build_model(str(p), digits.image_shape, 10).file_parameters() for p in (h5, pb))
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    here = nnp_fingerprint(str(pb), digits.image_shape, 10)
    code = (f"from models.nnp import nnp_fingerprint; print(nnp_fingerprint({str(pb)!r}, "
            f"{tuple(digits.image_shape)!r}, 10))")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert res.stdout.split()[-1] == here


def test_data_come_at_the_files_input_size(tmp_path, mnist_dir):
    """MNIST's own 28x28 for a 28x28 network (not the 32x32 the built-in models get); digits resized
    from their own 8x8; a driver run on MNIST trains the LeNet on them."""
    import gzip

    import eval_sgd_influence as driver
    from cleansing.cli import run_main
    from models.nnp import nnp_image_size
    path = save_nnp(tmp_path / "lenet.nnp", lenet)
    assert nnp_image_size(str(path)) == (28, 28) and nnp_image_size("cnn6") is None
    data = load_dataset("mnist", 0, data_dir=mnist_dir, n_train=20, n_val=5, n_test=7, image_size=(28, 28))
    assert data.image_shape == (1, 28, 28)
    with gzip.open(os.path.join(mnist_dir, "t10k-images-idx3-ubyte.gz")) as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    np.testing.assert_array_equal(data.test.images, raw[:7])
    assert load_dataset("mnist", 0, data_dir=mnist_dir, n_test=7).image_shape == (1, 32, 32)
    assert load_dataset("digits", 0, n_train=20, image_size=(28, 28)).image_shape == (1, 28, 28)
    out = tmp_path / "out"
    argv = ["-m", str(path), "-ds", "mnist", "--data-dir", mnist_dir, "-e", "1", "-bs", "16", "-r", "0",
            "--n-train", "64", "--n-val", "16", "--n-test", "16", "-j", "1", "--no-progress", "--gallery", "0",
            "-o", str(out), "--methods", "Ours"]
    assert run_main(driver.main, argv) == 0
    assert len(pd.read_csv(next((out / "influence" / "Ours").glob("influence_*_0.csv")))) == 64


@pytest.mark.parametrize("build", [lenet, graph, lambda x: zoo(x, flat_bn=False), resbn],
                         ids=["lenet", "graph", "zoo", "resbn"])
def test_tangent_rules_against_finite_differences(tmp_path, digits, build):
    """The layers' forward-mode rules (``_Jvp`` through ``NnpModel.walk_tangent``) give the
    directional derivative of the class scores: central differences along the direction, in both
    network modes; then the forward-mode products equal the generic ones."""
    from models.autodiff import _Jvp
    path = save_nnp(tmp_path / "net.nnp", build)
    model = build_model(str(path), digits.image_shape, 10)
    assert model.forward_mode and _Jvp.supported(model)
    params = model.create_parameters(np.random.RandomState(0))
    load_file_parameters(model, params)
    rng = np.random.RandomState(5)
    trainable = {k: v for k, v in params.items() if v.need_grad}
    V = {k: nn.Variable.from_numpy_array(rng.standard_normal(v.shape).astype(np.float32)) for k, v in trainable.items()}
    x = nn.Variable.from_numpy_array(to_network_input(digits.train.images[:4], digits.mean, digits.std))
    base = {k: v.d.copy() for k, v in params.items()}
    for train in (False, True):
        stats = {k: nn.Variable.from_numpy_array(v.d.copy()) for k, v in params.items() if not v.need_grad}
        logits, dlogits = _Jvp(model, params, V, {**params, **stats}, train).forward(x)
        F.sink(logits, dlogits).forward()
        d = dlogits.d.copy()
        h, fd = 1e-3, []
        for sign in (1, -1):
            for k, v in trainable.items():
                v.d = base[k] + sign * h * V[k].d
            scratch = {k: nn.Variable.from_numpy_array(v.d.copy()) for k, v in stats.items()}
            out = model.logits(x, params, train, stats={**params, **scratch}, row_weights=(
                nn.Variable.from_numpy_array(np.ones(4, np.float32)) if train else None))
            out.forward()
            fd.append(out.d.astype(np.float64))
        for k, v in trainable.items():
            v.d = base[k]
        fd = (fd[0] - fd[1]) / (2 * h)
        assert np.abs(d - fd).max() <= 2e-2 * np.abs(fd).max(), (train, np.abs(d - fd).max(), np.abs(fd).max())
    learner = Learner(model, params)
    xs, ys = x.d, digits.train.labels[:4]
    u = {k: rng.standard_normal(v.shape) for k, v in trainable.items()}
    for train in (False, True):
        close(learner.per_sample_grad_dot(xs, ys, u, train=train, method="taps"),
              learner.per_sample_grad_dot(xs, ys, u, train=train, method="eps"))
        a = learner.hessian_vector_product(xs, ys, u, train=train, method="forward")
        b = learner.hessian_vector_product(xs, ys, u, train=train, method="double_backward")
        scale = max(np.abs(v).max() for v in b.values())
        for k in u:
            close(a[k], b[k], scale=scale)


# ---------------------------------------------------------------------- .nnp out (--save-nnp)
@pytest.mark.parametrize("name", ["cnn6", "mlp", "logreg", "lenet", "zoo", "graph"])
def test_saved_nnp_gives_the_models_scores(tmp_path, digits, name):
    """``save_model_nnp``: nnabla's own forward of the written file (0..255 pixel values) gives the
    model's class scores (inference mode: batch norm on running statistics); read back by ``-m``, a
    built-in model's file computes the very bits of the model."""
    import nnabla.functions as F

    from models.nnp import save_model_nnp
    if name in ("lenet", "zoo", "graph"):  # .nnp-read networks (zoo: batch norm after an affine layer)
        build = {"lenet": lenet, "zoo": zoo, "graph": graph}[name]
        model = build_model(str(save_nnp(tmp_path / f"{name}.nnp", build)), digits.image_shape, 10)
        data = load_dataset("digits", 0, n_train=40, n_val=8, n_test=8, image_size=(28, 28))
    else:
        model, data = build_model(name, digits.image_shape, 10), digits
    params = model.create_parameters(np.random.RandomState(3))
    rng = np.random.RandomState(4)
    for v in params.values():  # running statistics away from 0 and 1
        if not v.need_grad:
            v.d = rng.uniform(0.5, 1.5, v.shape)
    path = tmp_path / "out" / "model.nnp"
    save_model_nnp(path, model, params)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.nnp"]
    images = data.test.images[:8]
    x = nn.Variable.from_numpy_array(to_network_input(images, data.mean, data.std))
    logits = model.logits(x, params, False)
    probs = F.softmax(logits)
    probs.forward()
    expected = probs.d.copy()
    from nnabla.utils.nnp_graph import NnpLoader
    net = NnpLoader(str(path)).get_network("runtime", batch_size=len(images))
    net.inputs["x"].d = images.astype(np.float32)
    net.outputs["y"].forward()
    np.testing.assert_allclose(net.outputs["y"].d, expected, rtol=0, atol=1e-6)
    back = build_model(str(path), data.image_shape, 10)
    back_params = back.create_parameters(np.random.RandomState(0))
    load_file_parameters(back, back_params)
    assert list(back_params) == list(params)
    out = back.logits(x, back_params, False)
    out.forward()
    if isinstance(model, NnpModel):  # the file's own input step, as before
        np.testing.assert_allclose(out.d, logits.d, rtol=1e-6, atol=1e-6)
    else:
        assert back.undone == 2
        np.testing.assert_array_equal(out.d, logits.d)


def test_saved_colour_model_normalises_per_channel(tmp_path):
    """A colour built-in model's file: the per-channel normalisation as a fixed 1x1 convolution; nnabla's
    forward of it gives the model's scores; read back, the same scores to float rounding."""
    import nnabla.functions as F

    from common.imagenorm import norm_stats
    from models.nnp import save_model_nnp
    model = build_model("cnn6", (3, 32, 32), 10)
    params = model.create_parameters(np.random.RandomState(0))
    path = tmp_path / "colour.nnp"
    save_model_nnp(path, model, params)
    images = np.random.RandomState(1).randint(0, 256, (4, 3, 32, 32)).astype(np.uint8)
    x = nn.Variable.from_numpy_array(to_network_input(images, *norm_stats(3)))
    logits = model.logits(x, params, False)
    probs = F.softmax(logits)
    probs.forward()
    from nnabla.utils.nnp_graph import NnpLoader
    net = NnpLoader(str(path)).get_network("runtime", batch_size=4)
    net.inputs["x"].d = images.astype(np.float32)
    net.outputs["y"].forward()
    np.testing.assert_allclose(net.outputs["y"].d, probs.d, rtol=0, atol=1e-6)
    back = build_model(str(path), (3, 32, 32), 10)
    back_params = back.create_parameters(np.random.RandomState(0))
    load_file_parameters(back, back_params)
    assert list(back_params)[:2] == ["input_normalization/W", "input_normalization/b"]
    out = back.logits(x, back_params, False)
    out.forward()
    np.testing.assert_allclose(out.d, logits.d, rtol=1e-5, atol=1e-5)


def test_cnn6_round_trip_through_an_nnp_is_byte_identical(tmp_path):
    """cnn6 with its trial-0 initial parameters written as an .nnp and run with ``-m FILE --nnp-weights``
    gives ``-m cnn6``'s influence and score CSVs byte for byte (the file's MulScalar/AddScalar that
    undo the pixel step are skipped, not computed: computed, the float rounding of the round trip
    through 0..255 pixels changes the influences in their second digit after two epochs)."""
    import eval_sgd_influence as driver
    from cleansing.cli import run_main
    from models.nnp import save_model_nnp
    data = load_dataset("digits", 0, n_train=32, n_val=16, n_test=16)
    model = build_model("cnn6", data.image_shape, data.num_classes)
    path = tmp_path / "cnn6.nnp"
    save_model_nnp(path, model, model.create_parameters(np.random.RandomState(0)))
    common = ["-ds", "digits", "-e", "2", "-bs", "16", "-r", "0", "10", "--n-train", "32", "--n-val", "16",
              "--n-test", "16", "-j", "1", "--no-progress", "--gallery", "0", "--methods", "Hara", "Ours", "Random"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_main(driver.main, ["-m", "cnn6", "-o", str(a), *common]) == 0
    assert run_main(driver.main, ["-m", str(path), "--nnp-weights", "-o", str(b), *common]) == 0
    files = sorted(f.relative_to(a) for d in ("influence", "score") for f in (a / d).rglob("*.csv"))
    assert len(files) == 3 + 2 * 3 + 1
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    # without --nnp-weights too: the file's shapes, in the file's order, draw cnn6's own initial values
    back = build_model(str(path), data.image_shape, data.num_classes)
    for seed in (0, 1, 2):
        mine, theirs = (m.create_parameters(np.random.RandomState(seed)) for m in (model, back))
        assert list(mine) == list(theirs)
        for k, v in mine.items():
            np.testing.assert_array_equal(v.d, theirs[k].d)


def test_save_nnp_writes_the_trained_and_retrained_models(tmp_path):
    """``--save-nnp``: ``final.nnp`` and each retrained model of ``-r N>0``, which, read back, give the
    scores the run wrote; not a manifest entry: added to a finished run it only writes the files."""
    import json

    import eval_sgd_influence as driver
    from cleansing.cli import run_main
    from cleansing.retrain import read_score_csv
    from cleansing.train import evaluate_splits
    out = tmp_path / "out"
    argv = ["-m", "mlp", "-ds", "digits", "-e", "2", "-bs", "16", "-r", "0", "5", "--n-train", "32", "--n-val", "16",
            "--n-test", "16", "-j", "1", "--no-progress", "--gallery", "0", "--methods", "Random", "-o", str(out)]
    assert run_main(driver.main, argv) == 0
    manifest = (out / "manifest.json").read_bytes()
    score = out / "score" / "Random" / "score_delete_worst_5_seed_0.csv"
    before = score.read_bytes()
    assert not list(out.rglob("*.nnp"))
    assert run_main(driver.main, argv + ["--save-nnp"]) == 0
    assert (out / "manifest.json").read_bytes() == manifest and "save_nnp" not in json.loads(manifest)
    assert score.read_bytes() == before
    final = out / "weights" / "seed_00" / "final.nnp"
    retrained = out / "score" / "Random" / "model_delete_worst_5_seed_0.nnp"
    assert sorted(out.rglob("*.nnp")) == sorted([final, retrained])
    data = load_dataset("digits", 0, n_train=32, n_val=16, n_test=16)
    for path, csv in ((final, out / "score" / "No_Removal" / "score_delete_worst_0_seed_0.csv"), (retrained, score)):
        model = build_model(str(path), data.image_shape, data.num_classes)
        params = model.create_parameters(np.random.RandomState(0))
        load_file_parameters(model, params)
        row = evaluate_splits(Learner(model, params), data)
        expected = read_score_csv(csv).iloc[0]
        for k, v in row.items():
            assert v == expected[k], (path.name, k)
    # the same command with the switch from the start: the same files
    out2 = tmp_path / "out2"
    assert run_main(driver.main, argv[:-1] + [str(out2), "--save-nnp"]) == 0
    for f in (final, retrained):
        assert (out2 / f.relative_to(out)).is_file()
    assert (out2 / score.relative_to(out)).read_bytes() == before
    # an owned kind: --overwrite after a changed test set removes the retrained model with its scores
    assert run_main(driver.main, argv[:-1] + [str(out2), "--n-test", "8", "--overwrite"]) == 0
    assert (out2 / final.relative_to(out)).is_file() and not (out2 / retrained.relative_to(out)).exists()


def test_a_failed_nnp_write_leaves_nothing(tmp_path, monkeypatch):
    """``save_model_nnp`` writes under a temporary name in the same folder: a writer failing halfway
    leaves neither the file nor the temporary."""
    import nnabla.utils.save as nnabla_save

    from models.nnp import save_model_nnp

    def broken(path, contents, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"PK half")
        raise OSError("disk gone")
    monkeypatch.setattr(nnabla_save, "save", broken)
    model = build_model("logreg", (1, 32, 32), 10)
    with pytest.raises(OSError, match="disk gone"):
        save_model_nnp(tmp_path / "m.nnp", model, model.create_parameters(np.random.RandomState(0)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("build", [lenet, strided])
def test_ekfac_correction_equals_the_exact_gauss_newton_blocks_diagonal(tmp_path, digits, build):
    """EK-FAC on .nnp layers (5x5 unpadded, strided, padded and dilated convolutions, affine): with the
    exact label expectation, each block's eigenvalue correction is the diagonal of the exact
    Gauss-Newton (true Fisher) block of that layer in the block's Kronecker eigenbasis,
    ``sum_n sum_y p_ny (Q_S' M_ny Q_A)^2``, built here from nnabla's own gradient of every sample for
    every label (batch of one), not from the layer taps."""
    from influence_functions.ekfac import Ekfac, EkfacOptions
    from models.per_sample import TapGraph
    path = save_nnp(tmp_path / "net.nnp", build)
    model = build_model(str(path), digits.image_shape, 10)
    learner = Learner(model, model.create_parameters(np.random.RandomState(0)))
    for k in learner.stat_names:  # batch norm's running statistics, not the defaults, with live units after it
        rs = np.random.RandomState(1).random_sample(learner.params[k].shape)
        learner.params[k].d = 0.2 * (rs - 0.8) if k.endswith("/mean") else 0.5 + rs
    data = load_dataset("digits", 0, n_train=12, n_val=4, n_test=4)
    ek = Ekfac(learner, data, EkfacOptions("exact"))
    x = to_network_input(data.train.images, data.mean, data.std)
    p = TapGraph(learner, len(x)).forward(x)
    grads = [[learner.mean_loss_grad([(x[i:i + 1], np.array([[c]]))], train=False) for c in range(10)]
             for i in range(len(x))]
    blocks = [b for b in ek.blocks if b.kind != "bn"]
    assert len(blocks) == 4
    for b in blocks:
        QS, QA = b.QS.astype(np.float64), b.QA.astype(np.float64)
        ref = sum(p[i, c] * np.square(QS.T @ b.to_matrix(grads[i][c]) @ QA)
                  for i in range(len(x)) for c in range(10))
        assert np.allclose(b.lam, ref, rtol=1e-3, atol=1e-6 * ref.max()), b.prefix
    assert all(float(np.max(b.lam)) > 0 for b in blocks)  # every layer's gradient is alive
    # the check tells labels apart: the true labels' (empirical) correction is another matrix
    empirical = {b.prefix: b for b in Ekfac(learner, data, EkfacOptions("empirical")).blocks}
    assert not any(np.allclose(empirical[b.prefix].lam, b.lam, rtol=1e-2) for b in blocks)


def test_files_the_data_cannot_fill_are_one_line_and_write_nothing(tmp_path, capsys):
    """A network with another number of classes than the data, a file with neither an optimizer nor an
    executor, and parameters holding NaN (with --nnp-weights): exit 2, one line naming the file, nothing written."""
    import nnabla.utils.save as nsave

    import eval_sgd_influence as driver
    from cleansing.cli import run_main

    def five(x):
        return PF.affine(F.mul_scalar(x, 1.0 / 255.0), 5, name="f5")
    cases = {"five.nnp": (save_nnp(tmp_path / "five.nnp", five), [], "the network has 5 class scores")}
    with nn.parameter_scope("", OrderedDict()):
        x = nn.Variable((2, 1, 28, 28))
        y = F.softmax(lenet(x))
        nsave.save(str(tmp_path / "bare.nnp"), {"networks": [{"name": "runtime", "batch_size": 2, "outputs": {"y": y},
                                                             "names": {"x": x}}]})
    cases["bare.nnp"] = (tmp_path / "bare.nnp", [], "neither an optimizer nor an executor")
    nan = save_nnp(tmp_path / "nan.nnp", lenet)
    with zipfile.ZipFile(nan) as z:
        members = {n: z.read(n) for n in z.namelist()}
    import h5py
    buf = io.BytesIO(members["parameter.h5"])
    with h5py.File(buf, "r+") as h:
        name = next(k for k in _h5_datasets(h) if k.endswith("conv1/conv/W"))
        h[name][0, 0, 0, 0] = np.nan
    members["parameter.h5"] = buf.getvalue()
    with zipfile.ZipFile(nan, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    cases["nan.nnp"] = (nan, ["--nnp-weights"], "holds NaN or infinite values")
    for label, (path, flags, fragment) in cases.items():
        out = tmp_path / f"out_{label}"
        capsys.readouterr()
        argv = ["-ds", "digits", "-m", str(path), "-e", "1", "-o", str(out), "--methods", "Random", "--no-progress",
                "-j", "1", *flags]
        assert run_main(driver.main, argv) == 2, label
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (label, err)
        assert fragment in err[0] and str(path) in err[0], (label, err)
        assert not out.exists(), label


def _h5_datasets(h) -> list:
    names: list = []
    h.visit(lambda n: names.append(n) if hasattr(h[n], "shape") else None)
    return names
