"""The SegNet family (deephealthproject/use-case-pipelines python/models.py) as ONNX graphs built from EDDL records.

SegNet: 13 encoder convs in blocks of (2, 2, 3, 3, 3), each block ending in a 2x2 max-pool; then 5
decoder blocks of (3, 3, 3, 2, 1) convs, each starting with a x2 nearest upsampling; then a final
conv to the class count with no ReLU, and the Sigmoid the UCP script appends. All convs are 3x3,
stride 1, "same" padding, with bias; every conv but the last is followed by ReLU. SegNetBN puts an
affine BatchNorm (running statistics) between every conv but the last and its ReLU.

Channel widths are read from the records, so narrower variants (such as the shipped demo model) load
too. The graph is written as EDDL 1.1b's own exporter writes an UpSampling2D, so that it also goes back
into EDDL (``import_net_from_onnx_file``): symbolic batch; the x2 nearest upsampling as Resize with a
*named* ``roi`` initializer (EDDL's importer drops empty input names and then reads the scales from input 2,
so the usual ``Resize(X, "", scales)`` does not import) and ``coordinate_transformation_mode="asymmetric"``
(nearest, floor): a pure repeat in ONNX Runtime and in EDDL alike. EDDL imports every Resize as its scale
layer, whose ``half_pixel`` nearest is off by one pixel (measured: a row 0..3 becomes [0, 0, 0, 1, 1, 2, 2, 3]),
so a half_pixel graph would not score the same in EDDL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ConfigError, ModelError

ENCODER_BLOCKS = (2, 2, 3, 3, 3)
DECODER_BLOCKS = (3, 3, 3, 2, 1)
N_CONVS = sum(ENCODER_BLOCKS) + sum(DECODER_BLOCKS) + 1  # 26
FULL_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512,
               512, 512, 512, 512, 512, 256, 256, 256, 128, 128, 64, 64)
ARCHS = ("segnet", "segnet-bn")
BN_EPSILON = 1e-5  # EDDL BatchNormalization's default epsilon
OPSET = 13


@dataclass
class ConvLayer:
    """One 3x3 conv (weight [out, in, 3, 3], bias [out]) and, for SegNetBN, its BatchNorm."""

    weight: np.ndarray
    bias: np.ndarray
    bn: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None  # gamma, beta, mean, var

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])


def records_per_conv(arch: str) -> int:
    return 6 if arch == "segnet-bn" else 2


def layers_from_records(records: list[np.ndarray], arch: str, source: str = "model") -> list[ConvLayer]:
    """Map EDDL records (in layer order) onto SegNet's convs, refusing anything that does not fit and naming
    the first record that does not."""
    if arch == "auto":
        arch = detect_arch(records, source)
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture {arch!r}; known: auto, {', '.join(ARCHS)}")
    per = records_per_conv(arch)
    expected = (N_CONVS - 1) * per + 2
    layers: list[ConvLayer] = []
    pos = 0
    in_ch: int | None = None
    for conv in range(N_CONVS):
        if pos + 2 > len(records):
            raise ModelError(f"{source}: ends after record {len(records) - 1} ({len(records)} records), but {arch} "
                             f"has {expected} ({N_CONVS} convs x {per} records"
                             f"{', last conv without BN' if per > 2 else ''}); conv {conv} is missing")
        weight, bias = records[pos], records[pos + 1]
        where = f"{source}: {arch} conv {conv} (records {pos}-{pos + 1})"
        if weight.ndim != 4 or weight.shape[2:] != (3, 3):
            raise ModelError(f"{where}: record {pos} has shape {weight.shape}, expected a weight [out, in, 3, 3]")
        if in_ch is not None and weight.shape[1] != in_ch:
            raise ModelError(f"{where}: record {pos} takes {weight.shape[1]} input channels but the previous conv "
                             f"gives {in_ch}")
        if bias.shape != (weight.shape[0],):
            raise ModelError(f"{where}: record {pos + 1} has shape {bias.shape}, expected a bias "
                             f"({weight.shape[0]},)")
        pos += 2
        bn = None
        if per == 6 and conv < N_CONVS - 1:
            bn_records = records[pos : pos + 4]
            for k, (name, r) in enumerate(zip(("gamma", "beta", "mean", "variance"), bn_records)):
                if r.shape != (weight.shape[0],):
                    raise ModelError(f"{where}: record {pos + k} (BatchNorm {name}) has shape {r.shape}, "
                                     f"expected ({weight.shape[0]},)")
            if len(bn_records) < 4:
                raise ModelError(f"{source}: ends after record {len(records) - 1}, inside conv {conv}'s BatchNorm")
            bn = tuple(bn_records)  # type: ignore[assignment]
            pos += 4
        layers.append(ConvLayer(weight, bias, bn))
        in_ch = int(weight.shape[0])
    if len(records) != expected:
        raise ModelError(f"{source}: {len(records)} records, but {arch} has {expected}: record {expected} "
                         f"(shape {records[expected].shape}) onward does not belong to it")
    return layers


def detect_arch(records: list[np.ndarray], source: str = "model") -> str:
    """``--arch auto``: the architecture whose record layout these records fit (EDDL's .bin names none):
    SegNet, SegNetBN, or the classifiers VGG16 and LeNet (models/classifiers.py).

    SegNet has two records per conv (weight, bias); SegNetBN six (plus gamma, beta, mean, variance) but for
    the last conv. The first records already tell them apart: SegNetBN's record 2 is a vector, SegNet's a
    4-D weight. Anything else is refused, naming the first record that fits neither."""
    from .classifiers import CLS_ARCHS, classifier_from_records

    fits, errors = [], []
    for arch in (*ARCHS, *CLS_ARCHS):
        try:
            if arch in ARCHS:
                layers_from_records(records, arch, source)
            else:
                classifier_from_records(records, arch, source)
            fits.append(arch)
        except ModelError as exc:
            errors.append(str(exc))
    if len(fits) == 1:
        return fits[0]
    if fits:
        raise ModelError(f"{source}: the records fit {' and '.join(fits)}; pass --arch")
    raise ModelError(f"{source}: the records fit no known architecture (--arch auto): "
                     + "; ".join(e.removeprefix(f"{source}: ") for e in errors))


def records_from_layers(layers: list[ConvLayer]) -> list[np.ndarray]:
    """Layers back to EDDL's record order: K, bias[, gamma, beta, mean, variance] per conv."""
    out: list[np.ndarray] = []
    for layer in layers:
        out += [layer.weight, layer.bias]
        if layer.bn is not None:
            out += list(layer.bn)
    return out


def segnet_widths(divisor: int = 1, num_classes: int = 1) -> list[int]:
    """Output channels of the 26 convs; ``divisor`` narrows every hidden width."""
    return [max(1, w // divisor) for w in FULL_WIDTHS] + [num_classes]


def random_layers(widths: list[int], in_channels: int = 3, bn: bool = False, seed: int = 0) -> list[ConvLayer]:
    """He-initialised layers (EDDL's build would randomise them too); for tests and benchmarks."""
    rng = np.random.default_rng(seed)
    layers = []
    cin = in_channels
    for k, cout in enumerate(widths):
        w = rng.normal(0, np.sqrt(2.0 / (cin * 9)), size=(cout, cin, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.01, size=cout).astype(np.float32)
        norm = None
        if bn and k < len(widths) - 1:
            norm = (rng.uniform(0.5, 1.5, cout).astype(np.float32), rng.normal(0, 0.1, cout).astype(np.float32),
                    rng.normal(0, 0.1, cout).astype(np.float32), rng.uniform(0.5, 2.0, cout).astype(np.float32))
        layers.append(ConvLayer(w, b, norm))
        cin = cout
    return layers


def check_input_size(height: int, width: int) -> None:
    if height % 32 or width % 32 or height < 32 or width < 32:
        raise ConfigError(f"SegNet needs an input size that is a multiple of 32 (five 2x2 pools), "
                          f"got {height}x{width}")


def build_onnx(layers: list[ConvLayer], height: int, width: int, name: str = "segnet") -> onnx.ModelProto:
    """An ONNX graph: input [batch, C, H, W] -> SegNet(-BN) -> Sigmoid -> [batch, classes, H, W]."""
    check_input_size(height, width)
    in_ch = int(layers[0].weight.shape[1])
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = [
        numpy_helper.from_array(np.array([0, 0, 0, 0, 1, 1, 1, 1], np.float32), "up_roi"),  # the whole tensor
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up_scales"),
    ]
    x = "input"
    conv = 0

    def add_conv(relu: bool) -> None:
        nonlocal x, conv
        layer = layers[conv]
        w, b = f"conv{conv}.weight", f"conv{conv}.bias"
        inits.append(numpy_helper.from_array(np.ascontiguousarray(layer.weight, np.float32), w))
        inits.append(numpy_helper.from_array(np.ascontiguousarray(layer.bias, np.float32), b))
        y = f"conv{conv}"
        nodes.append(helper.make_node("Conv", [x, w, b], [y], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                      strides=[1, 1], name=y))
        if layer.bn is not None:
            names = [f"bn{conv}.{n}" for n in ("scale", "bias", "mean", "var")]
            for n, arr in zip(names, layer.bn):
                inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), n))
            nodes.append(helper.make_node("BatchNormalization", [y, *names], [f"bn{conv}"],
                                          epsilon=BN_EPSILON, name=f"bn{conv}"))
            y = f"bn{conv}"
        if relu:
            nodes.append(helper.make_node("Relu", [y], [f"relu{conv}"], name=f"relu{conv}"))
            y = f"relu{conv}"
        x = y
        conv += 1

    for block, n in enumerate(ENCODER_BLOCKS):
        for _ in range(n):
            add_conv(relu=True)
        nodes.append(helper.make_node("MaxPool", [x], [f"pool{block}"], kernel_shape=[2, 2], strides=[2, 2],
                                      name=f"pool{block}"))
        x = f"pool{block}"
    for block, n in enumerate(DECODER_BLOCKS):
        nodes.append(helper.make_node("Resize", [x, "up_roi", "up_scales"], [f"up{block}"], mode="nearest",
                                      coordinate_transformation_mode="asymmetric", nearest_mode="floor",
                                      name=f"up{block}"))
        x = f"up{block}"
        for _ in range(n):
            add_conv(relu=True)
    add_conv(relu=False)
    nodes.append(helper.make_node("Sigmoid", [x], ["output"], name="sigmoid"))
    classes = layers[-1].out_channels
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", in_ch, height, width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", classes, height, width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="mpi_infer")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # N C H W 3 3
    return np.einsum("nchwij,ocij->nohw", win, w, optimize=True) + b[None, :, None, None]


def forward_numpy(layers: list[ConvLayer], x: np.ndarray) -> np.ndarray:
    """A plain float64 reference forward pass, independent of ONNX Runtime (for tests)."""
    x = x.astype(np.float64)
    conv = 0

    def step(relu: bool) -> None:
        nonlocal x, conv
        layer = layers[conv]
        x = _conv3x3(x, layer.weight.astype(np.float64), layer.bias.astype(np.float64))
        if layer.bn is not None:
            g, beta, mean, var = (a.astype(np.float64)[None, :, None, None] for a in layer.bn)
            x = (x - mean) / np.sqrt(var + BN_EPSILON) * g + beta
        if relu:
            x = np.maximum(x, 0)
        conv += 1

    for n in ENCODER_BLOCKS:
        for _ in range(n):
            step(True)
        nb, c, h, w = x.shape
        x = x.reshape(nb, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    for n in DECODER_BLOCKS:
        x = x.repeat(2, axis=2).repeat(2, axis=3)
        for _ in range(n):
            step(True)
    step(False)
    return 1.0 / (1.0 + np.exp(-x))
