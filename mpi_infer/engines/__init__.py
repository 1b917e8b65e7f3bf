"""Inference engines and image loaders: what computes the network, and what turns files into tensors.

A run is one *loader* times one *engine*:

- loaders: ``opencv`` (ours, loader.py: ECVL's recipe re-implemented with OpenCV, everywhere pip works) and
  ``ecvl`` (ECVL's own ``DLDataset``, ecvl_loader.py, where pyecvl imports: the DeepHealth images);
- engines: ``onnx`` (ONNX Runtime; an EDDL ``.bin`` is converted once to ONNX) and ``eddl`` (pyeddl's
  own network).

The loading is what makes results "ECVL's"; the forward pass is the same maths in either engine, and ONNX
Runtime runs it 25x faster than EDDL 1.1b on a 2-core CPU (the demo SegNet; scripts/bench.py --only stacks).
So ``auto`` picks the ECVL loader where pyecvl imports (else OpenCV) and the ONNX engine wherever the model
loads in ONNX Runtime (else EDDL). The old ``--backend ecvl|onnx`` is shorthand for the two pure pairs,
ecvl+eddl and opencv+onnx.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import ConfigError
from ..models.files import model_format

LOADERS = ("auto", "ecvl", "opencv")
ENGINES = ("auto", "onnx", "eddl")
BACKENDS = {"onnx": ("opencv", "onnx"), "ecvl": ("ecvl", "eddl")}  # --backend shorthand
NO_PYECVL = "pyecvl is not installed (it needs the ECVL C++ library: a DeepHealth image, or your own install)"
NO_PYEDDL = "pyeddl is not installed (it needs the EDDL C++ library: a DeepHealth image, or your own install)"


class Engine(Protocol):
    name: str

    def predict(self, x: np.ndarray) -> np.ndarray:
        """[N, 3, H, W] float32 -> what the engine's head makes of the network's output (engines/heads.py):
        [N, H, W] foreground probabilities (segmentation) or [N, C] class probabilities (classification)."""
        ...

    def describe(self) -> dict:
        """What ran the model (engine, device, threads, providers) for summary.json."""
        ...


@dataclass(frozen=True)
class Stack:
    """The loader and engine a run uses, and why each was chosen (logged and kept in summary.json)."""

    loader: str
    engine: str
    loader_why: str
    engine_why: str

    @property
    def name(self) -> str:
        """``onnx`` and ``ecvl`` for the two pure pairs (as --backend names them), else ``loader+engine``."""
        for short, pair in BACKENDS.items():
            if pair == (self.loader, self.engine):
                return short
        return f"{self.loader}+{self.engine}"

    def describe(self) -> dict:
        return {"backend": self.name, "loader": self.loader, "engine": self.engine,
                "loader_chosen_because": self.loader_why, "engine_chosen_because": self.engine_why}


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def pyecvl_available() -> bool:
    return has_module("pyecvl")


def pyeddl_available() -> bool:
    return has_module("pyeddl")


def ecvl_available() -> bool:
    """Both DeepHealth libraries import (a DeepHealth image, or the user's own install)."""
    return pyecvl_available() and pyeddl_available()


def visible_gpus() -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else the /dev/nvidiaN devices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
    try:
        return sum(1 for n in os.listdir("/dev") if n.startswith("nvidia") and n[6:].isdigit())
    except OSError:
        return 0


def choose_stack(loader: str = "auto", engine: str = "auto", backend: str | None = None,
                 model: str = "", decode: str = "exact", score_at: str = "network") -> Stack:
    """The loader and engine for a run, with the reason for each; refuses what cannot run here."""
    if backend not in (None, "auto"):
        if backend not in BACKENDS:
            raise ConfigError(f"--backend {backend!r}: choose from auto, {', '.join(BACKENDS)}")
        if (loader, engine) != ("auto", "auto"):
            raise ConfigError("--backend is shorthand for --loader and --engine; give one or the other")
        loader, engine = BACKENDS[backend]
        why = f"--backend {backend}"
        loader_why = engine_why = why
    else:
        loader_why = engine_why = "requested"
    if loader not in LOADERS:
        raise ConfigError(f"--loader {loader!r}: choose from {', '.join(LOADERS)}")
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: choose from {', '.join(ENGINES)}")
    # what only the OpenCV loader does: ECVL decodes every image exactly and hands back network-size masks only
    needs = "--decode reduced" if decode == "reduced" else "--score-at original" if score_at == "original" else None
    if needs and loader == "ecvl":
        raise ConfigError(f"{needs} needs the OpenCV loader (ECVL decodes exactly and gives network-size masks "
                          f"only); drop --loader ecvl, or {needs}")
    if loader == "auto" and needs:
        loader, loader_why = "opencv", f"auto: {needs} needs the OpenCV loader"
    elif loader == "auto":
        loader, loader_why = (("ecvl", "auto: pyecvl imports") if pyecvl_available()
                              else ("opencv", "auto: pyecvl not installed"))
    elif loader == "ecvl" and not pyecvl_available():
        raise ConfigError(f"--loader ecvl needs pyecvl, but {NO_PYECVL}")
    if engine == "auto":
        engine, engine_why = "onnx", ("auto: ONNX Runtime runs the ONNX model" if model_format(model) == "onnx"
                                      else "auto: the .bin converts to ONNX for ONNX Runtime")
    elif engine == "eddl" and not pyeddl_available():
        raise ConfigError(f"--engine eddl needs pyeddl, but {NO_PYEDDL}")
    return Stack(loader, engine, loader_why, engine_why)


def open_engine(stack: Stack, model_path: str, profile, *, threads: int, gpu: bool = False, device_id: int = 0,
                arch: str | None = None, eddl_mem: str = "full_mem", head=None, output: str | None = None,
                arena: bool = True) -> Engine:
    """Load the model once for this rank: ONNX for ``onnx``; .bin or .onnx for ``eddl``. ``arena=False``: the
    session uses one CPU arena shared by every session of the process (several models per rank).

    Under ``--engine auto``, an ONNX file that ONNX Runtime cannot load goes to EDDL's importer where
    pyeddl is installed (the engine's describe() then says so); if EDDL fails too, ONNX Runtime's error stands."""
    kind = stack.engine
    if kind == "onnx":
        from .onnx import OnnxEngine, OnnxLoadError

        try:
            return OnnxEngine(model_path, profile, threads=threads, gpu=gpu, device_id=device_id, head=head,
                              output=output, arena=arena)
        except OnnxLoadError:
            if not (stack.engine_why.startswith("auto") and pyeddl_available()):
                raise
            first = sys.exc_info()[1]
        try:
            return open_engine(Stack(stack.loader, "eddl", stack.loader_why, "auto: ONNX Runtime cannot load it"),
                               model_path, profile, threads=threads, gpu=gpu, device_id=device_id, arch=arch,
                               eddl_mem=eddl_mem, head=head)
        except Exception:
            raise first from None
    if kind == "eddl":
        from .eddl import EddlEngine

        if output is not None:
            raise ConfigError(f"--output {output}: picking an output tensor is for the ONNX Runtime engine; "
                              f"EDDL's engine scores the network's single output layer")
        return EddlEngine(model_path, profile, threads=threads, gpu=gpu, device_id=device_id, arch=arch,
                          visible_gpus=visible_gpus(), mem=eddl_mem, head=head)
    raise ConfigError(f"unknown engine {kind!r}")
