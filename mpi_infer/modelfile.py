"""Model files: hashing, the shipped demo model, and EDDL .bin -> ONNX conversion with a shared cache.

A .bin is converted once per content hash into ``<cache>/`` (on the output volume, which every rank
can read), so N ranks on a shared volume do not each redo it.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources

from .archs import build_onnx, detect_arch, layers_from_records
from .atomic import MAX_INPUT_BYTES, open_input, read_chunks, write_bytes
from .cls_archs import CLS_ARCHS, build_classifier_onnx, classifier_from_records
from .eddl_bin import read_records
from .errors import ModelError

DEMO_MODEL = "demo_segnet"


DEMO_CLASSIFIER = "demo_lenet"


def demo_model(kind: str = "bin", name: str = DEMO_MODEL) -> str:
    """Path of a shipped demo model (``bin`` or ``onnx``): the SegNet, or ``DEMO_CLASSIFIER``."""
    return str(resources.files("mpi_infer") / "models" / f"{name}.{kind}")


def file_sha256(path: str) -> str:
    """The model's content hash, read as a bounded regular file (a FIFO, a device or a folder is a model
    error naming it, never a hang)."""
    digest = hashlib.sha256()
    with open_input(path, ModelError, "model") as fh:
        for block in read_chunks(fh, path, ModelError, "model", MAX_INPUT_BYTES):
            digest.update(block)
    return digest.hexdigest()


def model_format(path: str) -> str:
    """``bin`` for EDDL record streams (by extension), else ``onnx``."""
    return "bin" if path.lower().endswith(".bin") else "onnx"


def convert_bin(bin_path: str, arch: str, height: int, width: int, out_path: str) -> str:
    """Build the ONNX graph for an EDDL .bin and write it atomically to ``out_path``."""
    records = read_records(bin_path)
    if arch == "auto":
        arch = detect_arch(records, bin_path)
    name = f"{arch}-{os.path.basename(bin_path)}"
    if arch in CLS_ARCHS:
        model = build_classifier_onnx(classifier_from_records(records, arch, bin_path), height, width, name=name)
    else:
        model = build_onnx(layers_from_records(records, arch, source=bin_path), height, width, name=name)
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    write_bytes(out_path, model.SerializeToString(), fsync=False)
    return out_path


def cached_onnx(bin_path: str, sha256: str, arch: str, height: int, width: int, cache_dir: str) -> str:
    """The ONNX for this .bin content, converting only when the cache does not have it yet."""
    target = os.path.join(cache_dir, f"{sha256[:20]}-{arch}-{height}x{width}.onnx")
    if not os.path.exists(target):
        convert_bin(bin_path, arch, height, width, target)
    return target
