"""A model is its layer list: a new one, written only as ``layers``, gets every derived path (parameter
creation, mask points, the forward-mode products, the turn-over dropout split, EK-FAC's layer taps)."""
import nnabla as nn
import numpy as np
import pytest

from models import MODELS, Affine, BatchNorm, Convolution, Mask, Model, build_model
from models.autodiff import Learner, vdot, vnorm
from models.layers import RELU
from models.networks import MAX_POOL_2X2
from tests.helpers import data, rand_vec


class Tiny(Model):
    """Not registered: conv + BN + ReLU + pool, a mask, a hidden affine layer, a mask, the output."""

    name = "tiny"
    layers = (Convolution.scoped("c1", 4), BatchNorm.scoped("c1"), RELU, MAX_POOL_2X2, Mask("m1"),
              Affine.scoped("fc", 6), RELU, Mask("m2"), Affine.scoped("out"))


SHAPE = (1, 8, 8)


def _learner(seed=0):
    m = Tiny(SHAPE, 5)
    return Learner(m, m.create_parameters(np.random.RandomState(seed)))


def _rel(a, b):
    return vnorm({k: a[k] - b[k] for k in b}) / vnorm(b)


def test_parameters_masks_and_split_come_from_the_layer_list():
    m = Tiny(SHAPE, 5)
    p = m.create_parameters(np.random.RandomState(0))
    assert list(p) == ["c1/conv/W", "c1/conv/b", "c1/bn/beta", "c1/bn/gamma", "c1/bn/mean", "c1/bn/var",
                       "fc/affine/W", "fc/affine/b", "out/affine/W", "out/affine/b"]
    assert p["c1/conv/W"].shape == (4, 1, 3, 3) and p["fc/affine/W"].shape == (64, 6)
    assert p["out/affine/W"].shape == (6, 5)
    assert Tiny.mask_points == ("m1", "m2") and m.mask_shapes() == {"m1": 4, "m2": 6}
    assert m.convolutional and not build_model("mlp", SHAPE, 5).convolutional
    lower, upper = m.split("m2")
    assert lower == m.layers[:7] and upper == (Mask("m2"), Affine.scoped("out"))
    with pytest.raises(ValueError, match="no mask point"):
        m.split("fc")


def test_every_registered_model_takes_the_forward_mode_paths():
    # (networks given to the Python API as a build function, models.custom, take the generic path)
    from models.autodiff import _Jvp
    from models.custom import NetworkModel
    for name, cls in MODELS.items():
        if issubclass(cls, NetworkModel):
            continue
        m = build_model(name, SHAPE, 5)
        L = Learner(m, m.create_parameters(np.random.RandomState(0)))
        assert cls.layers and _Jvp.supported(L.model) and L.hvp_method() == "forward", name


@pytest.mark.parametrize("train", [False, True])
def test_forward_mode_products_of_a_new_model_equal_the_reference_graphs(train):
    L = _learner()
    assert L.hvp_method() == "forward"
    x, y = data(6, shape=SHAPE, classes=5)
    u = rand_vec(L, unit=True)
    fwd = L.hessian_vector_product(x, y, u, train=train, method="forward")
    ref = L.hessian_vector_product(x, y, u, train=train, method="double_backward")
    assert _rel(fwd, ref) < 1e-4
    taps = L.per_sample_grad_dot(x, y, u, train=train, method="taps")
    eps = L.per_sample_grad_dot(x, y, u, train=train, method="eps")
    np.testing.assert_allclose(taps, eps, rtol=1e-4, atol=1e-6 * np.abs(eps).max())
    if train:
        assert abs(taps.sum() - 6 * vdot(u, L.mean_loss_grad([(x, y)], train=True))) <= 1e-4 * np.abs(taps).sum()
        u_stats = {k: np.random.RandomState(7).randn(*L.params[k].shape) for k in L.stat_names}
        fused = L.step_backward(x, y, 0.1, u, u_stats, fused=True)
        apart = L.step_backward(x, y, 0.1, u, u_stats, fused=False)
        np.testing.assert_allclose(fused[0], apart[0], rtol=1e-4, atol=1e-6 * np.abs(apart[0]).max())
        assert _rel(fused[1], apart[1]) < 1e-4


@pytest.mark.parametrize("layers,linear", [(("m2",), True), (("m1", "m2"), False), (("m1",), False)])
def test_turnover_dropout_split_of_a_new_model(layers, linear):
    from turnover_dropout import TDLearner
    L = _learner(1)
    td = TDLearner(L.model, L.params, layers, mask_seed=3)
    assert td.split and td.feature_shape == ((6,) if layers == ("m2",) else (4, 4, 4))
    x = np.random.RandomState(2).randn(5, *SHAPE).astype(np.float32)
    y = np.arange(5)
    masks = td.masks(np.arange(5) + 40)
    split, _ = td.head_losses(td.features(x), y, masks)
    logits = td.model.logits(nn.Variable.from_numpy_array(x), td.params, train=False,
                             masks={k: nn.Variable.from_numpy_array(v) for k, v in masks.items()})
    logits.forward()
    z = logits.d.astype(np.float64)
    ref = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1) - z[np.arange(5), y]
    np.testing.assert_allclose(split, ref, rtol=1e-5, atol=1e-6)
    assert (td.linear_head() is not None) == linear


def test_ekfac_taps_of_a_new_model():
    from influence_functions.ekfac import _Block
    from models.per_sample import TapGraph
    L = _learner(2)
    x, y = data(4, shape=SHAPE, classes=5)
    graph = TapGraph(L, len(x))
    blocks = [_Block(t, L) for t in graph.layers]
    assert [(b.kind, b.prefix) for b in blocks] == [("conv", "c1/conv"), ("bn", "c1/bn"), ("affine", "fc/affine"),
                                                    ("affine", "out/affine")]
    p = graph.forward(x)
    acts = [b.activations(h) for b, h in zip(blocks, graph.inputs())]
    outs = [b.output_grads(g) for b, g in zip(blocks, graph.backward(p - np.eye(5)[y]))]
    shapes = {k: tuple(v.shape) for k, v in L.trainable.items()}
    ref = L.mean_loss_grad([(x[:1], y[:1])], train=False)
    for b, a, g in zip(blocks, acts, outs):
        if b.kind == "bn":
            mine = {k: v[0].reshape(shapes[k]) for k, v in b.bn_grads(a, g).items()}
        else:
            mine = b.from_matrix(b.sample_gradients(a[:1], g[:1])[0].astype(np.float64), shapes)
        for k, val in mine.items():
            assert np.linalg.norm(val - ref[k]) <= 1e-4 * np.linalg.norm(ref[k]) + 1e-7, k


def test_one_vocabulary_every_kind_one_file_built_ins_and_files_alike(tmp_path):
    """Issue 34, item 2: each layer kind is one class in a file of its own under ``models/layers``, which
    carries every rule (forward, tangent, per-sample factors where it has parameters, reading from an
    .nnp file); nothing else defines a layer; a built-in model written to an .nnp file reads back as
    the same kinds with the same parameters."""
    import importlib
    from pathlib import Path

    from models.layers import BY_FUNCTION, KINDS, Layer
    from models.nnp import save_model_nnp

    layer_dir = Path(importlib.import_module("models.layers").__file__).parent
    files = {p.stem for p in layer_dir.glob("*.py")} - {"__init__", "base"}
    assert sorted(k.__module__.rsplit(".", 1)[1] for k in KINDS) == sorted(files)  # one file per kind

    def subclasses(c):
        return [c] + [s for d in c.__subclasses__() for s in subclasses(d)]
    defined = {c for c in subclasses(Layer) if c is not Layer and not c.__name__.startswith("_")}
    assert all(c.__module__.startswith("models.layers.") for c in defined), defined
    for kind in KINDS:
        for rule in ("forward", "jvp", "from_nnp") if kind is not Mask else ("forward", "jvp"):
            assert getattr(kind, rule) is not getattr(Layer, rule), (kind, rule)
        if kind.tap:
            assert all(callable(getattr(kind, r, None)) for r in
                       ("check_tap", "tap_prepare", "tap_activations", "tap_output_grads", "parameter_names"))
    assert set(BY_FUNCTION) >= {"Convolution", "Affine", "BatchNormalization", "ReLU", "LeakyReLU", "ELU", "Tanh",
                                "Sigmoid", "Swish", "MaxPooling", "AveragePooling", "GlobalAveragePooling",
                                "Dropout", "Reshape", "MulScalar", "AddScalar", "Add2", "Concatenate"}

    for name in ("cnn6", "mlp", "logreg"):
        model = build_model(name, SHAPE, 5)
        params = model.create_parameters(np.random.RandomState(0))
        path = tmp_path / f"{name}.nnp"
        save_model_nnp(path, model, params)
        read = build_model(str(path), SHAPE, 5)
        built = [layer for layer in model.layers if not isinstance(layer, Mask)]
        # the file starts with the pixel normalisation (MulScalar, AddScalar) that reading skips
        assert read.undone == 2 and [type(x) for x in read.layers[2:]] == [type(x) for x in built], name
        for mine, theirs in zip(built, read.layers[2:]):
            names = ("w", "b") if isinstance(mine, (Convolution, Affine)) else \
                ("beta", "gamma", "mean", "var") if isinstance(mine, BatchNorm) else ()
            assert [getattr(mine, n) for n in names] == [getattr(theirs, n) for n in names], (name, mine)
        assert list(read.create_parameters(np.random.RandomState(0))) == list(params), name
