"""Model files: hashing, the shipped demo model, and EDDL .bin -> ONNX conversion with a shared cache.

A .bin is converted once per content hash into ``<cache>/`` (on the output volume, which every rank
can read), so N ranks on a shared volume do not each redo it.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources

from ..atomic import MAX_INPUT_BYTES, open_input, read_chunks
from ..errors import ModelError, clip

DEMO_MODEL = "demo_segnet"


DEMO_CLASSIFIER = "demo_lenet"


# The names --model takes for the shipped models (each a file name and format).
DEMO_MODELS = {"demo": ("demo_segnet", "bin"), "demo-bin": ("demo_segnet", "bin"),
               "demo-onnx": ("demo_segnet", "onnx"), "demo-classifier": ("demo_lenet", "bin"),
               "demo-classifier-onnx": ("demo_lenet", "onnx")}


def demo_model(kind: str = "bin", name: str = DEMO_MODEL) -> str:
    """Path of a shipped demo model (``bin`` or ``onnx``): the SegNet, or ``DEMO_CLASSIFIER``."""
    return str(resources.files("mpi_infer") / "models" / f"{name}.{kind}")


def file_sha256(path: str) -> str:
    """The model's content hash, read as a bounded regular file (a FIFO, a device or a folder is a model
    error naming it, never a hang)."""
    return scan_model(path, ())[0]


def model_sha256(path: str) -> str:
    """The model's identity for summary.json and --resume: its file's hash, and for an ONNX model whose weights
    live in external data files (torch's new exporter writes ``<name>.onnx.data``) the hashes of those too, so
    swapping the weights changes the identity."""
    onnx_file = model_format(path) == "onnx"
    sha, found = scan_model(path, (b"location",) if onnx_file else ())
    externals = external_data_files(path) if found else []  # no "location" bytes: no external data entry
    if not externals:
        return sha
    digest = hashlib.sha256(sha.encode())
    for name, full in externals:
        digest.update(f"\0{name}\0{file_sha256(full)}".encode())
    return digest.hexdigest()


def external_data_files(path: str) -> list[tuple[str, str]]:
    """(location as written, full path) of every external data file an ONNX model refers to, sorted."""
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - not parseable: the engine reports it, naming the file
        return []
    tensors = list(model.graph.initializer)
    tensors += [a.t for node in model.graph.node for a in node.attribute if a.HasField("t")]
    found = {e.value for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL
             for e in t.external_data if e.key == "location"}
    return [(name, external_data_path(path, name)) for name in sorted(found)]


def external_data_path(model: str, name: str) -> str:
    """Where an external data file named ``name`` lives, which must be inside the model's real folder: an
    absolute path, a ``..`` or a symlink that leads out would let a colleague's model read any file you can (your
    ssh key, say) into its weights and out through the masks. Refused before any byte is read (exit 11)."""
    folder = os.path.realpath(os.path.dirname(os.path.abspath(model)))
    parts = name.replace("\\", "/").split("/")
    if not name or os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise ModelError(f"{model}: its external data location {clip(name, 200)!r} is not a plain path inside the "
                         f"model's folder (no absolute path, no '..'); refused")
    full = os.path.realpath(os.path.join(folder, name))
    if os.path.commonpath([folder, full]) != folder:
        raise ModelError(f"{model}: its external data location {clip(name, 200)!r} leads out of the model's folder "
                         f"(a symlink to {clip(full, 200)}); refused")
    if not os.path.isfile(full):
        raise ModelError(f"{model}: its external data file {clip(name, 200)!r} is missing (looked for {full})")
    return full


def mentions(path: str, words: tuple[bytes, ...]) -> bool:
    """Whether the file's bytes contain any of ``words`` (also across read blocks): a byte scan that spares
    importing the onnx package (about 0.6 s) where a model cannot need parsing."""
    return scan_model(path, words, digest=False)[1]


def scan_model(path: str, words: tuple[bytes, ...], digest: bool = True) -> tuple[str, bool]:
    """One bounded read of the model file: its SHA-256 (with ``digest``) and whether any of ``words`` occurs."""
    sha = hashlib.sha256() if digest else None
    carry, keep, found = b"", max((len(w) for w in words), default=0), False
    with open_input(path, ModelError, "model") as fh:
        for block in read_chunks(fh, path, ModelError, "model", MAX_INPUT_BYTES):
            if sha is not None:
                sha.update(block)
            if words and not found:
                found = any(w in carry + block for w in words)
                carry = block[-keep:]
            elif sha is None:
                break
    return (sha.hexdigest() if sha is not None else ""), found


def model_format(path: str) -> str:
    """``bin`` for EDDL record streams (by extension), else ``onnx``."""
    return "bin" if path.lower().endswith(".bin") else "onnx"




def input_channels(path: str) -> int | None:
    """The channels an ONNX model's input takes (the C of its [N, C, H, W] shape), read from the file's protobuf
    fields by seeking past the weights (no onnx import, which costs about 0.6 s, and no weights read); None for an
    EDDL .bin (the SegNet family, VGG16 and LeNet take RGB), a symbolic C, or a file that is not ONNX (the engine's
    own check then speaks)."""
    if model_format(path) != "onnx":
        return None
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            graph = next((v for f, v in _fields(fh, 0, size) if f == 7), None)  # ModelProto.graph
            if graph is None:
                return None
            weights, inputs = set(), []
            for f, (start, length) in _fields(fh, *graph):
                if f == 5:  # GraphProto.initializer: its name only
                    weights.add(_string(fh, start, length, 8))
                elif f == 11:  # GraphProto.input (ValueInfoProto)
                    inputs.append((_string(fh, start, length, 1), start, length))
            inputs = [i for i in inputs if i[0] not in weights]
            if len(inputs) != 1:
                return None
            dims = _path(fh, inputs[0][1:], (2, 1, 2))  # .type.tensor_type.shape
            values = [] if dims is None else [_path(fh, d, (1,), leaf=True) for f, d in _fields(fh, *dims) if f == 1]
            return int(values[1]) if len(values) == 4 and isinstance(values[1], int) and values[1] > 0 else None
    except (OSError, ValueError, IndexError):
        return None


def _varint(fh) -> int:
    shift = value = 0
    while True:
        byte = fh.read(1)
        if not byte:
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(fh, start: int, length: int):
    """(field number, (start, length)) of each length-delimited field in the message at [start, start+length);
    a varint field's value instead of its place; other wire types skipped."""
    end = start + length
    fh.seek(start)
    while fh.tell() < end:
        key = _varint(fh)
        number, wire = key >> 3, key & 7
        if wire == 2:
            n = _varint(fh)
            here = fh.tell()
            if here + n > end:
                raise ValueError("field past its message")
            yield number, (here, n)
            fh.seek(here + n)
        elif wire == 0:
            value = _varint(fh)
            here = fh.tell()
            yield number, value
            fh.seek(here)
        elif wire in (1, 5):
            fh.seek(fh.tell() + (8 if wire == 1 else 4))
        else:
            raise ValueError(f"wire type {wire}")


def _string(fh, start: int, length: int, number: int) -> str:
    for f, v in list(_fields(fh, start, length)):
        if f == number and isinstance(v, tuple):
            fh.seek(v[0])
            return fh.read(v[1]).decode("utf-8", "replace")
    return ""


def _path(fh, place: tuple[int, int], numbers: tuple[int, ...], leaf: bool = False):
    """Follow nested fields ``numbers`` from the message at ``place``; with ``leaf`` the last is a varint."""
    for k, number in enumerate(numbers):
        found = next((v for f, v in list(_fields(fh, *place)) if f == number), None)
        if found is None:
            return None
        if leaf and k == len(numbers) - 1:
            return found if isinstance(found, int) else None
        if not isinstance(found, tuple):
            return None
        place = found
    return place
