"""Inference backends: one small protocol, two implementations.

- ``onnx``: ONNX Runtime (CPU, or CUDA when present and asked for). Runs everywhere pip does.
- ``ecvl``: pyeddl's own network (the DeepHealth images, where pyecvl/pyeddl are installed).
``auto`` picks ecvl when both pyecvl and pyeddl import, else onnx, and says why.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Protocol

import numpy as np

from ..errors import ConfigError
from ..profiles import Profile

BACKENDS = ("auto", "onnx", "ecvl")


class Backend(Protocol):
    name: str

    def predict(self, x: np.ndarray) -> np.ndarray:
        """[N, C, H, W] float32 -> [N, H, W] float32 foreground probabilities."""
        ...

    def describe(self) -> dict:
        """What ran the model (backend, device, threads, providers) for summary.json."""
        ...


def visible_gpus() -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else the /dev/nvidiaN devices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
    try:
        return sum(1 for n in os.listdir("/dev") if n.startswith("nvidia") and n[6:].isdigit())
    except OSError:
        return 0


def ecvl_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("pyecvl", "pyeddl"))


def choose_backend(requested: str) -> tuple[str, str]:
    """(backend, reason). ``auto`` prefers ecvl where pyecvl and pyeddl are installed."""
    if requested not in BACKENDS:
        raise ConfigError(f"unknown backend {requested!r}; choose from {', '.join(BACKENDS)}")
    if requested == "onnx":
        return "onnx", "requested"
    if requested == "ecvl":
        if not ecvl_available():
            raise ConfigError("--backend ecvl needs pyecvl and pyeddl, which are not installed here "
                              "(they need the ECVL/EDDL C++ libraries; use the DeepHealth image)")
        return "ecvl", "requested"
    if ecvl_available():
        return "ecvl", "auto: pyecvl and pyeddl import"
    return "onnx", "auto: pyecvl/pyeddl not installed, using ONNX Runtime"


def open_backend(kind: str, model_path: str, profile: Profile, *, threads: int, gpu: bool = False,
                 device_id: int = 0, arch: str | None = None) -> Backend:
    """Load the model once for this rank. ``model_path`` is ONNX for onnx; .bin or .onnx for ecvl."""
    if kind == "onnx":
        from .onnx import OnnxBackend

        return OnnxBackend(model_path, profile, threads=threads, gpu=gpu, device_id=device_id)
    if kind == "ecvl":
        from .ecvl import EcvlBackend

        return EcvlBackend(model_path, profile, threads=threads, gpu=gpu, device_id=device_id, arch=arch,
                           visible_gpus=visible_gpus())
    raise ConfigError(f"unknown backend {kind!r}")
