"""An EDDL .bin to ONNX, without EDDL (mpi_infer convert), and the cached conversion a run makes once."""

from __future__ import annotations

import os

from ..atomic import write_bytes
from ..errors import ConfigError


def convert_bin(bin_path: str, arch: str, height: int, width: int, out_path: str) -> str:
    """Build the ONNX graph for an EDDL .bin and write it atomically to ``out_path``."""
    data = onnx_bytes(bin_path, arch, height, width)
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    write_bytes(out_path, data, fsync=False)
    return out_path


def onnx_bytes(bin_path: str, arch: str, height: int, width: int) -> bytes:
    """The ONNX model of an EDDL .bin, serialised (the same bytes for the same .bin, arch and size)."""
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
    return model.SerializeToString()


def cached_onnx(bin_path: str, sha256: str, arch: str, height: int, width: int, cache_dir: str) -> str:
    """The file every rank's engine opens for this .bin: its conversion, checked byte for byte on rank 0 before
    use. The cache's name is predictable and --out is shared, so a file planted there is never trusted: one
    that is not this .bin's conversion is replaced (a conversion takes well under a second; the cache spares
    the write and the other ranks' conversions)."""
    if os.path.islink(cache_dir):
        raise ConfigError(f"{cache_dir} is a symlink; mpi_infer never writes through one")
    target = os.path.join(cache_dir, f"{sha256[:20]}-{arch}-{height}x{width}.onnx")
    data = onnx_bytes(bin_path, arch, height, width)
    if os.path.isfile(target) and not os.path.islink(target) and os.path.getsize(target) == len(data):
        with open(target, "rb") as fh:  # a regular file of the right size (never a FIFO, never a link)
            if fh.read(len(data)) == data:
                return target
    os.makedirs(cache_dir, exist_ok=True)
    write_bytes(target, data, fsync=False)
    return target
