"""ISIC-sized photographs: the synthetic preset, the opt-in reduced JPEG decode, cost-balanced shards under a real
mpirun, and the honest baseline script (scripts/baseline_infer.py) scoring exactly as mpi_infer does."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROOT, mpirun, read_rows, read_summary

from mpi_infer.data.synth import SynthSpec, isic_sample, make_dataset
from mpi_infer.data.worklist import WorkItem
from mpi_infer.loaders.imagefiles import read_header
from mpi_infer.loaders.opencv import load_item, read_image, reduction
from mpi_infer.models.files import demo_model
from mpi_infer.profiles import get_profile


def test_isic_preset_writes_photograph_like_jpegs_and_segmentation_pngs(tmp_path):
    rgb, mask = isic_sample(3, 0, size=(1022, 767))
    assert rgb.shape == (767, 1022, 3) and mask.shape == (767, 1022) and set(np.unique(mask)) == {0, 255}
    ok, jpeg = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 90])
    bpp = len(jpeg) * 8 / (767 * 1022)
    assert ok and 0.5 <= bpp <= 2.0, bpp  # compresses like a photograph, not like white noise
    yml = make_dataset(str(tmp_path / "d"), SynthSpec(n=3, seed=5, preset="isic"))
    text = Path(yml).read_text()
    assert "_segmentation.png" in text and "images_segmentation/ISIC_005000000.jpg" in text
    for i in range(3):
        head = read_header(str(tmp_path / "d" / "images_segmentation" / f"ISIC_005{i:06d}.jpg"), "image")
        assert min(head.width, head.height) >= 767 and max(head.width, head.height) <= 6688


def test_reduction_keeps_both_sides_at_least_twice_the_network_input():
    assert reduction((3000, 4000), (192, 192), None) == 4  # 750x1000 >= 384
    assert reduction((767, 1022), (192, 192), None) == 1  # 1/2 would give 383 < 384
    assert reduction((4439, 6688), (192, 192), None) == 8
    assert reduction((3000, 4000), (512, 512), None) == 2
    assert reduction((4000, 1000), (192, 192), 6) == reduction((1000, 4000), (192, 192), None)  # displayed sides


def write_jpeg(path: Path, h: int, w: int, orientation: int | None = None) -> str:
    from PIL import Image

    rgb, _ = isic_sample(7, 1, size=(w, h))
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, quality=90, exif=exif)
    return str(path)


def test_reduced_decode_is_a_dct_scaled_jpeg_with_the_full_size_kept(tmp_path):
    path = write_jpeg(tmp_path / "big.jpg", 3000, 4000)
    exact, full = read_image(path, [])
    small, full_reduced = read_image(path, [], (192, 192))
    assert exact.shape == (3000, 4000, 3) and full == full_reduced == (3000, 4000)
    assert small.shape == (750, 1000, 3)  # libjpeg's 1/4 scale
    assert np.abs(cv2.resize(exact, (1000, 750), interpolation=cv2.INTER_AREA).astype(int) - small).mean() < 3
    rotated = write_jpeg(tmp_path / "rot.jpg", 3000, 4000, orientation=6)
    img, shown = read_image(rotated, [], (192, 192))
    assert shown == (4000, 3000) and img.shape[:2] == (1000, 750)  # EXIF applied, as the exact decode does
    png = str(tmp_path / "big.png")
    cv2.imwrite(png, exact)
    assert read_image(png, [], (192, 192))[0].shape == exact.shape  # PNG: always decoded exactly


def test_reduced_decode_scores_close_to_exact_and_keeps_masks_exact(tmp_path):
    img = write_jpeg(tmp_path / "i.jpg", 3000, 4000)
    mask = np.zeros((3000, 4000), np.uint8)
    mask[800:2200, 1000:3000] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    item = WorkItem(0, "test", (img,), str(tmp_path / "m.png"))
    prof = get_profile("segnet-192")
    exact, reduced = load_item(item, prof), load_item(item, prof, "reduced")
    assert exact.status == reduced.status == "ok" and exact.original_hw == reduced.original_hw == (3000, 4000)
    assert np.array_equal(exact.mask, reduced.mask)
    assert np.abs(exact.image.astype(int) - reduced.image).mean() < 2


def test_decode_reduced_under_mpirun_is_recorded_and_refused_with_the_ecvl_loader(synth_small, tmp_path):
    out = str(tmp_path / "o")
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", out, "--decode", "reduced",
                  "--split", "all")
    assert proc.returncode == 0, proc.stderr
    s = read_summary(out)
    assert s["decode"] == "reduced" and s["backend"]["loader"] == "opencv"
    proc = mpirun(1, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", out, "--resume",
                  "--split", "all")
    assert proc.returncode == 12 and "different decode" in proc.stderr  # other pixels: records never mix
    proc = mpirun(1, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", str(tmp_path / "e"),
                  "--decode", "reduced", "--loader", "ecvl")
    assert proc.returncode == 12 and "--decode reduced needs the OpenCV loader" in proc.stderr


def test_shards_are_cut_by_file_bytes_by_default(synth_small, tmp_path):
    out = str(tmp_path / "o")
    assert mpirun(3, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", out, "--split", "all",
                  "--quiet").returncode == 0
    assert read_summary(out)["sharding"] == "bytes"
    counted = str(tmp_path / "c")
    assert mpirun(3, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", counted, "--split", "all",
                  "--quiet", "--shard-by", "images").returncode == 0
    assert read_summary(counted)["sharding"] == "images"
    assert [(r["index"], r["dice"]) for r in read_rows(out)] == [(r["index"], r["dice"]) for r in read_rows(counted)]


@pytest.mark.slow
def test_the_baseline_script_scores_exactly_as_mpi_infer(synth_small, tmp_path):
    out = str(tmp_path / "o")
    assert mpirun(2, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", out, "--split", "all",
                  "--quiet").returncode == 0
    table = str(tmp_path / "baseline.csv")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "baseline_infer.py"), "--dataset", synth_small,
                           "--model", demo_model("onnx"), "--split", "all", "--csv", table],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.splitlines()[-1])
    assert figures["images"] == 13 and figures["steady_images_per_s"] > 0
    with open(table, newline="") as fh:
        theirs = {int(r["index"]): float(r["dice"]) for r in csv.DictReader(fh)}
    ours = {int(r["index"]): float(r["dice"]) for r in read_rows(out)}
    assert ours.keys() == theirs.keys() and all(abs(ours[i] - theirs[i]) <= 1e-12 for i in ours)
    assert os.path.getsize(table) > 0
