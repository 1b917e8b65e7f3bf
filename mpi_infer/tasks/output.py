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


def slice_maps(raw: np.ndarray, spec: OutputSpec, slices: int, source: str = "model") -> np.ndarray:
    """A K-slice model's raw output [N, K, H, W] -> [N, K, H, W] float32 probabilities, map j for the sample's
    slice j (use-case-pipelines' MS segmentation: one output channel per input slice, each scored alone)."""
    y = np.asarray(raw, dtype=np.float32)
    if y.ndim != 4 or y.shape[1] != slices:
        raise ModelError(f"{source}: output has shape {list(raw.shape)}; a model taking {slices} consecutive slices "
                         f"per sample gives one map per slice, [N, {slices}, H, W]")
    if spec.activation == "softmax" or spec.cls is not None:
        raise ModelError(f"{source}: a model taking {slices} consecutive slices gives one map per slice, not classes: "
                         f"drop --activation softmax and --class (use --activation sigmoid for logits)")
    if spec.activation == "sigmoid":
        y = 1.0 / (1.0 + np.exp(-y))
    return np.ascontiguousarray(y, np.float32)


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


def refuse_double_activation(raw: np.ndarray, spec: OutputSpec, source: str) -> None:
    """The start-up probe, before the activation: a model whose raw output already lies in [0, 1] on the probe
    images (a sigmoid or softmax inside the exported graph, as MONAI's and many UNet exports have) must not get
    another one, which would squash every value into 0.5..0.73 (sigmoid) and mark every pixel as lesion, with
    no error. Refused (ModelError: exit 11), naming the model and the fix."""
    if spec.activation == "none":
        return
    y = np.asarray(raw, np.float32)
    if y.size == 0 or not np.all(np.isfinite(y)) or y.min() < 0.0 or y.max() > 1.0:
        return  # logits (or not finite: the later check says so)
    inside = "sums to 1 over the channels, as a softmax's does" if (
        y.ndim >= 2 and y.shape[1] > 1 and np.allclose(y.sum(axis=1), 1.0, atol=1e-3)) else "lies in [0, 1]"
    raise ModelError(f"{source}: its raw output already {inside} on the probe images ({y.min():.3g}..{y.max():.3g}): "
                     f"it is probabilities, and --activation {spec.activation} would apply a second "
                     f"{spec.activation} (silently wrong scores); drop --activation for this model (several "
                     f"models: --activation NAME={spec.activation} for the logits models only)")


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


