"""EDDL's ``.bin`` weight file: a bare stream of tensor records (as deephealthproject/eddl
src/net/net_api.cpp's Net::save writes them).

Each record is int32 ndim, int32 shape[ndim], float32 data[prod(shape)], little-endian, no padding;
the file has no header, magic number or architecture. So a reader can only check that the bytes form
whole records; whether they fit a network is the architecture builder's job (segnet.py, classifiers.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import numpy as np

from ..errors import ModelError

MAX_NDIM = 8  # EDDL tensors in practice have 1..4 dims; anything far above means a foreign file


def parse_records(blob: bytes | memoryview, source: str = "<bytes>") -> list[np.ndarray]:
    """Split a .bin byte string into float32 arrays (views into ``blob``, no copies)."""
    buf = memoryview(blob)
    size = len(buf)
    records: list[np.ndarray] = []
    offset = 0
    while offset < size:
        k = len(records)
        if size - offset < 4:
            raise ModelError(f"{source}: truncated: record {k} at byte {offset} needs a 4-byte ndim, "
                             f"only {size - offset} byte(s) remain")
        ndim = int(np.frombuffer(buf, "<i4", 1, offset)[0])
        if not 1 <= ndim <= MAX_NDIM:
            raise ModelError(f"{source}: not an EDDL .bin record stream: record {k} at byte {offset} "
                             f"has ndim={ndim}, expected 1..{MAX_NDIM}")
        if size - offset - 4 < 4 * ndim:
            raise ModelError(f"{source}: truncated: record {k} at byte {offset} declares {ndim} dims but "
                             f"the file ends inside its shape")
        shape = tuple(int(d) for d in np.frombuffer(buf, "<i4", ndim, offset + 4))
        if any(d <= 0 for d in shape):
            raise ModelError(f"{source}: not an EDDL .bin record stream: record {k} at byte {offset} "
                             f"has shape {shape}; every dimension must be positive")
        count = math.prod(shape)  # Python's integers: a forged shape cannot overflow into a small count
        start = offset + 4 + 4 * ndim
        if size - start < 4 * count:
            raise ModelError(f"{source}: truncated: record {k} at byte {offset} has shape {shape} "
                             f"({4 * count} bytes of data) but only {size - start} byte(s) remain")
        records.append(np.frombuffer(buf, "<f4", count, start).reshape(shape))
        offset = start + 4 * count
    if not records:
        raise ModelError(f"{source}: empty file: no weight records")
    return records


def read_records(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """Read a .bin file into a list of float32 arrays, in file order."""
    from ..atomic import read_input

    path = os.fspath(path)
    return parse_records(read_input(path, ModelError, "model"), path)


def records_to_bytes(records: Iterable[np.ndarray]) -> bytes:
    """The exact byte stream EDDL's ``save(net, f, "bin")`` writes for these params."""
    parts: list[bytes] = []
    for r in records:
        arr = np.ascontiguousarray(r, dtype="<f4")
        parts.append(np.asarray([arr.ndim, *arr.shape], dtype="<i4").tobytes())
        parts.append(arr.tobytes())
    return b"".join(parts)


def write_records(path: str | os.PathLike[str], records: Iterable[np.ndarray]) -> int:
    """Write records as an EDDL .bin file (atomically); return the byte count."""
    from ..atomic import write_bytes

    data = records_to_bytes(records)
    write_bytes(os.fspath(path), data, fsync=False)
    return len(data)


def record_stream_size(shapes: Iterable[tuple[int, ...]]) -> int:
    """Bytes a .bin of these shapes takes, without building it (for the 112 MB SegNet check)."""
    return sum(4 + 4 * len(s) + 4 * int(np.prod(s, dtype=np.int64)) for s in shapes)
