"""Failures under a real mpirun: bad images isolated, fatal errors reported once with the right exit
code and no hang, a crashing or killed rank takes the job down fast, and --resume finishes the work
exactly once, whatever N the retry uses."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time

import cv2
import numpy as np
import pytest
from conftest import mpirun

from mpi_infer.data.dataset import load_dataset
from mpi_infer.outputs.ledger import read_ledgers
from mpi_infer.tasks.masks import mask_file_name

pytestmark = pytest.mark.mpi


def rows(d):
    with open(os.path.join(d, "per_image.csv"), newline="") as fh:
        return list(csv.DictReader(fh))


def summary(d):
    with open(os.path.join(d, "summary.json")) as fh:
        return json.load(fh)


@pytest.fixture()
def faulty_dataset(synth_small, tmp_path):
    """The small synthetic set copied, with one fault planted per image in the test split and beyond."""
    src = os.path.dirname(synth_small)
    root = tmp_path / "faulty"
    shutil.copytree(src, root)
    ds = load_dataset(str(root / "dataset.yml"))
    s = [ds.sample(i) for i in range(len(ds))]
    os.unlink(s[0].locations[0])  # missing image
    with open(s[1].locations[0], "wb") as fh:
        fh.write(b"\xff\xd8 truncated jpeg")  # undecodable
    cv2.imwrite(s[2].label_path, np.zeros((10, 10), np.uint8))  # mask size differs
    img = cv2.imread(s[3].locations[0])
    p16 = s[3].locations[0].replace(".jpg", ".png")
    cv2.imwrite(p16, img.astype(np.uint16) * 257)  # 16-bit: converted
    p4 = s[4].locations[0].replace(".jpg", ".png")
    img4 = cv2.imread(s[4].locations[0])
    cv2.imwrite(p4, np.dstack([img4, np.full(img4.shape[:2], 255, np.uint8)]))  # alpha: converted
    m = cv2.imread(s[5].label_path, cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(s[5].label_path, (m > 0).astype(np.uint8))  # 0/1 mask: failed
    cv2.imwrite(s[6].locations[0], cv2.cvtColor(cv2.imread(s[6].locations[0]), cv2.COLOR_BGR2GRAY))  # grey
    text = (root / "dataset.yml").read_text()
    text = text.replace(os.path.basename(s[3].locations[0]), os.path.basename(p16))
    text = text.replace(os.path.basename(s[4].locations[0]), os.path.basename(p4))
    (root / "dataset.yml").write_text(text)
    return str(root / "dataset.yml")


def test_per_image_faults_are_isolated_and_give_the_partial_exit_code(faulty_dataset, tmp_path):
    out = str(tmp_path / "o")
    proc = mpirun(2, "run", "--dataset", faulty_dataset, "--model", "demo-onnx", "--out", out, "--split", "all")
    assert proc.returncode == 3, proc.stderr
    by_index = {int(r["index"]): r for r in rows(out)}
    assert len(by_index) == 13
    expect = {0: ("failed", "image file not found"), 1: ("failed", "cannot be decoded"),
              2: ("failed", "mask size 10x10 differs"), 3: ("converted", "16-bit"),
              4: ("converted", "alpha channel"), 5: ("failed", "0/1 label image"),
              6: ("converted", "grey; replicated")}
    for i, (status, needle) in expect.items():
        assert by_index[i]["status"] == status, by_index[i]
        assert needle in by_index[i]["error"]
    s = summary(out)
    assert s["images"] == {"selected": 13, "scored": 9, "unscored": 0, "failed": 4, "converted": 3}
    assert s["exit_code"] == 3
    for i in range(7, 13):
        assert by_index[i]["status"] == "ok" and float(by_index[i]["dice"]) > 0.5


def _once(stderr: str) -> None:
    assert stderr.count("mpi_infer: error") == 1, stderr


@pytest.mark.parametrize("case", ["bad_yaml", "unknown_split", "missing_model", "corrupt_model", "shape",
                                  "bin_arch", "out_is_file", "out_unwritable", "out_not_empty"])
def test_fatal_errors_before_inference(case, synth_small, tmp_path):
    dataset, model, out, extra = synth_small, "demo-onnx", str(tmp_path / "o"), []
    code = {"bad_yaml": 10, "unknown_split": 10, "missing_model": 11, "corrupt_model": 11, "shape": 11,
            "bin_arch": 11, "out_is_file": 12, "out_unwritable": 12, "out_not_empty": 12}[case]
    needle = {"bad_yaml": "not valid YAML", "unknown_split": "split 'nope' does not exist",
              "missing_model": "model file does not exist", "corrupt_model": "cannot load ONNX model",
              "shape": "height is 192, but profile unet-224 resizes to 224", "bin_arch": "record 2 (BatchNorm gamma)",
              "out_is_file": "exists and is not a folder", "out_unwritable": "cannot write there",
              "out_not_empty": "folder is not empty"}[case]
    if case == "bad_yaml":
        dataset = str(tmp_path / "bad.yml")
        with open(dataset, "w") as fh:
            fh.write("images: [a.png\nsplit: {")
    elif case == "unknown_split":
        extra = ["--split", "nope"]
    elif case == "missing_model":
        model = str(tmp_path / "none.onnx")
    elif case == "corrupt_model":
        model = str(tmp_path / "bad.onnx")
        with open(model, "wb") as fh:
            fh.write(os.urandom(4096))
    elif case == "shape":
        extra = ["--profile", "unet-224"]
    elif case == "bin_arch":
        model, extra = "demo", ["--arch", "segnet-bn"]
    elif case == "out_is_file":
        with open(out, "w") as fh:
            fh.write("x")
    elif case == "out_unwritable":
        out = "/dev/null/results"
    elif case == "out_not_empty":
        os.makedirs(out)
        with open(os.path.join(out, "keep.txt"), "w") as fh:
            fh.write("precious")
    t0 = time.monotonic()
    proc = mpirun(3, "run", "--dataset", dataset, "--model", model, "--out", out, *extra)
    assert time.monotonic() - t0 < 30
    assert proc.returncode == code, proc.stderr
    assert needle in proc.stderr
    _once(proc.stderr)
    if case == "out_not_empty":
        assert os.listdir(out) == ["keep.txt"]


def test_exception_on_one_rank_aborts_the_job_with_rank_and_traceback(synth_small, tmp_path):
    out = str(tmp_path / "o")
    t0 = time.monotonic()
    proc = mpirun(3, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", out, "--split", "all",
                  "--batch-size", "2", env={"MPI_INFER_FAULT": "raise:rank=1:after=2"})
    assert time.monotonic() - t0 < 20
    assert proc.returncode == 70, proc.stderr
    assert "[rank 1] mpi_infer: fatal RuntimeError: injected fault" in proc.stderr
    assert "[rank 1] Traceback" in proc.stderr
    done = read_ledgers(out)
    assert any(r["rank"] == 1 for r in done)  # what finished before the crash is on disk
    assert not os.path.exists(os.path.join(out, "summary.json"))


def test_sigkill_mid_run_then_resume_with_another_n_covers_each_image_once(synth_small, tmp_path):
    out = str(tmp_path / "o")
    t0 = time.monotonic()
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo", "--out", out, "--split", "all",
                  "--batch-size", "2", env={"MPI_INFER_FAULT": "kill:rank=1:after=2"})
    assert time.monotonic() - t0 < 30
    assert proc.returncode != 0
    first = read_ledgers(out)
    assert 2 <= len(first) < 13
    assert not os.path.exists(os.path.join(out, "summary.json"))

    proc = mpirun(3, "run", "--dataset", synth_small, "--model", "demo", "--out", out, "--split", "all",
                  "--batch-size", "2")
    assert proc.returncode == 12 and "--resume" in proc.stderr  # refuses to mix runs silently

    proc = mpirun(3, "run", "--dataset", synth_small, "--model", "demo", "--out", out, "--split", "all",
                  "--batch-size", "2", "--resume")
    assert proc.returncode == 0, proc.stderr
    s = summary(out)
    assert s["images"]["selected"] == 13 and s["images"]["scored"] == 13
    assert s["resumed_images"] == len(first) and s["attempt"] == 1
    assert s["timings"]["images_this_attempt"] == 13 - len(first)
    got = rows(out)
    assert [int(r["index"]) for r in got] == list(range(13))

    fresh = str(tmp_path / "fresh")
    assert mpirun(1, "run", "--dataset", synth_small, "--model", "demo", "--out", fresh, "--split",
                  "all").returncode == 0
    for a, b in zip(got, rows(fresh)):
        assert (a["index"], a["status"]) == (b["index"], b["status"])
        assert abs(float(a["dice"]) - float(b["dice"])) <= 1e-9


def test_resume_refuses_a_different_model_and_overwrite_starts_over(synth_small, tmp_path):
    out = str(tmp_path / "o")
    assert mpirun(2, "run", "--dataset", synth_small, "--model", "demo", "--out", out).returncode == 0
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", out, "--resume")
    assert proc.returncode == 12 and "different model_sha256, arch" in proc.stderr
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", out, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert summary(out)["attempt"] == 0 and len(os.listdir(os.path.join(out, "ledger"))) == 2


def test_output_names_cannot_escape_the_output_folder(synth_small, tmp_path):
    assert mask_file_name(3, "../../../etc/passwd") == "0000003_passwd.png"
    assert mask_file_name(4, "/data/..") == "0000004_image.png"
    assert "/" not in mask_file_name(5, "a/b/c d?.jpg")
    # an image whose YAML path climbs out of the dataset folder: its mask still lands in --out/masks
    ds = load_dataset(synth_small)
    s = ds.sample(12)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(s.locations[0], outside / "..weird name.jpg")
    yml = tmp_path / "sub" / "d.yml"
    yml.parent.mkdir()
    yml.write_text(f"images:\n  - location: ../elsewhere/..weird name.jpg\n    label: {s.label_path}\n"
                   f"split:\n  test: [0]\n")
    out = tmp_path / "o"
    proc = mpirun(1, "run", "--dataset", str(yml), "--model", "demo-onnx", "--out", str(out), "--save-masks")
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(out / "masks") == ["0000000_weird_name.png"]
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "o", "sub"]


def test_a_failure_before_inference_leaves_a_fresh_out_folder_reusable(synth_small, tmp_path):
    out = str(tmp_path / "o")
    bad = str(tmp_path / "bad.onnx")
    with open(bad, "wb") as fh:
        fh.write(b"not onnx")
    assert mpirun(2, "run", "--dataset", synth_small, "--model", bad, "--out", out).returncode == 11
    assert not os.path.exists(out)  # we made it, so we removed it
    os.makedirs(out)
    assert mpirun(2, "run", "--dataset", synth_small, "--model", "demo", "--arch", "segnet-bn",
                  "--out", out).returncode == 11
    assert os.listdir(out) == []  # the user's empty folder stays, empty
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo", "--out", out)  # fixed: just works
    assert proc.returncode == 0, proc.stderr


RESUME_PROFILES = {  # every preset a segmentation run can use, and a custom mean/std (issue 20: always exit 12)
    "segnet-192": ["--model", "demo"],
    "unet-224": ["--model", "demo", "--profile", "unet-224"],
    "cpp-512": ["--model", "demo", "--profile", "cpp-512"],
    "custom-mean-std": ["--model", "demo-onnx", "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25"],
}


@pytest.mark.parametrize("name", list(RESUME_PROFILES))
def test_resume_of_the_same_command_continues_with_every_profile(name, synth_small, tmp_path):
    """The same command twice with --resume (what every MPIJob retry does): the second run reuses every record."""
    out = str(tmp_path / "o")
    args = ["run", "--dataset", synth_small, "--out", out, "--split", "all", *RESUME_PROFILES[name], "--resume"]
    first = mpirun(2, *args)
    assert first.returncode == 0, first.stderr
    again = mpirun(3, *args)
    assert again.returncode == 0, again.stderr
    s = summary(out)
    assert s["attempt"] == 1 and s["resumed_images"] == 13 and s["timings"]["images_this_attempt"] == 0
    with open(os.path.join(out, "run.json")) as fh:
        recorded = json.load(fh)["profile"]
    assert recorded == s["profile"] and (recorded["mean"] is None) == (name == "segnet-192")
