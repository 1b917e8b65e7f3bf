"""EDDL engine: pyeddl's own network (pyeddl 1.3.1 on EDDL 1.1b: deephealthproject/
pyeddl, deephealthproject/eddl src/net/net_api.cpp).

A ``.bin`` is a bare record stream, so the network is rebuilt in pyeddl from the record shapes (the SegNet
family of models/segnet.py), built with init_weights=True (build randomises) and then ``eddl.load`` overwrites
every parameter. An ``.onnx`` is imported with ``import_net_from_onnx_file`` and built with
init_weights=False. Either way the net is switched to test mode (``set_mode(net, 0)``: a new Net starts
in training mode, and upstream evaluated BatchNorm nets with batch statistics) before ``forward``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError, ModelError
from ..models.classifiers import CLS_ARCHS, check_input_size, classifier_eddl, classifier_from_records
from ..models.eddl_bin import read_records
from ..models.files import model_format
from ..models.segnet import DECODER_BLOCKS, ENCODER_BLOCKS, layers_from_records
from ..profiles import Profile
from .heads import Head, probe_batch

MEMORY_MODES = ("full_mem", "mid_mem", "low_mem")  # EDDL's; measured: no effect on inference RSS
MICRO_BATCH = 2  # images per EDDL forward (see predict)


def gpu_flags(local_rank: int, visible: int) -> list[int]:
    """CS_GPU's on/off list: this rank's GPU is local rank mod the visible GPUs."""
    if visible < 1:
        raise ConfigError("--gpu: no GPU is visible on this host (CUDA_VISIBLE_DEVICES, /dev/nvidia*)")
    flags = [0] * visible
    flags[local_rank % visible] = 1
    return flags


class EddlEngine:
    name = "eddl"

    def __init__(self, path: str, profile: Profile, head: Head, *, threads: int, gpu: bool = False,
                 device_id: int = 0, arch: str | None = None, visible_gpus: int | None = None,
                 mem: str = "full_mem"):
        if mem not in MEMORY_MODES:
            raise ConfigError(f"--eddl-mem {mem!r}: choose from {', '.join(MEMORY_MODES)}")
        self.path, self.profile, self.threads, self.gpu, self.mem = path, profile, max(1, threads), gpu, mem
        self.arch = arch or "segnet"
        self.device_id = device_id
        self.visible_gpus = visible_gpus
        self.net = self._build()
        self.batch = 0
        self.head = head
        self.head.check(self.raw(probe_batch(profile)), f"{path}: output")

    def _computing_service(self) -> Any:
        from pyeddl import eddl

        if not self.gpu:
            return eddl.CS_CPU(self.threads, mem=self.mem)
        flags = gpu_flags(self.device_id, self.visible_gpus or 0)
        try:
            return eddl.CS_GPU(flags, mem=self.mem)
        except RuntimeError as exc:  # a CPU-only EDDL: "[Hardware not supported] ... not compiled for 'GPU'"
            raise ConfigError(f"--gpu: this EDDL build cannot use a GPU ({exc}); use an EDDL built with CUDA, "
                              f"or drop --gpu") from None

    def _build(self) -> Any:
        from pyeddl import eddl

        c, h, w = self.profile.tensor_channels, self.profile.height, self.profile.width  # grey, RGB or K slices
        cs = self._computing_service()
        optimizer = eddl.adam(0.0001)  # build needs one; inference never steps it
        try:
            if model_format(self.path) == "bin" and self.arch in CLS_ARCHS:
                clf = classifier_from_records(read_records(self.path), self.arch, source=self.path)
                check_input_size(clf, h, w, self.path)
                in_ = eddl.Input([c, h, w])
                net = eddl.Model([in_], [classifier_eddl(in_, clf)])
                eddl.build(net, optimizer, ["softmax_cross_entropy"], ["categorical_accuracy"], cs, True)
                eddl.load(net, self.path, "bin")
            elif model_format(self.path) == "bin":
                layers = layers_from_records(read_records(self.path), self.arch, source=self.path)
                in_ = eddl.Input([c, h, w])
                out = eddl.Sigmoid(segnet_eddl(in_, [layer.out_channels for layer in layers],
                                               self.arch == "segnet-bn"))
                net = eddl.Model([in_], [out])
                eddl.build(net, optimizer, ["binary_cross_entropy"], ["mean_squared_error"], cs, True)
                eddl.load(net, self.path, "bin")
            else:
                net = eddl.import_net_from_onnx_file(self.path, [c, h, w])
                if net is None:  # EDDL prints "Failed to parse model" and returns nullptr; build(None) segfaults
                    raise ModelError(f"{self.path}: EDDL cannot parse this ONNX file (not an ONNX model, or "
                                     f"corrupt)")
                eddl.build(net, optimizer, ["binary_cross_entropy"], ["mean_squared_error"], cs, False)
        except (ModelError, ConfigError):
            raise
        except Exception as exc:  # pyeddl surfaces C++ errors as RuntimeError
            raise ModelError(f"{self.path}: EDDL cannot build or load the model: {exc}") from exc
        eddl.set_mode(net, 0)  # test mode: BatchNorm uses running statistics
        return net

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Forward in micro-batches: EDDL's CPU convolution keeps an im2col buffer per layer sized for the
        batch (the demo SegNet at 192x192: 916 MB of RSS at 8 images, 345 MB at 2), and time per image is the
        same from 2 images up (83 ms; 1 image takes 2x). Each image's output does not depend on its batch."""
        return self.head(self.raw(x))

    def raw(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self._forward(x[k : k + MICRO_BATCH]) for k in range(0, len(x), MICRO_BATCH)])

    def _forward(self, x: np.ndarray) -> np.ndarray:
        from pyeddl import eddl
        from pyeddl.tensor import Tensor

        n = int(x.shape[0])
        if n != self.batch:
            eddl.forward(self.net, b=n)  # resize the net for this batch (the short tail)
            self.batch = n
        eddl.forward(self.net, [Tensor.fromarray(np.ascontiguousarray(x, np.float32))])
        out = eddl.getOutput(eddl.getOut(self.net)[0])
        if self.gpu and hasattr(out, "toCPU"):
            out.toCPU()  # numpy can only view CPU tensors
        return np.array(out, copy=True)

    def describe(self) -> dict:
        return {"engine": self.name, "device": "gpu" if self.gpu else "cpu", "threads": self.threads,
                "eddl_mem": self.mem, "arch": self.arch if model_format(self.path) == "bin" else "onnx-import"}


def segnet_eddl(x: Any, widths: list[int], batchnorm: bool) -> Any:
    """The SegNet layer pattern of models/segnet.py in pyeddl (widths from the .bin records)."""
    from pyeddl import eddl

    k = 0

    def block(x: Any, relu: bool = True) -> Any:
        nonlocal k
        x = eddl.Conv2D(x, widths[k], [3, 3], [1, 1], "same")
        if batchnorm and relu:
            x = eddl.BatchNormalization(x, True)
        k += 1
        return eddl.ReLu(x) if relu else x

    for n in ENCODER_BLOCKS:
        for _ in range(n):
            x = block(x)
        x = eddl.MaxPool2D(x, [2, 2], [2, 2], "none")
    for n in DECODER_BLOCKS:
        x = eddl.UpSampling2D(x, [2, 2])
        for _ in range(n):
            x = block(x)
    return block(x, relu=False)
