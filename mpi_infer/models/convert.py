"""An EDDL .bin to ONNX, without EDDL (mpi_infer convert), and the cached conversion a run makes once."""

from __future__ import annotations

import os

from ..atomic import write_bytes


def convert_bin(bin_path: str, arch: str, height: int, width: int, out_path: str) -> str:
    """Build the ONNX graph for an EDDL .bin and write it atomically to ``out_path``."""
    from .classifiers import CLS_ARCHS, build_classifier_onnx, classifier_from_records
    from .eddl_bin import read_records
    from .segnet import build_onnx, detect_arch, layers_from_records  # the onnx package: only when converting

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
