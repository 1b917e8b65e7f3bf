"""EDDL .bin records: round trip, clear errors, SegNet(-BN) -> ONNX matches a numpy reference."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from mpi_infer.cli import main
from mpi_infer.errors import ConfigError, ModelError
from mpi_infer.models.eddl_bin import parse_records, read_records, record_stream_size, records_to_bytes, write_records
from mpi_infer.models.segnet import (
    FULL_WIDTHS,
    build_onnx,
    forward_numpy,
    layers_from_records,
    random_layers,
    records_from_layers,
    segnet_widths,
)


def test_round_trip_bytes_exact(tmp_path):
    rng = np.random.default_rng(1)
    recs = [rng.normal(size=s).astype(np.float32) for s in [(4, 3, 3, 3), (4,), (2, 5), (7,)]]
    path = tmp_path / "w.bin"
    n = write_records(path, recs)
    assert n == path.stat().st_size == sum(4 + 4 * r.ndim + 4 * r.size for r in recs)
    back = read_records(path)
    assert [b.shape for b in back] == [r.shape for r in recs]
    assert all(np.array_equal(a, b) for a, b in zip(recs, back))
    assert records_to_bytes(back) == path.read_bytes()
    # the layout, byte by byte: int32 ndim, int32 shape, float32 data, little-endian
    raw = path.read_bytes()
    assert np.frombuffer(raw[:20], "<i4").tolist() == [4, 4, 3, 3, 3]


def test_truncated_and_foreign_files_say_where(tmp_path):
    blob = records_to_bytes([np.ones((2, 2), np.float32), np.ones(3, np.float32)])
    with pytest.raises(ModelError, match=r"truncated: record 1 at byte 28 has shape \(3,\)"):
        parse_records(blob[:-1], "m.bin")
    with pytest.raises(ModelError, match="truncated: record 1 at byte 28 needs a 4-byte ndim"):
        parse_records(blob[:30], "m.bin")
    with pytest.raises(ModelError, match="not an EDDL .bin record stream: record 0 at byte 0 has ndim="):
        parse_records(b"\x89PNG\r\n\x1a\n" + b"\0" * 32, "x.png")
    with pytest.raises(ModelError, match="empty file"):
        parse_records(b"", "e.bin")
    with pytest.raises(ModelError, match="does not exist"):
        read_records(tmp_path / "nope.bin")


@pytest.mark.parametrize("arch", ["segnet", "segnet-bn"])
def test_onnx_matches_numpy_reference(arch):
    layers = random_layers(segnet_widths(16), bn=arch == "segnet-bn", seed=3)
    recs = records_from_layers(layers)
    assert len(recs) == (52 if arch == "segnet" else 152)
    rebuilt = layers_from_records(parse_records(records_to_bytes(recs)), arch)
    model = build_onnx(rebuilt, 64, 96)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 3, 64, 96), dtype=np.float32)
    got = sess.run(None, {"input": x})[0]
    want = forward_numpy(layers, x)
    assert got.shape == (3, 1, 64, 96)
    assert np.abs(got - want).max() <= 1e-4


def test_records_that_do_not_fit_name_the_conv():
    layers = random_layers(segnet_widths(16), seed=0)
    recs = records_from_layers(layers)
    with pytest.raises(ModelError, match="record 2 \\(BatchNorm gamma\\) has shape"):
        layers_from_records(recs, "segnet-bn")
    bad = list(recs)
    bad[6] = np.zeros((8, 5, 3, 3), np.float32)  # conv 3 takes 5 channels, conv 2 gives 8
    with pytest.raises(ModelError, match=r"conv 3 \(records 6-7\): record 6 takes 5 input channels"):
        layers_from_records(bad, "segnet")
    bad = list(recs)
    bad[1] = np.zeros(3, np.float32)
    with pytest.raises(ModelError, match=r"conv 0 \(records 0-1\): record 1 has shape \(3,\), expected a bias"):
        layers_from_records(bad, "segnet")
    with pytest.raises(ModelError, match=r"ends after record 50 \(51 records\), but segnet has 52"):
        layers_from_records(recs[:-1], "segnet")
    with pytest.raises(ModelError, match=r"53 records, but segnet has 52: record 52 \(shape \(2,\)\) onward"):
        layers_from_records([*recs, np.zeros(2, np.float32)], "segnet")
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_onnx(layers, 48, 64)


def test_arch_auto_recognises_segnet_and_segnet_bn_from_the_records():
    from mpi_infer.models.segnet import detect_arch

    plain = records_from_layers(random_layers(segnet_widths(16), seed=0))
    bn = records_from_layers(random_layers(segnet_widths(16), bn=True, seed=0))
    assert detect_arch(plain) == "segnet" and detect_arch(bn) == "segnet-bn"
    assert len(layers_from_records(bn, "auto")) == 26
    with pytest.raises(ModelError, match="fit no known architecture.*segnet conv 0 .*record 0 has shape"):
        detect_arch([np.zeros((10, 4), np.float32)] * 52)


def test_full_width_segnet_is_117711580_bytes():
    widths = segnet_widths(1)
    assert widths[:-1] == list(FULL_WIDTHS)
    shapes, cin = [], 3
    for w in widths:
        shapes += [(w, cin, 3, 3), (w,)]
        cin = w
    assert len(shapes) == 52
    assert sum(int(np.prod(s)) for s in shapes) == 29_427_713
    assert record_stream_size(shapes) == 117_711_580


@pytest.mark.slow
def test_full_width_segnet_written_by_the_writer(tmp_path):
    """Writes the real 112 MB file (in tmp, never committed) and reads it back as SegNet."""
    layers = random_layers(segnet_widths(1), seed=0)
    path = tmp_path / "segnet_full.bin"
    assert write_records(path, records_from_layers(layers)) == 117_711_580
    assert path.stat().st_size == 117_711_580
    back = layers_from_records(read_records(path), "segnet")
    assert sum(layer.weight.size + layer.bias.size for layer in back) == 29_427_713


def test_convert_cli(tmp_path):
    layers = random_layers(segnet_widths(16), seed=5)
    src = tmp_path / "m.bin"
    write_records(src, records_from_layers(layers))
    out = tmp_path / "m.onnx"
    assert main(["convert", str(src), "--arch", "segnet", "--out", str(out), "--size", "64", "64"]) == 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == ["batch", 3, 64, 64]
    assert main(["convert", str(src), "--arch", "segnet-bn", "--out", str(tmp_path / "x.onnx")]) == 11


def test_a_shape_that_overflows_64_bits_is_a_model_error(tmp_path):
    """Eight dims of 2^31 - 1 overflow an int64 product (to a small or negative count): named, exit 11."""
    import struct

    from mpi_infer.errors import ModelError
    from mpi_infer.models.eddl_bin import parse_records

    blob = struct.pack("<i", 8) + struct.pack("<8i", *([2**31 - 1] * 8)) + b"\0" * 64
    with pytest.raises(ModelError, match="truncated: record 0"):
        parse_records(blob, "forged.bin")
