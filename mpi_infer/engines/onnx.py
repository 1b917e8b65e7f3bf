"""ONNX Runtime engine: the model loaded once per rank, dynamic batch, threads sized to the rank."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError, ModelError
from ..models.files import mentions
from ..profiles import Profile
from .heads import Head, probe_batch


def first_line(exc: BaseException, cap: int = 300) -> str:
    """The first line of an exception's text, capped: ONNX Runtime's messages can quote whole graphs."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= cap else text[:cap] + "..."


TRAINING_OPS = (b"BatchNormalization", b"Dropout")
FLOAT_INPUTS = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def size_hint(profile: Profile, shape: list) -> str:
    """Why a network with free spatial axes can fail on the probe: encoder-decoders need sizes divisible by
    their total stride (UNets: 16 or 32), or their skip connections' Concat does not line up."""
    free = not (isinstance(shape[2], int) and isinstance(shape[3], int))
    odd = [d for d in (32, 16, 8) if profile.height % d or profile.width % d]
    if not free or not odd:
        return ""
    return (f" (the model's spatial axes are free and the profile's {profile.height}x{profile.width} is not "
            f"divisible by {odd[0]}: encoder-decoder networks such as UNets need sizes divisible by their total "
            f"stride, often 16 or 32; try --size with multiples of 32)")


class OnnxLoadError(ModelError):
    """ONNX Runtime cannot load the file at all (``auto`` may then try EDDL's importer)."""


_SHARED_ARENA: list[bool] = []


def _share_cpu_arena(ort: Any) -> None:
    """Register one CPU arena with ONNX Runtime's environment, once per process."""
    if not _SHARED_ARENA:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
        _SHARED_ARENA.append(True)


class OnnxEngine:
    name = "onnx"

    def __init__(self, path: str, profile: Profile, head: Head, *, threads: int, gpu: bool = False,
                 device_id: int = 0, output: str | None = None, arena: bool = True):
        import onnxruntime as ort

        self.path = path
        self.requested_output = output
        self.head = head
        self.threads = max(1, int(threads))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning intra-op threads would steal the cores our loader threads decode on.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if not arena:
            # Several models per rank: each session's own CPU arena would keep its peak activations (about 56 MB
            # per demo-SegNet session at batch 8); one arena shared by all (ORT's environment allocator) holds
            # the peak of one. Measured here: 3 sessions 134 MB instead of 237, the same time per batch.
            _share_cpu_arena(ort)
            opts.add_session_config_entry("session.use_env_allocators", "1")
        available = ort.get_available_providers()
        if gpu and "CUDAExecutionProvider" not in available:
            raise ConfigError(f"--gpu: this ONNX Runtime ({ort.__version__}) has no CUDAExecutionProvider "
                              f"(providers: {', '.join(available)}); install onnxruntime-gpu with CUDA, or drop --gpu")
        if gpu:
            providers: list = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.gpu_requested = gpu
        model, self.graph_notes = self._inference_model(path)
        try:
            self.session = ort.InferenceSession(model, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
            raise OnnxLoadError(f"{path}: cannot load ONNX model: {first_line(exc)}") from exc
        self.providers = self.session.get_providers()
        if gpu and "CUDAExecutionProvider" not in self.providers:  # ORT falls back to the CPU without a word
            raise ConfigError(f"--gpu: ONNX Runtime could not start CUDA on GPU {device_id} (CUDA/cuDNN libraries "
                              f"missing?); it would run on the CPU only: {', '.join(self.providers)}")
        self._check(profile)

    @staticmethod
    def _inference_model(path: str) -> tuple[str | bytes, list[str]]:
        """The path itself, or the graph rewritten to inference semantics (a training-mode export). Only a file
        that names BatchNormalization or Dropout can need it (eval-mode exports fold BatchNormalization into the
        convolutions): any other is never parsed, so the onnx package is not imported."""
        if not mentions(path, TRAINING_OPS):
            return path, []
        import onnx

        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise OnnxLoadError(f"{path}: cannot load ONNX model: {first_line(exc)}") from exc
        model, notes = inference_graph(model)
        if not notes:
            return path, []
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            raise ModelError(f"{path}: exported in training mode ({notes[0]}) with external weights; re-export "
                             f"in eval mode")
        return model.SerializeToString(), notes

    def _check(self, profile: Profile) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{self.path}: expected one input, the model has {len(inputs)}")
        shape = inputs[0].shape
        if len(shape) != 4:
            raise ModelError(f"{self.path}: input '{inputs[0].name}' has shape {shape}, expected [N, C, H, W]")
        channels, h, w = shape[1], shape[2], shape[3]
        if shape[3] in (1, 3) and channels not in (1, 3):
            raise ModelError(f"{self.path}: input '{inputs[0].name}' has shape {shape}: channels last (NHWC); "
                             f"mpi_infer feeds [N, C, H, W] (NCHW) as ECVL does: export the model channels-first")
        if isinstance(channels, int) and channels != profile.tensor_channels:
            gives = ("grey" if profile.channels == 1 else "RGB") if profile.slices == 1 else "consecutive slices"
            raise ModelError(f"{self.path}: input '{inputs[0].name}' takes {channels} channels, the profile gives "
                             f"{profile.tensor_channels} ({gives})")
        for got, want, what in ((h, profile.height, "height"), (w, profile.width, "width")):
            if isinstance(got, int) and got != want:
                raise ModelError(f"{self.path}: input '{inputs[0].name}' {what} is {got}, but profile "
                                 f"{profile.name} resizes to {want} (shape {shape}); pick the matching "
                                 f"--profile or --size")
        if isinstance(shape[0], int) and shape[0] != 1:
            raise ModelError(f"{self.path}: input batch dimension is fixed at {shape[0]}; export the model "
                             f"with a dynamic batch axis")
        if inputs[0].type not in FLOAT_INPUTS:
            raise ModelError(f"{self.path}: input '{inputs[0].name}' is {inputs[0].type}; mpi_infer feeds "
                             f"float32 (float16 models are fed float16): re-export with a float input")
        self.input_name = inputs[0].name
        self.input_dtype = FLOAT_INPUTS[inputs[0].type]
        self.output_name = self._pick_output()
        self.fixed_batch = isinstance(shape[0], int)
        try:
            self.head.check(self.raw(probe_batch(profile)), f"{self.path}: output '{self.output_name}'")
        except ModelError as exc:
            raise ModelError(f"{exc}{size_hint(profile, shape)}") from None

    def _pick_output(self) -> str:
        """The one output to score: --output NAME, or the only one; several without --output are refused."""
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        listing = ", ".join(f"'{o.name}' {o.shape}" for o in outputs)
        if self.requested_output is not None:
            if self.requested_output not in names:
                raise ModelError(f"{self.path}: --output {self.requested_output!r} is not an output of the model; "
                                 f"its outputs: {listing}")
            return self.requested_output
        if len(outputs) > 1:
            raise ModelError(f"{self.path}: the model has {len(outputs)} outputs ({listing}); say which one to "
                             f"score with --output NAME")
        return names[0]

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            out = self.session.run([self.output_name], {self.input_name: x.astype(self.input_dtype, copy=False)})[0]
            return out if out.dtype == np.float32 else out.astype(np.float32)
        except Exception as exc:
            raise ModelError(f"{self.path}: inference failed: {first_line(exc)}") from exc

    def raw(self, x: np.ndarray) -> np.ndarray:
        if self.fixed_batch and len(x) != 1:
            return np.concatenate([self._run(x[k : k + 1]) for k in range(len(x))])
        return self._run(x)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.head(self.raw(x))

    def describe(self) -> dict:
        return {"engine": self.name, "providers": self.providers, "threads": self.threads,
                "gpu_requested": self.gpu_requested, "graph_changes": self.graph_notes,
                "output_name": self.output_name, "input_type": str(np.dtype(self.input_dtype))}


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
