"""Which loader and which engine a run uses, and why (logged, and kept in summary.json), and how many threads a
rank gets. The loading is what makes results "ECVL's"; the forward pass is the same maths in either engine, and
ONNX Runtime runs it 25x faster than EDDL 1.1b on a 2-core CPU (the demo SegNet; scripts/bench.py --only
stacks). So ``auto`` picks the ECVL loader where pyecvl imports (else OpenCV) and the ONNX engine wherever the
model loads in ONNX Runtime (else EDDL). ``--backend ecvl|onnx`` is shorthand for the two pure pairs."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from ..errors import ConfigError
from ..models.files import model_format

LOADERS = ("auto", "ecvl", "opencv")


ENGINES = ("auto", "onnx", "eddl")


BACKENDS = {"onnx": ("opencv", "onnx"), "ecvl": ("ecvl", "eddl")}  # --backend shorthand


NO_PYECVL = "pyecvl is not installed (it needs the ECVL C++ library: a DeepHealth image, or your own install)"


NO_PYEDDL = "pyeddl is not installed (it needs the EDDL C++ library: a DeepHealth image, or your own install)"


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


MEDICAL_WHY = {
    "volumes": "the dataset holds volumes, which ECVL's DLDataset feeds as one image of Z channels: ECVL reads each "
               "file (ImRead), our loader slices and resizes it, as the DeepHealth volume pipelines do",
    "files": "the dataset names DICOM or NIfTI files: ECVL reads each file (ImRead), our loader resizes it (the "
             "DLDataset path's pre-check reads OpenCV's formats only)",
}


def for_medical(stack: Stack, medical: str) -> Stack:
    """DICOM, NIfTI and volumes: the ECVL loader reads them with ECVL's ``ImRead`` through our loader
    (loaders/ecvl_files.py), saying so; the OpenCV loader reads them with pydicom and nibabel."""
    if not medical or stack.loader != "ecvl":
        return stack
    return Stack("ecvl", stack.engine, f"{stack.loader_why}; {MEDICAL_WHY[medical]}", stack.engine_why)


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def pyecvl_available() -> bool:
    return has_module("pyecvl")


def pyeddl_available() -> bool:
    return has_module("pyeddl")


def ecvl_available() -> bool:
    """Both DeepHealth libraries import (a DeepHealth image, or the user's own install)."""
    return pyecvl_available() and pyeddl_available()


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


def rank_threads(requested: int, local_size: int) -> int:
    """Intra-op threads: ``requested`` (--threads) if given, else what this rank is bound to, else the host's
    cores divided among its ranks."""
    if requested > 0:
        return requested
    cores = os.cpu_count() or 1
    try:
        bound = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        bound = cores
    if bound < cores:
        return max(1, bound)
    return max(1, cores // max(1, local_size))
