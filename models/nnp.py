"""A Neural Network Console model (``.nnp``) as a graph of this project's layer kinds (issue 34).

``read_nnp(path)`` reads the file with nnabla's own file loaders (``nnabla.utils.get_file_handle``:
``network.nntxt`` or ``.protobuf`` and the parameters ``.h5``/``.protobuf``) and describes the
network of the file's first optimizer (else of its first executor) as layers and their wiring, from
the image input up to the class scores: the variable that enters the first loss or softmax function
(``TERMINAL``), or the network's last output. The project adds its own cross-entropy.

Supported functions (``models.layers.BY_FUNCTION``, each read by its kind's ``from_nnp``):
Convolution (any kernel, stride, pad, dilation, group), Affine, BatchNormalization (axes [1],
decay 0.9, eps 1e-5 as NNC's defaults), ReLU, LeakyReLU, ELU, Tanh, Sigmoid, Swish, MaxPooling,
AveragePooling, GlobalAveragePooling, Dropout (the identity, in training too: the estimators replay
training steps exactly, and a random mask per step would have to be recorded), Reshape, MulScalar,
AddScalar, Identity, and for graphs (residual connections, branches) Add2 and Concatenate. Anything
else, or a second data input, is a one-line
``UserError`` naming the function and the file.

Input: the file says what its network expects, read as nnabla's own ``forward`` command reads it:
images divided by 255 (0..1) unless an executor or dataset of the file sets
``no_image_normalization`` (then 0..255 pixel values; a network may scale them itself,
``MulScalar`` 1/255, NNC's "Image Normalization" unchecked). The data are loaded at the file's
height and width (``nnp_image_size``; ``datasets.loader.load_dataset(image_size=)`` resizes from the
images' own size, so MNIST keeps its 28x28 instead of the built-in models' 32x32). The project's data
path gives every model the images normalised by ``common.imagenorm.norm_stats``
(``to_network_input``); ``NnpModel`` undoes that normalisation as its first, parameter-free step
(``pixels = (x * std + mean) * 255``, times 1/255 where the file wants normalised images); images of
another size (a model built by hand on other data) are centre-cropped or zero-padded to the file's.
Channels must match the file's.

Where the file's first functions are MulScalar/AddScalar that exactly undo that step (to 1e-6; the
files ``save_model_nnp`` writes for the built-in grey models), the pair and the step are both
skipped, so that such a file computes the built-in model's very bits (``-m cnn6.nnp --nnp-weights``
gives ``-m cnn6``'s CSVs byte for byte; computed, their float rounding would not).

Output: ``save_model_nnp`` writes a built-in or .nnp-read model and its parameters as an ``.nnp``
with a runtime executor (``--save-nnp``), for NNC and nnabla's ``NnpLoader``.

Parameters: re-created per trial seed from the file's shapes with the initialisers nnabla's
parametric functions use by default (Glorot-uniform weights, zero biases, batch norm beta 0, gamma
1, mean 0, var 1), in the file's order; ``load_file_parameters`` copies the file's own values.
The model is rebuilt from the path alone (``build_model(path, ...)``) in any process.
"""
from __future__ import annotations

import os
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import nnabla as nn
import nnabla.functions as F
import numpy as np

from common.errors import UserError

from .layers import BY_FUNCTION, Affine, BatchNorm, Elementwise, Layer, Merge, Pass, Pooling, Tap, masked
from .layers.base import dims
from .layers.batch_norm import BN_DECAY
from .networks import MODEL_FILES, Model

#: functions that end the class scores: losses and (log-)softmax; the project adds its own loss
TERMINAL = frozenset({"Softmax", "LogSoftmax", "SoftmaxCrossEntropy", "CategoricalCrossEntropy",
                      "SigmoidCrossEntropy", "BinaryCrossEntropy", "SquaredError", "AbsoluteError",
                      "HuberLoss", "EpsilonInsensitiveLoss", "KLMultinomial", "Mean", "Sum", "TopNError",
                      "BinaryError", "Sink"})


def is_nnp_path(name: object) -> bool:
    """Whether a model name is the path of an ``.nnp`` file (by its suffix)."""
    return isinstance(name, (str, os.PathLike)) and str(name).lower().endswith(".nnp")


# ---------------------------------------------------------------------- reading the file
@dataclass(frozen=True)
class NnpSpec:
    """What ``read_nnp`` found: the network's name, its image input (C, H, W) and variable name, its
    number of classes, its layers (in an order where each one's inputs come first) and their wiring,
    the pixel scale it expects (1: 0..255 values; 1/255: 0..1) and
    the file's parameter values."""

    path: str
    network: str
    input_name: str
    input_shape: Tuple[int, ...]
    scores_name: str
    num_classes: int
    layers: Tuple[Layer, ...]
    #: per layer: the variables it takes (one; several for Add2, Concatenate) and the one it gives
    wiring: Tuple[Tuple[Tuple[str, ...], str], ...]
    pixel_scale: float
    parameters: Mapping[str, np.ndarray] = field(repr=False, compare=False, hash=False)
    #: number of dimensions of every variable of the network (batch included)
    ranks: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False, hash=False)
    #: turn-over dropout's mask point: the variable that enters the last Affine layer, and its
    #: channels (or units); None where the network has no Affine layer
    mask_point: Optional[Tuple[str, int]] = None


def _load_proto(path: str):
    """The file's protobuf and parameters, read by nnabla's own file loaders into a local scope."""
    from nnabla.utils import nnabla_pb2
    from nnabla.utils.get_file_handle import get_initial_file_loader, load_files
    ctx = SimpleNamespace(proto=nnabla_pb2.NNablaProtoBuf(), parameter_scope=OrderedDict(), parameter_only=False,
                          exclude_parameter=False, needs_proto=False)
    load_files(ctx, get_initial_file_loader(), [path], ".nnp")
    with nn.parameter_scope("", ctx.parameter_scope):
        stored = nn.get_parameters(grad_only=False)
    params = OrderedDict((k, np.array(v.d, dtype=np.float32)) for k, v in stored.items())
    return ctx.proto, params


def check_nnp_file(path: str) -> None:
    """One-line ``UserError`` unless ``path`` is an existing ``.nnp`` archive with a network."""
    if not os.path.isfile(path):
        raise UserError(f"model file {path} does not exist")
    if not is_nnp_path(path) or not zipfile.is_zipfile(path):
        raise UserError(f"model file {path} is not an .nnp file (a zip archive from Neural Network Console or "
                        f"nnabla.utils.save)")
    with zipfile.ZipFile(path) as z:
        if not any(n.endswith((".nntxt", ".prototxt", ".protobuf")) for n in z.namelist()):
            raise UserError(f"model file {path} is not an .nnp file: it holds no network (.nntxt or .protobuf)")


def read_nnp(path: str) -> NnpSpec:
    """Describe the network of the ``.nnp`` file ``path`` (see the module doc); ``UserError`` for a
    file or a function the project cannot take."""
    check_nnp_file(path)
    where = str(path)
    try:
        proto, params = _load_proto(path)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{where}: nnabla cannot read this .nnp file ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
    if proto.optimizer:
        net_name, data = proto.optimizer[0].network_name, [d.variable_name for d in proto.optimizer[0].data_variable]
    elif proto.executor:
        net_name, data = proto.executor[0].network_name, [d.variable_name for d in proto.executor[0].data_variable]
    else:
        raise UserError(f"{where}: the file has neither an optimizer nor an executor naming its network")
    nets = {n.name: n for n in proto.network}
    if net_name not in nets:
        raise UserError(f"{where}: network {net_name!r} is not in the file")
    net = nets[net_name]
    shapes = {v.name: dims(v.shape) for v in net.variable}
    kinds = {v.name: v.type for v in net.variable}
    consumers: Dict[str, List] = {}
    for f in net.function:
        for name in f.input:
            consumers.setdefault(name, []).append(f)
    if not data:  # no data variables named: the network's inputs (buffers no function produces)
        produced = {o for f in net.function for o in f.output}
        data = [v.name for v in net.variable if v.type == "Buffer" and v.name not in produced]
    images = [d for d in data if any(f.type not in TERMINAL for f in consumers.get(d, []))]
    if len(images) != 1:
        raise UserError(f"{where}: network {net_name!r} needs one image input, found {images or data}")
    image = images[0]
    input_shape = tuple(shapes[image][1:])
    reached, order = {image}, []
    for f in net.function:  # nnabla writes functions in topological order
        if f.type not in TERMINAL and any(n in reached for n in f.input):
            reached.update(f.output)
            order.append(f)
    # the class scores: what the first loss or softmax function takes, else the one output left unused
    fed = [f.input[0] for f in net.function if f.type in TERMINAL and f.input and f.input[0] in reached]
    ends = [o for f in order for o in f.output if not consumers.get(o)]
    if not fed and len(ends) != 1:
        raise UserError(f"{where}: network {net_name!r} has no loss or softmax function and {len(ends)} outputs; "
                        f"cannot tell its class scores")
    scores_name = fed[0] if fed else ends[0]
    producer = {o: f for f in order for o in f.output}
    needed, todo = set(), [scores_name]
    while todo:
        f = producer.get(todo.pop())
        if f is not None and f.name not in needed:
            needed.add(f.name)
            todo.extend(f.input)
    layers: List[Layer] = []
    wiring: List[Tuple[Tuple[str, ...], str]] = []
    for f in (f for f in order if f.name in needed):
        inputs = list(f.input)
        data_in = tuple(n for n in inputs if kinds.get(n) != "Parameter")
        if f.type not in BY_FUNCTION:
            raise UserError(f"{where}: function {f.type} ({f.name}) is not supported; supported: "
                            f"{', '.join(sorted(BY_FUNCTION))}")
        foreign = [n for n in data_in if n != image and n not in producer]
        if foreign:
            raise UserError(f"{where}: function {f.type} ({f.name}) takes {foreign[0]}, which is neither the image "
                            f"input nor computed from it; networks with a second input are not supported")
        layer = BY_FUNCTION[f.type].from_nnp(f, inputs, shapes, where)
        if not isinstance(layer, Merge) and data_in != (inputs[0],):
            raise UserError(f"{where}: function {f.type} ({f.name}) with a second data input is not supported")
        layers.append(layer)
        wiring.append((data_in, f.output[0]))
    scores = shapes[scores_name]
    if len(scores) != 2:
        raise UserError(f"{where}: the class scores {scores_name} have shape {scores}; they must be (batch, classes)")
    raw = any(e.no_image_normalization for e in proto.executor) or any(d.no_image_normalization
                                                                        for d in proto.dataset)
    affine_inputs = [ins[0] for layer, (ins, _) in zip(layers, wiring) if isinstance(layer, Affine)]
    point = (affine_inputs[-1], int(shapes[affine_inputs[-1]][1])) if affine_inputs else None
    return NnpSpec(os.path.abspath(path), net_name, image, input_shape, scores_name, int(scores[1]), tuple(layers),
                   tuple(wiring), 1.0 if raw else 1.0 / 255.0, params, {k: len(v) for k, v in shapes.items()}, point)


def nnp_mask_points(path: str) -> Tuple[str, ...]:
    """Turn-over dropout's mask points of the .nnp network at ``path``: the input of its last Affine
    layer (named by the file's variable), or none."""
    point = nnp_spec(str(path)).mask_point
    return (point[0],) if point else ()


def nnp_image_size(model: str) -> Optional[Tuple[int, int]]:
    """(h, w) the data must have for ``model``: an .nnp file's input size; None for other models."""
    from .networks import MODELS
    if model in MODELS or not is_nnp_path(model):
        return None
    h, w = nnp_spec(str(model)).input_shape[1:]
    return int(h), int(w)


_SPECS: Dict[Tuple[str, int, int], NnpSpec] = {}


def nnp_spec(path: str) -> NnpSpec:
    """``read_nnp(path)``, cached per process by the file's path, size and modification time."""
    check_nnp_file(path)
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _SPECS:
        _SPECS[key] = read_nnp(path)
    return _SPECS[key]


# ---------------------------------------------------------------------- the model
class NnpModel(Model):
    """The network of an ``.nnp`` file on this project's data (``input_shape``: the data's (C, H, W)).

    Its layers carry forward-mode rules (``jvp``, walked by ``walk_tangent``), so ``Learner`` takes
    the fast paths (forward-mode Hessian-vector products, per-sample products from layer taps, the
    fused pulled-back step) where ``forward_mode`` holds; otherwise (batch norm after an affine
    layer, overlapping max pooling) the generic ones: double backward and the tangent copy of the
    linear layers ('eps'). Its linear layers and batch norms are EK-FAC's and TracIn's layer taps
    (``models.per_sample``: 2-D convolutions of one group, layers with a bias). Turn-over dropout's
    one mask point is the input of the last Affine layer (``NnpSpec.mask_point``; per channel of a
    feature map, as cnn6's ``block3``, or per unit); the network is a graph, not a layer chain
    (``chain`` False), so turn-over dropout runs it whole instead of split at the point.
    """

    has_tangent = True
    chain = False

    def __init__(self, path: str, input_shape: Sequence[int], num_classes: int):
        super().__init__(input_shape, num_classes)
        self.spec = nnp_spec(str(path))
        self.name = os.path.basename(self.spec.path)
        self.layers = self.spec.layers
        where = self.spec.path
        if self.spec.num_classes != self.num_classes:
            raise UserError(f"{where}: the network has {self.spec.num_classes} class scores, the data "
                            f"{self.num_classes} classes")
        if self.spec.input_shape[0] != self.input_shape[0] or len(self.spec.input_shape) != 3:
            raise UserError(f"{where}: the network takes images of shape {self.spec.input_shape}, the data has "
                            f"{self.input_shape}")
        self.undone = self._undone_input_steps()
        point = self.spec.mask_point
        self.mask_points = (point[0],) if point else ()
        self._mask_shapes = {point[0]: point[1]} if point else {}

    def mask_shapes(self) -> Dict[str, int]:
        """Channels (or units) of the mask point."""
        return dict(self._mask_shapes)

    def split(self, point: str):
        raise ValueError(f"{self.spec.path}: an .nnp network is not split at its mask point (chain is False)")

    def _undone_input_steps(self) -> int:
        """How many of the file's first layers exactly undo ``pixels``: a chain of MulScalar/AddScalar
        from the image input (each output used only by the next) whose composition with the
        pixel step is the identity on the project's normalised images (to 1e-6; what ``save_model_nnp``
        writes for a built-in model). ``walk`` then feeds the images to the layer after the chain,
        so that the file's network computes the built-in model's bits; 0 for any other file."""
        from common.imagenorm import norm_stats
        c = self.input_shape[0]
        if self.spec.input_shape[1:] != self.input_shape[1:]:
            return 0
        mean, std = norm_stats(c)
        k = 255.0 * self.spec.pixel_scale
        scale = np.asarray(std, np.float64) * k
        offset = np.asarray(mean, np.float64) * k
        uses: Dict[str, int] = {}
        for ins, _ in self.spec.wiring:
            for n in ins:
                uses[n] = uses.get(n, 0) + 1
        name, count = self.spec.input_name, 0
        for layer, (ins, out) in zip(self.layers, self.spec.wiring):
            if ins != (name,) or uses.get(name, 0) != 1 or not isinstance(layer, Elementwise) \
                    or layer.fn not in ("MulScalar", "AddScalar"):
                break
            if layer.fn == "MulScalar":
                scale, offset = scale * layer.alpha, offset * layer.alpha
            else:
                offset = offset + layer.alpha
            name, count = out, count + 1
            if np.all(np.abs(scale - 1.0) < 1e-6) and np.all(np.abs(offset) < 1e-6):
                return count
        return 0

    @property
    def forward_mode(self) -> bool:
        """Whether the layers' forward-mode rules cover the network (``models.autodiff._Jvp``): not
        with batch norm after an affine layer, nor max pooling with overlapping windows."""
        return all(not (isinstance(layer, BatchNorm) and self.spec.ranks[ins[0]] != 4)
                   and not (isinstance(layer, Pooling) and not layer.disjoint)
                   for layer, (ins, _) in zip(self.layers, self.spec.wiring))

    def walk_tangent(self, x: nn.Variable, j) -> Tuple[nn.Variable, Optional[nn.Variable]]:
        """``_Jvp.forward`` (``j``) on the file's graph: each layer's ``jvp(j, h, dh) -> (out, d out)``
        (a merge layer's on the lists of its inputs); the image has no tangent."""
        env = {self.spec.input_name: (x if self.undone else self.pixels(x), None)}
        for i, (layer, (ins, out)) in enumerate(zip(self.layers, self.spec.wiring)):
            pairs = [env[n] for n in ins]
            if i < self.undone:
                env[out] = pairs[0]
                continue
            if isinstance(layer, Merge):
                env[out] = layer.jvp(j, [h for h, _ in pairs], [d for _, d in pairs])
            else:
                env[out] = layer.jvp(j, *pairs[0])
        return env[self.spec.scores_name]

    def pixels(self, x: nn.Variable) -> nn.Variable:
        """The file's input from the project's normalised images: pixel values (0..255, or 0..1 where
        the file wants normalised images), centre-cropped or zero-padded to the file's size."""
        from common.imagenorm import norm_stats
        c = x.shape[1]
        mean, std = norm_stats(c)
        k = 255.0 * self.spec.pixel_scale
        if c == 1:
            h = F.add_scalar(F.mul_scalar(x, float(std[0]) * k), float(mean[0]) * k)
        else:
            s = nn.Variable.from_numpy_array(np.asarray(std, np.float32).reshape(1, c, 1, 1) * np.float32(k))
            m = nn.Variable.from_numpy_array(np.asarray(mean, np.float32).reshape(1, c, 1, 1) * np.float32(k))
            h = x * s + m
        (H, W), (fh, fw) = x.shape[2:], self.spec.input_shape[1:]
        if H > fh or W > fw:
            top, left = max(H - fh, 0) // 2, max(W - fw, 0) // 2
            h = F.slice(h, (0, 0, top, left), (x.shape[0], c, top + min(H, fh), left + min(W, fw)))
        if H < fh or W < fw:
            dh, dw = max(fh - H, 0), max(fw - W, 0)
            h = F.pad(h, (dh // 2, dh - dh // 2, dw // 2, dw - dw // 2))
        return h

    def walk(self, x: nn.Variable, step: Callable[[Layer, nn.Variable], nn.Variable],
             file_input: bool = False, masks: Optional[Mapping[str, nn.Variable]] = None) -> nn.Variable:
        """The class scores of the file's graph on ``x``: ``step(layer, h)`` for each one-input layer in
        order, merge layers on their inputs (``file_input``: ``x`` is already the file's input, its
        pixel values, and every layer runs: ``save_model_nnp``); ``masks`` (B, channels) multiply the
        variables they name (turn-over dropout)."""
        undone = 0 if file_input else self.undone
        env = {self.spec.input_name: x if file_input or undone else self.pixels(x)}
        if masks:
            env[self.spec.input_name] = masked(env[self.spec.input_name], masks, self.spec.input_name)
        for i, (layer, (ins, out)) in enumerate(zip(self.layers, self.spec.wiring)):
            hs = [env[n] for n in ins]
            if i < undone:
                env[out] = hs[0]
            else:
                env[out] = layer.merge(hs) if isinstance(layer, Merge) else step(layer, hs[0])
            if masks:
                env[out] = masked(env[out], masks, out)
        return env[self.spec.scores_name]

    def _create(self, x, rng) -> None:
        h = self.walk(x, lambda layer, h: layer.create(h, rng, self.num_classes))
        if tuple(h.shape[1:]) != (self.num_classes,):
            raise UserError(f"{self.spec.path}: the network gives scores of shape {tuple(h.shape)}")

    def logits(self, x, params, train, tangent=None, stats=None, masks=None, row_weights=None, taps=None):
        unknown = [k for k in masks or () if k not in self._mask_shapes]  # turn-over dropout's masks
        if unknown:
            raise UserError(f"{self.spec.path}: {unknown[0]} is not a turn-over dropout mask point of the network "
                            f"(it has {', '.join(self.mask_points) or 'none'})")
        p = Pass(params, train, tangent, params if stats is None else stats, None, row_weights)

        def step(layer, h):
            out = layer.forward(h, p)
            if taps is not None and layer.tap:
                taps.append(Tap(layer, h, out))
            return out
        return self.walk(x, step, masks=masks)

    def batch_statistics(self, x: nn.Variable, params: Mapping[str, nn.Variable], stats: Mapping[str, nn.Variable],
                         weights: nn.Variable) -> List[Tuple[str, str, nn.Variable, nn.Variable]]:
        """``BatchNorm.batch_statistics`` of each batch norm in a training-mode pass: what the training
        step moves the running statistics toward (``Learner.running_stats_products``)."""
        p = Pass(params, True, None, stats, None, weights)
        out = []

        def step(layer, h):
            if isinstance(layer, BatchNorm):
                out.append(layer.batch_statistics(h, weights, stats))
            return layer.forward(h, p)
        self.walk(x, step)
        return out

    def file_parameters(self) -> Dict[str, np.ndarray]:
        """The parameter values stored in the file (those the network uses), by name."""
        return dict(self.spec.parameters)


MODEL_FILES[".nnp"] = NnpModel


def load_file_parameters(model: NnpModel, params: Mapping[str, nn.Variable]) -> None:
    """Overwrite ``params`` (``model.create_parameters``'s) with the values stored in the file."""
    stored = model.spec.parameters
    for k, v in params.items():
        if k not in stored:
            raise UserError(f"{model.spec.path}: the file holds no values for parameter {k}")
        if tuple(stored[k].shape) != tuple(v.shape):
            raise UserError(f"{model.spec.path}: parameter {k} has shape {stored[k].shape} in the file, "
                            f"{tuple(v.shape)} in the network")
        if not np.all(np.isfinite(stored[k])):
            raise UserError(f"{model.spec.path}: parameter {k} holds NaN or infinite values; a training cannot start "
                            f"from them (leave out --nnp-weights to start from fresh parameters)")
        v.d = stored[k]


def nnp_fingerprint(path: str, input_shape: Sequence[int], num_classes: int, weights: bool = False) -> str:
    """The identity the manifest records for the ``.nnp`` network at ``path`` on data of this shape:
    ``models.custom.model_fingerprint`` (the graph's functions with their arguments, including the
    input step, and the parameters' names, shapes and seed-0 initial values); with ``weights``
    (``--nnp-weights``) also the file's parameter values."""
    import hashlib

    from .custom import model_fingerprint
    model = NnpModel(path, input_shape, num_classes)
    fingerprint = model_fingerprint(model)
    if not weights:
        return fingerprint
    load_file_parameters(model, model.create_parameters(np.random.RandomState(0)))  # checked before any file
    h = hashlib.sha256(fingerprint.encode())
    for k, v in model.spec.parameters.items():
        h.update(k.encode())
        h.update(np.ascontiguousarray(v, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------- writing a model
def _normalise_pixels(x: nn.Variable, params: OrderedDict[str, nn.Variable]) -> nn.Variable:
    """The project's normalisation (``datasets.to_network_input``) of 0..255 pixel values, as file
    functions: grey, ``MulScalar(1 / (255 std))`` then ``AddScalar(-mean / std)`` (what
    ``NnpModel`` recognises as undoing its pixel step); colour, a 1x1 convolution per channel whose
    fixed parameters ``input_normalization/W``, ``/b`` (need_grad False) hold the scales and offsets."""
    from common.imagenorm import norm_stats
    c = x.shape[1]
    mean, std = (np.asarray(v, np.float64) for v in norm_stats(c))
    if c == 1:
        return F.add_scalar(F.mul_scalar(x, float(1.0 / (255.0 * std[0]))), float(-mean[0] / std[0]))
    W = nn.Variable.from_numpy_array((1.0 / (255.0 * std)).astype(np.float32).reshape(c, 1, 1, 1), need_grad=False)
    b = nn.Variable.from_numpy_array((-mean / std).astype(np.float32), need_grad=False)
    params["input_normalization/W"], params["input_normalization/b"] = W, b
    return F.convolution(x, W, b, group=c)


def save_model_nnp(path, model: Model, params: Mapping[str, nn.Variable]) -> None:
    """Write ``model`` with ``params`` (inference mode: batch norm on its running statistics) to the
    ``.nnp`` file ``path`` with ``nnabla.utils.save.save``, atomically: one network ``runtime`` and an
    executor of it, input ``x`` (the images' 0..255 pixel values, ``no_image_normalization``; an .nnp
    network read by this project: its own input and setting), output ``y`` (the softmax of the class
    scores). ``nnabla.utils.nnp_graph.NnpLoader`` runs it as NNC's runtime does; ``-m path`` reads it
    back (for a built-in grey model exactly: see ``NnpModel._undone_input_steps``)."""
    from nnabla.utils.save import save

    from common.fileio import atomic_path
    scope: OrderedDict[str, nn.Variable] = OrderedDict()
    for k, v in params.items():
        scope[k] = nn.Variable.from_numpy_array(np.array(v.d, dtype=np.float32), need_grad=v.need_grad)
    x = nn.Variable((1,) + tuple(model.input_shape))
    raw = True
    with nn.auto_forward(False):
        if isinstance(model, NnpModel):
            x = nn.Variable((1,) + tuple(model.spec.input_shape))
            p = Pass(scope, False, None, scope, None, None)

            def step(layer: Layer, h: nn.Variable) -> nn.Variable:
                if isinstance(layer, BatchNorm) and len(h.shape) == 2:  # on the file's own parameters
                    return F.batch_normalization(h, *(scope[k] for k in (layer.beta, layer.gamma, layer.mean,
                                                                         layer.var)),
                                                 axes=[1], decay_rate=BN_DECAY, eps=1e-5, batch_stat=False)
                if isinstance(layer, Pooling) and layer.mode == "global":  # not Mean: a loss to the reader
                    return F.global_average_pooling(h)
                return layer.forward(h, p)
            scores = model.walk(x, step, file_input=True)
            raw = model.spec.pixel_scale == 1.0
        else:
            extra: OrderedDict[str, nn.Variable] = OrderedDict()
            h = _normalise_pixels(x, extra)
            scores = model.logits(h, scope, False)
            scope.update(extra)
        y = F.softmax(scores)
    contents = {"networks": [{"name": "runtime", "batch_size": 1, "outputs": {"y": y}, "names": {"x": x}}],
                "executors": [{"name": "runtime", "network": "runtime", "data": ["x"], "output": ["y"],
                               "no_image_normalization": raw}]}
    with atomic_path(path) as tmp, nn.parameter_scope("", scope):
        save(str(tmp), contents)
