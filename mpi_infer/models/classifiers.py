"""The use case's classifiers (deephealthproject/use-case-pipelines python/models.py) as ONNX
graphs built from EDDL ``.bin`` records, and the same nets in pyeddl for the EDDL engine.

VGG16: 3x3 "same" convs + ReLU in blocks of (2, 2, 3, 3, 3), each block ending in a 2x2 max-pool; Reshape to a
vector; Dense + ReLU, Dense + ReLU, Dense C + Softmax. LeNet: 5x5 "same" conv + ReLU + 2x2 max-pool, twice;
Reshape; Dense + ReLU; Dense C + Softmax. Records: each conv writes K [out, in, k, k] then its bias, each Dense
W [in, out] then its bias (EDDL's layout, checked against real ``eddl.save``). Widths and the class count are
read from the records, so narrow variants load too; the first Dense's input width fixes the input size
(channels x H/2^pools x W/2^pools), which is checked against the profile's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelError

CLS_ARCHS = ("vgg16", "lenet")
LAYOUTS = {  # arch: (conv blocks, kernel, dense layers)
    "vgg16": ((2, 2, 3, 3, 3), 3, 3),
    "lenet": ((1, 1), 5, 2),
}
OPSET = 13


@dataclass
class Classifier:
    arch: str
    convs: list[tuple[np.ndarray, np.ndarray]]  # (K [out, in, k, k], bias [out])
    dense: list[tuple[np.ndarray, np.ndarray]]  # (W [in, out], bias [out])

    @property
    def classes(self) -> int:
        return int(self.dense[-1][0].shape[1])

    @property
    def pools(self) -> int:
        return len(LAYOUTS[self.arch][0])


def classifier_from_records(records: list[np.ndarray], arch: str, source: str = "model") -> Classifier:
    """Map EDDL records onto VGG16 or LeNet, naming the first record that does not fit."""
    blocks, k, n_dense = LAYOUTS[arch]
    n_convs = sum(blocks)
    expected = 2 * (n_convs + n_dense)
    convs, dense = [], []
    pos, cin = 0, 3
    for c in range(n_convs):
        if pos + 2 > len(records):
            raise ModelError(f"{source}: ends after record {len(records) - 1}, but {arch} has {expected} records "
                             f"({n_convs} convs and {n_dense} dense layers, 2 records each)")
        w, b = records[pos], records[pos + 1]
        where = f"{source}: {arch} conv {c} (records {pos}-{pos + 1})"
        if w.ndim != 4 or w.shape[1:] != (cin, k, k):
            raise ModelError(f"{where}: record {pos} has shape {w.shape}, expected [out, {cin}, {k}, {k}]")
        if b.shape != (w.shape[0],):
            raise ModelError(f"{where}: record {pos + 1} has shape {b.shape}, expected a bias ({w.shape[0]},)")
        convs.append((w, b))
        cin, pos = int(w.shape[0]), pos + 2
    width = None
    for d in range(n_dense):
        if pos + 2 > len(records):
            raise ModelError(f"{source}: ends after record {len(records) - 1}, but {arch} has {expected} records")
        w, b = records[pos], records[pos + 1]
        where = f"{source}: {arch} dense {d} (records {pos}-{pos + 1})"
        if w.ndim != 2 or (width is not None and w.shape[0] != width):
            want = f"[{width}, out]" if width is not None else "[in, out]"
            raise ModelError(f"{where}: record {pos} has shape {w.shape}, expected a Dense weight {want}")
        if d == 0 and w.shape[0] % cin:
            raise ModelError(f"{where}: record {pos} takes {w.shape[0]} inputs, not a multiple of the last conv's "
                             f"{cin} channels")
        if b.shape != (w.shape[1],):
            raise ModelError(f"{where}: record {pos + 1} has shape {b.shape}, expected a bias ({w.shape[1]},)")
        dense.append((w, b))
        width, pos = int(w.shape[1]), pos + 2
    if len(records) != expected:
        raise ModelError(f"{source}: {len(records)} records, but {arch} has {expected}: record {expected} onward "
                         f"does not belong to it")
    return Classifier(arch, convs, dense)


def check_input_size(net: Classifier, height: int, width: int, source: str = "model") -> None:
    """The first Dense's input width fixes the input size: refuse a profile that does not give it."""
    div = 2 ** net.pools
    cin = int(net.convs[-1][0].shape[0])
    want = int(net.dense[0][0].shape[0])
    got = cin * (height // div) * (width // div) if height % div == 0 and width % div == 0 else -1
    if got != want:
        raise ModelError(f"{source}: its first Dense layer takes {want} inputs ({cin} channels x "
                         f"{want // cin} positions), but a {height}x{width} input gives "
                         f"{'a size that is not a multiple of ' + str(div) if got < 0 else got}; pick the "
                         f"matching --profile or --size")


def build_classifier_onnx(net: Classifier, height: int, width: int, name: str = "classifier") -> onnx.ModelProto:
    """input [batch, 3, H, W] -> the net -> Softmax -> output [batch, C] class probabilities."""
    check_input_size(net, height, width, name)
    blocks, k, _ = LAYOUTS[net.arch]
    nodes, inits = [], []
    x, c = "input", 0
    for block, n in enumerate(blocks):
        for _ in range(n):
            w, b = net.convs[c]
            inits += [numpy_helper.from_array(np.ascontiguousarray(w, np.float32), f"conv{c}.weight"),
                      numpy_helper.from_array(np.ascontiguousarray(b, np.float32), f"conv{c}.bias")]
            p = k // 2
            nodes.append(helper.make_node("Conv", [x, f"conv{c}.weight", f"conv{c}.bias"], [f"conv{c}"],
                                          kernel_shape=[k, k], pads=[p, p, p, p], strides=[1, 1], name=f"conv{c}"))
            nodes.append(helper.make_node("Relu", [f"conv{c}"], [f"relu{c}"], name=f"relu{c}"))
            x, c = f"relu{c}", c + 1
        nodes.append(helper.make_node("MaxPool", [x], [f"pool{block}"], kernel_shape=[2, 2], strides=[2, 2],
                                      name=f"pool{block}"))
        x = f"pool{block}"
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1, name="flatten"))  # EDDL's Reshape([-1])
    x = "flat"
    for d, (w, b) in enumerate(net.dense):
        inits += [numpy_helper.from_array(np.ascontiguousarray(w, np.float32), f"dense{d}.weight"),
                  numpy_helper.from_array(np.ascontiguousarray(b, np.float32), f"dense{d}.bias")]
        nodes.append(helper.make_node("Gemm", [x, f"dense{d}.weight", f"dense{d}.bias"], [f"dense{d}"],
                                      name=f"dense{d}"))
        x = f"dense{d}"
        if d < len(net.dense) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"dense_relu{d}"], name=f"dense_relu{d}"))
            x = f"dense_relu{d}"
    nodes.append(helper.make_node("Softmax", [x], ["output"], axis=1, name="softmax"))
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, height, width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", net.classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mpi_infer")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def records_from_classifier(net: Classifier) -> list[np.ndarray]:
    return [a for pair in (*net.convs, *net.dense) for a in pair]


def random_classifier(arch: str, widths: list[int], dense: list[int], classes: int, height: int, width: int,
                      seed: int = 0) -> Classifier:
    """He-initialised weights (for tests, benchmarks and the demo's starting point)."""
    rng = np.random.default_rng(seed)
    blocks, k, n_dense = LAYOUTS[arch]
    assert len(widths) == sum(blocks) and len(dense) == n_dense - 1
    convs, cin = [], 3
    for cout in widths:
        convs.append((rng.normal(0, np.sqrt(2 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32),
                      rng.normal(0, 0.01, cout).astype(np.float32)))
        cin = cout
    fin = cin * (height // 2 ** len(blocks)) * (width // 2 ** len(blocks))
    layers = []
    for fout in [*dense, classes]:
        layers.append((rng.normal(0, np.sqrt(2 / fin), (fin, fout)).astype(np.float32),
                       rng.normal(0, 0.01, fout).astype(np.float32)))
        fin = fout
    return Classifier(arch, convs, layers)


def classifier_eddl(x, net: Classifier):
    """The same net in pyeddl (for the EDDL engine); the caller builds, then ``eddl.load``s the .bin."""
    from pyeddl import eddl

    blocks, k, _ = LAYOUTS[net.arch]
    c = 0
    for n in blocks:
        for _ in range(n):
            x = eddl.ReLu(eddl.Conv2D(x, int(net.convs[c][0].shape[0]), [k, k], [1, 1], "same"))
            c += 1
        x = eddl.MaxPool2D(x, [2, 2], [2, 2], "none")
    x = eddl.Reshape(x, [-1])
    for d, (w, _) in enumerate(net.dense):
        x = eddl.Dense(x, int(w.shape[1]))
        if d < len(net.dense) - 1:
            x = eddl.ReLu(x)
    return eddl.Softmax(x)
