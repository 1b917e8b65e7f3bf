"""Heads: what a task makes of an engine's raw output, and the start-up probe that checks it fits.

An engine (ONNX Runtime or EDDL) only runs the network; its head turns the raw output into what the task
scores. Segmentation: one foreground-probability map per image at the network's resolution, after
``--activation`` and ``--class`` (model_output.py).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..errors import ModelError
from ..model_output import OutputSpec, check_probabilities, foreground, foreground_channel, softmax
from ..profiles import Profile


def probe_batch(profile: Profile) -> np.ndarray:
    """Two inputs for the start-up probe: a blank image and a fixed random one (preprocessed as the profile
    says). A blank image alone lets small logits pass for probabilities."""
    rng = np.random.default_rng(20261129)
    images = np.stack([np.zeros((profile.height, profile.width, 3), np.uint8),
                       rng.integers(0, 256, (profile.height, profile.width, 3), dtype=np.uint8)])
    from ..loader import to_tensor

    return to_tensor(list(images), profile)


class Head(Protocol):
    def check(self, raw: np.ndarray, source: str) -> None:
        """Refuse (ModelError, naming the option that fits) a raw output this head cannot use."""
        ...

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        ...


class SegmentationHead:
    """Raw [N, C, H, W] (or [N, H, W]) output -> [N, H, W] float32 foreground probabilities."""

    def __init__(self, spec: OutputSpec, profile: Profile):
        self.spec, self.profile = spec, profile
        self.source = "model"
        self.warnings: list[str] = []

    def check(self, raw: np.ndarray, source: str) -> None:
        self.source = source
        h, w = self.profile.height, self.profile.width
        spatial = raw.shape[-2:] if raw.ndim in (3, 4) else None
        if spatial != (h, w):
            raise ModelError(f"{source} has shape {list(raw.shape)} for two images; expected [N, C, {h}, {w}] "
                             f"(segmentation at the network's input size)")
        probe = foreground(raw, self.spec, source)
        channels = raw.shape[1] if raw.ndim == 4 else 1
        check_probabilities(probe, channels, self.spec, source)
        if self.spec.activation == "sigmoid" and channels == 2:
            k = foreground_channel(2, self.spec, source)
            self.warnings.append(
                f"--activation sigmoid on {source}, which has 2 channels: a 2-class (softmax-style) output is "
                f"usually meant for --activation softmax; sigmoid scores channel {k} alone and ignores the other")

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return foreground(raw, self.spec, self.source)


class ClassificationHead:
    """Raw [N, C] (or [N, C, 1, 1]) output -> [N, C] float32 class probabilities, C = the dataset's classes."""

    def __init__(self, spec: OutputSpec, classes: list[str]):
        if spec.activation == "sigmoid":
            raise ModelError("--activation sigmoid is for one channel of segmentation logits; a classifier's "
                             "logits take --activation softmax")
        if spec.cls is not None:
            raise ModelError("--class picks a segmentation output channel; a classifier scores every class")
        self.spec, self.classes = spec, classes

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        y = np.asarray(raw, np.float32).reshape(len(raw), -1)
        if self.spec.activation == "softmax":
            y = softmax(y)
        return np.ascontiguousarray(y, np.float32)

    def check(self, raw: np.ndarray, source: str) -> None:
        flat = int(np.prod(raw.shape[1:])) if raw.ndim >= 2 else -1
        if raw.ndim not in (2, 4) or (raw.ndim == 4 and raw.shape[2:] != (1, 1)) or flat != len(self.classes):
            raise ModelError(f"{source} has shape {list(raw.shape)} for two images; the dataset has "
                             f"{len(self.classes)} classes, so expected [N, {len(self.classes)}] class scores")
        probs = self(raw)
        if not (np.all(np.isfinite(probs)) and probs.min() >= 0 and probs.max() <= 1
                and np.allclose(probs.sum(axis=1), 1, atol=1e-3)):
            hint = ("it looks like logits: add --activation softmax" if self.spec.activation == "none"
                    else "the output is not finite after the softmax")
            raise ModelError(f"{source}: class scores are not probabilities on probe images (each in [0, 1], "
                             f"summing to 1); {hint}")
