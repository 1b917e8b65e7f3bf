"""Heads: what a task makes of an engine's raw output (the protocol), and the start-up probe that checks it fits.

An engine (ONNX Runtime or EDDL) only runs the network; its head turns the raw output into what the task
scores. Each task owns its head (tasks/segmentation.py: one foreground-probability map per image at the
network's resolution, after ``--activation`` and ``--class``; tasks/classification.py: class probabilities).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..profiles import Profile


def probe_batch(profile: Profile) -> np.ndarray:
    """Two inputs for the start-up probe: a blank image and a fixed random one (preprocessed as the profile
    says). A blank image alone lets small logits pass for probabilities."""
    rng = np.random.default_rng(20261129)
    shape = (profile.height, profile.width, profile.tensor_channels)
    images = np.stack([np.zeros(shape, np.uint8), rng.integers(0, 256, shape, dtype=np.uint8)])
    from ..loaders.opencv import to_tensor

    return to_tensor(list(images), profile)


class Head(Protocol):
    def check(self, raw: np.ndarray, source: str) -> None:
        """Refuse (ModelError, naming the option that fits) a raw output this head cannot use."""
        ...

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        ...
