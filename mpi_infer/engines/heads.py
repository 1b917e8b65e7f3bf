"""Heads: what a task makes of an engine's raw output, and the start-up probe that checks it fits.

An engine (ONNX Runtime or EDDL) only runs the network; its head turns the raw output into what the task
scores. Segmentation: one foreground-probability map per image at the network's resolution, after
``--activation`` and ``--class`` (model_output.py).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..errors import ModelError
from ..model_output import OutputSpec, check_probabilities, foreground
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

    def check(self, raw: np.ndarray, source: str) -> None:
        self.source = source
        h, w = self.profile.height, self.profile.width
        spatial = raw.shape[-2:] if raw.ndim in (3, 4) else None
        if spatial != (h, w):
            raise ModelError(f"{source} has shape {list(raw.shape)} for two images; expected [N, C, {h}, {w}] "
                             f"(segmentation at the network's input size)")
        probe = foreground(raw, self.spec, source)
        check_probabilities(probe, raw.shape[1] if raw.ndim == 4 else 1, self.spec, source)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return foreground(raw, self.spec, self.source)
