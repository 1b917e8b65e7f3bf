"""Inference engines: what computes the network, once per rank, behind one small protocol.

- ``onnx`` (onnx.py): ONNX Runtime; an EDDL ``.bin`` is converted once to ONNX (models/convert.py);
- ``eddl`` (eddl.py): pyeddl's own network, where pyeddl imports.

An engine only runs the network: the task's head (heads.py's protocol; tasks/ own them) turns the raw output
into what the task scores, and is a required argument. Which engine a run uses, beside which loader, is
stages/stack.py's choice.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError
from .heads import Head


class Engine(Protocol):
    name: str

    def predict(self, x: np.ndarray) -> np.ndarray:
        """[N, 3, H, W] float32 -> what the engine's head makes of the network's output (engines/heads.py):
        [N, H, W] foreground probabilities (segmentation) or [N, C] class probabilities (classification)."""
        ...

    def describe(self) -> dict:
        """What ran the model (engine, device, threads, providers) for summary.json."""
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


def open_engine(kind: str, model_path: str, profile: Any, head: Head, *, threads: int, gpu: bool = False,
                device_id: int = 0, arch: str | None = None, eddl_mem: str = "full_mem", output: str | None = None,
                arena: bool = True, fallback: bool = False) -> Engine:
    """Load the model once for this rank: ONNX for ``onnx``; .bin or .onnx for ``eddl``. ``arena=False``: the
    session uses one CPU arena shared by every session of the process (several models per rank).

    ``fallback`` (``--engine auto`` where pyeddl imports): an ONNX file that ONNX Runtime cannot load goes to
    EDDL's importer (the engine's name then says so); if EDDL fails too, ONNX Runtime's error stands."""
    if kind == "onnx":
        from .onnx import OnnxEngine, OnnxLoadError

        try:
            return OnnxEngine(model_path, profile, head, threads=threads, gpu=gpu, device_id=device_id,
                              output=output, arena=arena)
        except OnnxLoadError:
            if not fallback:
                raise
            first = sys.exc_info()[1]
        try:
            return open_engine("eddl", model_path, profile, head, threads=threads, gpu=gpu, device_id=device_id,
                               arch=arch, eddl_mem=eddl_mem)
        except Exception:
            raise first from None
    if kind == "eddl":
        from .eddl import EddlEngine

        if output is not None:
            raise ConfigError(f"--output {output}: picking an output tensor is for the ONNX Runtime engine; "
                              f"EDDL's engine scores the network's single output layer")
        return EddlEngine(model_path, profile, head, threads=threads, gpu=gpu, device_id=device_id, arch=arch,
                          visible_gpus=visible_gpus(), mem=eddl_mem)
    raise ConfigError(f"unknown engine {kind!r}")
