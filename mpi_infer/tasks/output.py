"""What a segmentation model's output means, and ONNX graphs exported in training mode.

Models come as people export them: one channel of probabilities (EDDL's SegNet ends in a Sigmoid), one
channel of logits, or C class channels (logits or softmax), as segmentation_models_pytorch's Unet,
DeepLabV3Plus and Unet++ exports do. ``--activation sigmoid|softmax|none`` says what to apply to the raw
output and ``--class K`` which channel is the foreground of a C-channel output (default 1 when C = 2). The
start-up probe refuses an output that is not probabilities after that, and names the option that fits.

The use case's export script runs ``torch.onnx.export`` with the model in *training* mode: BatchNormalization
then carries ``training_mode=1`` (and its running-statistics outputs) and Dropout a true ``training_mode``,
so the file would be scored with batch statistics and random dropout. ``inference_graph`` rewrites such a
graph to inference semantics (running statistics, no dropout), or refuses it with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, ModelError

ACTIVATIONS = ("none", "sigmoid", "softmax")


@dataclass(frozen=True)
class OutputSpec:
    """How to turn the model's raw output into one foreground-probability map per image."""

    activation: str = "none"
    cls: int | None = None  # foreground channel of a C-channel output (None: 1 when C = 2, else refused)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"--activation {self.activation!r}: choose from {', '.join(ACTIVATIONS)}")

    def to_dict(self) -> dict:
        return {"activation": self.activation, "class": self.cls}


def foreground(raw: np.ndarray, spec: OutputSpec, source: str = "model") -> np.ndarray:
    """[N, C, H, W] (or [N, H, W]) raw output -> [N, H, W] float32 foreground probabilities."""
    y = np.asarray(raw, dtype=np.float32)
    if y.ndim == 3:
        y = y[:, None]
    if y.ndim != 4:
        raise ModelError(f"{source}: output has shape {list(raw.shape)}; expected [N, C, H, W] or [N, H, W]")
    channels = y.shape[1]
    if spec.activation == "softmax":
        if channels < 2:
            raise ModelError(f"--activation softmax needs a C-channel output (C >= 2); {source} has 1 channel "
                              f"(use --activation sigmoid for one channel of logits)")
        y = softmax(y)
    elif spec.activation == "sigmoid":
        y = 1.0 / (1.0 + np.exp(-y))
    if channels == 1:
        if spec.cls not in (None, 0):
            raise ModelError(f"--class {spec.cls}: {source} has a single output channel (class 0)")
        return np.ascontiguousarray(y[:, 0], np.float32)
    k = foreground_channel(channels, spec, source)
    return np.ascontiguousarray(y[:, k], np.float32)


def softmax(y: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 (the classes), stable for large logits; float32 in, float32 out."""
    y = y - y.max(axis=1, keepdims=True)
    np.exp(y, out=y)
    y /= y.sum(axis=1, keepdims=True)
    return y


def foreground_channel(channels: int, spec: OutputSpec, source: str) -> int:
    if spec.cls is None:
        if channels == 2:
            return 1
        raise ModelError(f"{source} has {channels} output channels: say which is the lesion with --class K "
                          f"(0..{channels - 1})")
    if not 0 <= spec.cls < channels:
        raise ModelError(f"--class {spec.cls}: {source} has {channels} output channels (0..{channels - 1})")
    return spec.cls


def check_probabilities(probe: np.ndarray, raw_channels: int, spec: OutputSpec, source: str) -> None:
    """The start-up probe: after the activation, the output must be probabilities; else name what fits."""
    if np.all(np.isfinite(probe)) and probe.min() >= 0.0 and probe.max() <= 1.0:
        return
    if spec.activation != "none":
        hint = "the model's output is not finite after the activation"
    elif raw_channels == 1:
        hint = "it looks like logits: add --activation sigmoid"
    else:
        hint = f"it looks like {raw_channels} class logits: add --activation softmax (and --class K)"
    raise ModelError(f"{source}: output ranges {np.nanmin(probe):.3g}..{np.nanmax(probe):.3g} on probe images; "
                     f"expected probabilities in [0, 1]; {hint}")


def inference_graph(model) -> tuple[object, list[str]]:
    """The ONNX model with training-mode BatchNormalization and Dropout switched to inference semantics, and
    what was changed; a graph that uses BatchNormalization's training outputs elsewhere is refused."""
    from onnx import helper

    graph = model.graph
    consumed = {name for node in graph.node for name in node.input}
    consumed |= {o.name for o in graph.output}
    constants = constant_values(graph)
    notes: list[str] = []
    for node in graph.node:
        if node.op_type == "BatchNormalization":
            attrs = {a.name: a for a in node.attribute}
            extra = [o for o in list(node.output)[1:] if o]
            training = (("training_mode" in attrs and helper.get_attribute_value(attrs["training_mode"]) == 1)
                        or ("is_test" in attrs and helper.get_attribute_value(attrs["is_test"]) == 0))
            if not training and not extra:
                continue
            used = [o for o in extra if o in consumed]
            if used:
                raise ModelError(f"BatchNormalization '{node.name}' is exported in training mode and its "
                                 f"running statistics ({', '.join(used)}) feed other nodes: re-export the model "
                                 f"in eval mode (model.eval() before torch.onnx.export)")
            del node.output[1:]
            if "training_mode" in attrs:
                node.attribute.remove(attrs["training_mode"])
            if "is_test" in attrs:
                attrs["is_test"].i = 1
            notes.append(f"BatchNormalization '{node.name}': training mode -> running statistics")
        elif node.op_type == "Dropout":
            if len(node.output) > 1 and node.output[1] and node.output[1] in consumed:
                raise ModelError(f"Dropout '{node.name}': its mask output feeds other nodes; re-export in eval mode")
            mode = node.input[2] if len(node.input) > 2 else ""
            if mode and mode in constants and not bool(fixed_value(constants[mode])):
                continue
            if mode and mode not in constants:
                raise ModelError(f"Dropout '{node.name}': its training_mode input '{mode}' is computed in the "
                                 f"graph, so inference semantics cannot be guaranteed; re-export in eval mode")
            if not mode and not any(a.name == "is_test" and helper.get_attribute_value(a) == 0
                                    for a in node.attribute):
                continue  # opset >= 12 without training_mode: inference already
            node.op_type = "Identity"
            del node.input[1:]
            del node.output[1:]
            del node.attribute[:]
            notes.append(f"Dropout '{node.name}': training mode -> identity")
    return model, notes


def constant_values(graph) -> dict[str, object]:
    """Tensors whose value is fixed in the file, by name: initialisers, and Constant nodes' outputs (torch 2.x
    feeds Dropout's training_mode from a Constant node, older exporters from an initialiser). The values are
    TensorProtos or attribute protos, read with ``fixed_value`` only where needed (weights may be external)."""
    values: dict[str, object] = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name in ("value", "value_int", "value_float", "value_ints", "value_floats"):
                    values[node.output[0]] = attr
    return values


def fixed_value(value: object) -> np.ndarray:
    from onnx import AttributeProto, helper, numpy_helper

    if isinstance(value, AttributeProto):
        got = helper.get_attribute_value(value)
        return numpy_helper.to_array(got) if value.name == "value" else np.asarray(got)
    return numpy_helper.to_array(value)
