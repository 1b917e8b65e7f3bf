"""Volumes: NIfTI volumes (the files nibabel ships) and a DICOM series listed slice by slice, scored slice by
slice as ECVL's pipelines push them, each slice's score equal to an independent nibabel/pydicom computation of
ECVL's rules, each volume's 3D Dice equal to its pooled counts, for N = 1, 2, 3 and after a kill and --resume."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import onnxruntime as ort
import pydicom
import pytest
import yaml
from conftest import mpirun, one_channel_model, read_rows, read_summary

pytestmark = pytest.mark.mpi
NIB_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")
PYDICOM_FILES = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
SIZE = 64


@pytest.fixture(scope="module")
def volume_set(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("volumes")
    # two NIfTI volumes nibabel ships, each with a label volume made here (its brighter half)
    for name in ("anatomical.nii", "standard.nii.gz"):
        shutil.copy(os.path.join(NIB_DATA, name), root / name)
        img = nib.load(root / name)
        arr = np.asarray(img.dataobj.get_unscaled())
        nib.save(nib.Nifti1Image((arr > np.median(arr)).astype(np.uint8), img.affine), root / f"label-{name}")
    # a DICOM series of 3 slices (pydicom's CT, shifted), written with pydicom, and its NIfTI label, which runs the
    # other way (UC11's kidney data: --slice-order reversed)
    ct = pydicom.dcmread(os.path.join(PYDICOM_FILES, "CT_small.dcm"))
    base = ct.pixel_array
    series, labels = [], []
    for k in range(3):
        ct.PixelData = np.roll(base, 20 * k, axis=1).astype(base.dtype).tobytes()
        ct.InstanceNumber = k + 1
        ct.save_as(root / f"ct_{k}.dcm")
        series.append(f"ct_{k}.dcm")
        labels.append(np.roll(base, 20 * k, axis=1) > 1000)  # the slice's bright part, in the file's order
    label = np.stack(labels[::-1], axis=2).transpose(1, 0, 2)  # NIfTI x, y, z: slice k = arr[:, :, k].T
    nib.save(nib.Nifti1Image(label.astype(np.uint8), np.eye(4)), root / "label-ct.nii.gz")
    shutil.copy(os.path.join(PYDICOM_FILES, "MR_small.dcm"), root / "mr.dcm")  # a 2D image among the volumes
    images = [{"location": "anatomical.nii", "label": "label-anatomical.nii"},
              {"location": "mr.dcm"},
              {"location": series, "label": "label-ct.nii.gz"},
              {"location": "standard.nii.gz", "label": "label-standard.nii.gz"}]
    path = root / "dataset.yml"
    path.write_text(yaml.safe_dump({"name": "volumes", "images": images, "split": {"test": [0, 1, 2, 3]}}))
    return {"dataset": str(path), "root": root, "model": one_channel_model(str(root / "one.onnx"), SIZE)}


def smallest(values: np.ndarray) -> np.ndarray:
    lo, hi = values.min(), values.max()
    dtype = next(t for t in (np.uint8, np.uint16, np.int16) if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
    return values.astype(dtype)


def expected(root, model: str) -> dict[tuple[int, int], tuple[int, int, int]]:
    """(volume, slice) -> (tp, fp, fn) by nibabel/pydicom, ECVL's rules, the raw intensity, the same model."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])

    def counts(values: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
        small = cv2.resize(smallest(values), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        prob = session.run(None, {"x": small[None, None]})[0][0, 0]
        g = cv2.resize(np.where(gt > 0, 255, 0).astype(np.uint8), (SIZE, SIZE), interpolation=cv2.INTER_NEAREST) >= 128
        p = prob >= 0.5
        return int(np.sum(p & g)), int(np.sum(p & ~g)), int(np.sum(~p & g))

    out = {}
    for volume, name in ((0, "anatomical.nii"), (3, "standard.nii.gz")):
        arr = np.asarray(nib.load(root / name).dataobj.get_unscaled())  # stored values: no scl_slope, no reorient
        lab = np.asarray(nib.load(root / f"label-{name}").dataobj)
        for k in range(arr.shape[2]):
            out[(volume, k)] = counts(arr[:, :, k].T, lab[:, :, k].T)
    lab = np.asarray(nib.load(root / "label-ct.nii.gz").dataobj)
    for k in range(3):  # --slice-order reversed: slice k is file 2-k
        ds = pydicom.dcmread(root / f"ct_{2 - k}.dcm")
        values = np.trunc(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
        out[(2, k)] = counts(values, lab[:, :, k].T)
    return out


def dice(tp: int, fp: int, fn: int, eps: float = 0.0) -> float:
    """Dice from counts; per slice with upstream's eps 1e-6 (UCP python/utils.py), per volume without."""
    return 1.0 if tp + fp + fn == 0 else (2 * tp + eps) / (2 * tp + fp + fn + eps)


def check(out: str, want: dict) -> list[tuple]:
    rows = read_rows(out)
    slices = [r for r in rows if r["slice"] != ""]
    assert len(rows) == 1 + 25 + 3 + 7 and len(slices) == 35  # every slice exactly once, the 2D image too
    assert [int(r["index"]) for r in rows] == sorted(int(r["index"]) for r in rows)
    for r in slices:
        key = (int(r["volume"]), int(r["slice"]))
        assert float(r["dice"]) == pytest.approx(dice(*want[key], eps=1e-6), abs=1e-12), (key, r)
    import csv

    with open(os.path.join(out, "per_volume.csv"), newline="") as fh:
        volumes = {int(v["volume"]): v for v in csv.DictReader(fh)}
    for v, z in ((0, 25), (2, 3), (3, 7)):
        tp, fp, fn = (sum(want[(v, k)][j] for k in range(z)) for j in range(3))
        assert (int(volumes[v]["tp"]), int(volumes[v]["fp"]), int(volumes[v]["fn"])) == (tp, fp, fn)
        assert int(volumes[v]["slices"]) == z and float(volumes[v]["dice_3d"]) == pytest.approx(dice(tp, fp, fn))
    summary = read_summary(out)
    assert summary["volumes"]["volumes"] == 3 and summary["images"]["selected"] == 36
    lo, hi = summary["volumes"]["statistics"]["mean_dice_3d"]["ci95"]
    assert lo <= summary["volumes"]["metrics"]["mean_dice_3d"] <= hi
    return [(r["index"], r["volume"], r["slice"], r["dice"]) for r in rows]


def run(volume_set, out: str, n: int, *extra: str, env=None):
    return mpirun(n, "run", "--dataset", volume_set["dataset"], "--model", volume_set["model"], "--out", out,
                  "--size", str(SIZE), str(SIZE), "--intensity", "raw", "--slice-order", "reversed",
                  "--batch-size", "2", "--bootstrap", "200", *extra, env=env)


def test_volume_slices_and_3d_scores_equal_an_independent_computation_for_any_n(volume_set, tmp_path):
    want = expected(volume_set["root"], volume_set["model"])
    results = []
    for n in (1, 2, 3):
        proc = run(volume_set, str(tmp_path / f"n{n}"), n)
        assert proc.returncode == 0, proc.stderr
        results.append(check(str(tmp_path / f"n{n}"), want))
    assert results[0] == results[1] == results[2]


def test_a_killed_rank_then_resume_gives_the_same_volumes(volume_set, tmp_path):
    out = str(tmp_path / "out")
    killed = run(volume_set, out, 2, env={"MPI_INFER_FAULT": "kill:rank=1:after=4"})
    assert killed.returncode != 0
    resumed = run(volume_set, out, 3, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    want = expected(volume_set["root"], volume_set["model"])
    check(out, want)
    assert read_summary(out)["resumed_images"] > 0


def test_the_dry_run_counts_slices_and_a_2d_label_on_a_volume_is_refused(volume_set, tmp_path):
    proc = run(volume_set, str(tmp_path / "dry"), 1, "--dry-run")
    assert proc.returncode == 0 and "36 image(s)" in proc.stdout + proc.stderr
    root = volume_set["root"]
    cv2.imwrite(str(root / "flat.png"), np.zeros((41, 33), np.uint8))
    bad = root / "bad.yml"
    bad.write_text(yaml.safe_dump({"name": "b", "images": [{"location": "anatomical.nii", "label": "flat.png"}],
                                   "split": {"test": [0]}}))
    proc = mpirun(1, "run", "--dataset", str(bad), "--model", volume_set["model"], "--out", str(tmp_path / "b"),
                  "--size", str(SIZE), str(SIZE))
    assert proc.returncode == 10 and "is a volume of 25 slices" in proc.stderr and "a NIfTI volume" in proc.stderr


@pytest.mark.parametrize("preset", ["ct", "mri"])
def test_synthetic_ct_and_mri_volumes_run_alike_for_any_n(preset, tmp_path):
    """synth --preset ct (DICOM series, one MONOCHROME1 slice, PatientID) and mri (NIfTI with scl_slope): read as
    ECVL reads them (no inversion, no scaling, each noted), the same rows for N = 1 and 3."""
    from mpi_infer.data.synth import SynthSpec
    from mpi_infer.data.synth_volumes import make_volume_dataset

    dataset = make_volume_dataset(str(tmp_path / "data"), SynthSpec(n=5, seed=4), preset, size=64, slices=(4, 6))
    model = str(tmp_path / "data" / "model.onnx")
    outs = []
    for n in (1, 3):
        out = str(tmp_path / f"out{n}")
        proc = mpirun(n, "run", "--dataset", dataset, "--model", model, "--profile", "kidney-seg", "--size", "64", "64",
                      "--out", out, "--split", "all", "--patient-by", "dicom:PatientID", "--quiet")
        assert proc.returncode == 0, proc.stderr
        outs.append([{k: v for k, v in r.items() if k != "rank"} for r in read_rows(out)])
    assert outs[0] == outs[1]  # every column but the rank that ran it
    summary = read_summary(out)
    assert summary["volumes"]["volumes"] == 5 and summary["metrics"]["mean_dice"] > 0.8  # the threshold model fits
    notes = " ".join(r["error"] for r in outs[0])
    if preset == "ct":
        assert "MONOCHROME1 (white is low); not inverted" in notes
        from mpi_infer.outputs.report import write_report

        page = Path(write_report(out)).read_text(encoding="utf-8")  # both levels and the patients
        assert "<h2>Volumes (3D scores" in page and "<h2>Patients (--patient-by dicom:PatientID)" in page
        assert summary["patients"]["patients"] == 3 and summary["patients"]["unmatched_images"] == 0
    else:
        assert "scl_slope 2, scl_inter -1024 not applied" in notes


def sample_expected(root, model: str, slices: int) -> dict[tuple[int, int], tuple[int, int, int] | str]:
    """(volume, slice) -> (tp, fp, fn) for a model taking K consecutive slices: slice k is scored from the sample
    of slices s..s+K-1, s = min(K floor(k/K), Z-K) (stride K, the last sample ending on the last slice), its map
    k-s; nibabel/pydicom values as ECVL reads them, the K slices resized together."""
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    volumes = {}
    for volume, name in ((0, "anatomical.nii"), (3, "standard.nii.gz")):
        arr = np.asarray(nib.load(root / name).dataobj.get_unscaled())
        lab = np.asarray(nib.load(root / f"label-{name}").dataobj)
        volumes[volume] = ([arr[:, :, k].T for k in range(arr.shape[2])], [lab[:, :, k].T for k in range(arr.shape[2])])
    lab = np.asarray(nib.load(root / "label-ct.nii.gz").dataobj)
    ct = []
    for k in range(3):  # --slice-order reversed
        ds = pydicom.dcmread(root / f"ct_{2 - k}.dcm")
        ct.append(np.trunc(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)))
    volumes[2] = (ct, [lab[:, :, k].T for k in range(3)])
    out: dict[tuple[int, int], tuple[int, int, int] | str] = {}
    for volume, (values, labels) in volumes.items():
        depth = len(values)
        for k in range(depth):
            if depth < slices:
                out[(volume, k)] = f"the volume has {depth} slice(s); the model takes {slices} consecutive slices"
                continue
            s = min(k // slices * slices, depth - slices)
            stack = smallest(np.stack(values[s:s + slices], axis=2))
            small = cv2.resize(stack, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR).astype(np.float32)
            prob = session.run(None, {"x": small.transpose(2, 0, 1)[None]})[0][0, k - s]
            g = cv2.resize(np.where(labels[k] > 0, 255, 0).astype(np.uint8), (SIZE, SIZE),
                           interpolation=cv2.INTER_NEAREST) >= 128
            p = prob >= 0.5
            out[(volume, k)] = (int(np.sum(p & g)), int(np.sum(p & ~g)), int(np.sum(~p & g)))
    return out


@pytest.fixture(scope="module")
def volumes_only(volume_set) -> str:
    path = volume_set["root"] / "volumes-only.yml"
    doc = yaml.safe_load(Path(volume_set["dataset"]).read_text())
    path.write_text(yaml.safe_dump({**doc, "split": {"test": [0, 2, 3]}}))
    return str(path)


def check_samples(out: str, want: dict) -> list[tuple]:
    rows = read_rows(out)
    assert len(rows) == 25 + 3 + 7 and all(r["slice"] != "" for r in rows)  # every slice once, no tail dropped
    for r in rows:
        key = (int(r["volume"]), int(r["slice"]))
        if isinstance(want[key], str):
            assert r["status"] == "failed" and want[key] in r["error"], (key, r)
        else:
            assert r["status"] == "ok" and float(r["dice"]) == pytest.approx(dice(*want[key], eps=1e-6), abs=1e-12), \
                (key, r)
    return [(r["index"], r["volume"], r["slice"], r["status"], r["dice"]) for r in rows]


def test_a_k_slice_model_scores_every_slice_from_its_sample_for_any_n_and_after_a_kill(volume_set, volumes_only,
                                                                                      tmp_path):
    """The MS pipeline's in_channels: K consecutive slices per sample (stride K), one map per slice; the volume's
    last sample ends on its last slice (upstream drops those slices); a volume shorter than K fails by name.
    Each rank holds whole volumes."""
    from conftest import slices_model

    results = []
    for slices, runs in ((3, (1, 2, 3, "dynamic")), (4, (2,))):
        model = slices_model(str(tmp_path / f"k{slices}.onnx"), SIZE, slices)
        want = sample_expected(volume_set["root"], model, slices)
        for n in runs:
            out = str(tmp_path / f"k{slices}n{n}")
            schedule = ("--schedule", "dynamic", "--chunk-size", "2") if n == "dynamic" else ()
            proc = mpirun(3 if n == "dynamic" else n, "run", "--dataset", volumes_only, "--model", model, "--out", out,
                          "--size", str(SIZE), str(SIZE), "--intensity", "raw", "--slice-order", "reversed",
                          "--batch-size", "2", *schedule)
            assert proc.returncode == (0 if slices == 3 else 3), proc.stderr
            assert f"each sample is {slices} consecutive slices" in proc.stdout + proc.stderr
            results.append(check_samples(out, want))
            ranks = {}
            for r in read_rows(out):
                ranks.setdefault(r["volume"], set()).add(r["rank"])
            assert all(len(v) == 1 for v in ranks.values()), ranks  # a volume is read by one rank
    assert results[0] == results[1] == results[2] == results[3]  # N = 1, 2, 3, and the dynamic schedule
    out = str(tmp_path / "killed")
    model = str(tmp_path / "k3.onnx")
    args = ("run", "--dataset", volumes_only, "--model", model, "--out", out, "--size", str(SIZE), str(SIZE),
            "--intensity", "raw", "--slice-order", "reversed", "--batch-size", "2")
    assert mpirun(2, *args, env={"MPI_INFER_FAULT": "kill:rank=0:after=4"}).returncode != 0
    proc = mpirun(3, *args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert check_samples(out, sample_expected(volume_set["root"], model, 3)) == results[0]


def test_a_k_slice_model_refuses_2d_images_and_a_map_per_class(volume_set, volumes_only, tmp_path):
    from conftest import slices_model

    model = slices_model(str(tmp_path / "k3.onnx"), SIZE, 3)
    proc = mpirun(1, "run", "--dataset", volume_set["dataset"], "--model", model, "--out", str(tmp_path / "a"),
                  "--size", str(SIZE), str(SIZE))
    assert proc.returncode == 12 and "images[1] is a 2D image, and the model takes 3 consecutive slices" in proc.stderr
    assert not os.path.exists(tmp_path / "a" / "run.json")
    proc = mpirun(1, "run", "--dataset", volumes_only, "--model", model, "--out",
                  str(tmp_path / "b"), "--size", str(SIZE), str(SIZE), "--activation", "softmax")
    assert proc.returncode == 11 and "gives one map per slice, not classes" in proc.stderr


def ecvl_reads(readers, volume_set) -> dict:
    """What ``readers`` make of the fixture's NIfTI volumes (image and label) and its DICOM series."""
    root, notes = volume_set["root"], []
    out = {name: readers.nifti_volume(str(root / name), notes)
           for name in ("anatomical.nii", "standard.nii.gz", "label-anatomical.nii", "label-ct.nii.gz")}
    return out, notes


@pytest.mark.usefixtures("ecvl_stack")
def test_ecvls_imread_gives_the_nifti_values_our_reader_gives_and_the_same_scores(volume_set, volumes_only,
                                                                                 tmp_path):
    """Where pyecvl imports: ECVL's NiftiRead and nibabel's stored values agree voxel for voxel, and a run with
    --loader ecvl (ECVL reads, our loader slices) scores every slice as --loader opencv does, K-slice model too."""
    from conftest import slices_model

    from mpi_infer.loaders.ecvl_files import EcvlReaders
    from mpi_infer.loaders.medical import READERS

    ecvl, ecvl_notes = ecvl_reads(EcvlReaders(), volume_set)
    ours, our_notes = ecvl_reads(READERS, volume_set)
    for name in ours:
        assert ecvl[name].shape == ours[name].shape and np.array_equal(ecvl[name], ours[name]), name
    assert ecvl_notes == our_notes
    nifti_only = volume_set["root"] / "nifti-only.yml"
    doc = yaml.safe_load(Path(volumes_only).read_text())
    nifti_only.write_text(yaml.safe_dump({**doc, "split": {"test": [0, 3]}}))
    for model in (volume_set["model"], slices_model(str(tmp_path / "k3.onnx"), SIZE, 3)):
        got = {}
        for loader in ("ecvl", "opencv"):
            out = str(tmp_path / f"{loader}-{os.path.basename(model)}")
            proc = mpirun(2, "run", "--dataset", str(nifti_only), "--model", model, "--out", out, "--size",
                          str(SIZE), str(SIZE), "--intensity", "raw", "--loader", loader, "--engine", "onnx")
            assert proc.returncode == 0, proc.stderr
            got[loader] = [(r["index"], r["volume"], r["slice"], r["status"], r["dice"]) for r in read_rows(out)]
        assert got["ecvl"] == got["opencv"] and len(got["ecvl"]) == 25 + 7
        backend = read_summary(out.replace("opencv-", "ecvl-"))["backend"]
        assert backend["loader"] == "ecvl" and "ECVL reads each file (ImRead)" in backend["loader_chosen_because"]


@pytest.mark.usefixtures("ecvl_stack")
def test_ecvls_dicom_reading_gives_our_values(volume_set):
    """Where pyecvl imports with DICOM support: DCMTK's modality transform (truncated) equals ours, slice by slice;
    pyecvl's minimal build has no DICOM, which the reader says."""
    from mpi_infer.loaders.ecvl_files import EcvlReaders
    from mpi_infer.loaders.imagefiles import ImageFault
    from mpi_infer.loaders.medical import READERS

    readers = EcvlReaders()
    for k in range(3):
        path = str(volume_set["root"] / f"ct_{k}.dcm")
        try:
            got = readers.dicom(path, [])
        except ImageFault as exc:
            assert "without DICOM support" in str(exc)
            pytest.skip(f"this pyecvl reads no DICOM: {exc}")
        assert np.array_equal(got, READERS.dicom(path, [])), path


def test_a_k_slice_sample_says_its_volumes_notes_once(tmp_path):
    """A NIfTI volume's scaling note comes with each of its slices; the K-slice sample built from them says it once,
    as a single slice does."""
    from mpi_infer.loaders.volumes import VolumeCache, read_sample

    img = nib.Nifti1Image(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), np.eye(4))
    img.header.set_slope_inter(2.0, 1.0)
    nib.save(img, tmp_path / "v.nii.gz")
    notes: list[str] = []
    stack, start = read_sample((str(tmp_path / "v.nii.gz"),), 5, 3, "yaml", VolumeCache(), notes)
    assert stack.shape == (5, 4, 3) and start == 3  # the last sample ends on the last slice
    assert notes == ["NIfTI scl_slope 2, scl_inter 1 not applied (the stored values, as ECVL reads them)"]
