"""DICOM (and NIfTI) files as a DeepHealth user's YAML names them: read by content as ECVL reads them, fed to a
one-channel model grey, and scored exactly as an independent pydicom + numpy computation of ECVL's rules says,
for any number of ranks. The files are the ones pydicom and nibabel ship (read from the installed packages:
``get_testdata_files`` would try to download more)."""

from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import onnxruntime as ort
import pydicom
import pytest
import yaml
from conftest import mpirun, one_channel_model, read_rows

from mpi_infer.loaders.medical import read_dicom, sniff

pytestmark = pytest.mark.mpi
PYDICOM_FILES = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
# CT with RescaleSlope/Intercept; MR uncompressed, RLE, JPEG-LS, JPEG 2000 (none of which ECVL's DCMTK decodes
# but JPEG); an RGB ultrasound (big endian); a 2-frame RGB file; a damaged JPEG; an RT plan (no image)
FILES = ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "693_J2KI.dcm",
         "MR_small_jp2klossless.dcm", "ExplVR_BigEnd.dcm", "SC_rgb_rle_2frame.dcm", "JPEG-lossy.dcm", "rtplan.dcm"]
SIZE = 64


@pytest.fixture(scope="module")
def dicom_set(tmp_path_factory) -> dict:
    """The DICOM files copied into a dataset folder (one renamed .png: found by content), each with a mask."""
    root = tmp_path_factory.mktemp("dicom")
    images = []
    for k, name in enumerate(FILES):
        target = root / (f"ct-{k}.png" if name == "CT_small.dcm" else name)  # a wrong extension
        shutil.copy(os.path.join(PYDICOM_FILES, name), target)
        entry = {"location": target.name}
        ds = pydicom.dcmread(target, stop_before_pixels=True)
        if "Rows" in ds:
            mask = np.zeros((ds.Rows, ds.Columns), np.uint8)
            mask[ds.Rows // 4: ds.Rows * 3 // 4, ds.Columns // 3: ds.Columns * 2 // 3] = 255
            cv2.imwrite(str(root / f"{name}.mask.png"), mask)
            entry["label"] = f"{name}.mask.png"
        images.append(entry)
    images.append({"location": "ct-0.png"})  # no label: the pneumothorax test split's case
    path = root / "dataset.yml"
    path.write_text(yaml.safe_dump({"name": "dicom", "classes": [], "images": images,
                                    "split": {"test": list(range(len(images)))}}))
    return {"dataset": str(path), "root": root, "model": one_channel_model(str(root / "one.onnx"), SIZE)}


def ecvl_values(path: str) -> np.ndarray:
    """ECVL's DicomRead, independently: the stored values, frame 0, RescaleSlope/Intercept applied and cast to an
    integer (a C cast truncates toward zero); MONOCHROME1 not inverted; colour as RGB."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    if str(ds.PhotometricInterpretation).startswith("MONOCHROME"):
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        arr = np.trunc(arr.astype(np.float64) * slope + intercept)
    return arr


def expected_dice(path: str, mask_path: str, intensity: str) -> float:
    values = ecvl_values(path)
    if values.ndim == 3:  # ColorType::GRAY from RGB
        r, g, b = (values[..., k].astype(np.float64) for k in range(3))
        values = np.rint(0.299 * r + 0.587 * g + 0.114 * b)
    lo, hi = values.min(), values.max()
    dtype = next(t for t in (np.uint8, np.uint16, np.int16) if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)
    small = cv2.resize(values.astype(dtype), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    x = small / 255.0 if intensity == "255" else small
    session = ort.InferenceSession(os.path.join(os.path.dirname(path), "one.onnx"), providers=["CPUExecutionProvider"])
    prob = session.run(None, {"x": x[None, None].astype(np.float32)})[0][0, 0]
    gt = cv2.resize(cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE), (SIZE, SIZE), interpolation=cv2.INTER_NEAREST) >= 128
    pred = prob >= 0.5
    tp, fp, fn = np.sum(pred & gt), np.sum(pred & ~gt), np.sum(~pred & gt)
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("intensity", ["raw", "255"])
def test_dicom_scores_equal_an_independent_computation_for_any_n(dicom_set, tmp_path, n, intensity):
    out = str(tmp_path / "out")
    proc = mpirun(n, "run", "--dataset", dicom_set["dataset"], "--model", dicom_set["model"], "--out", out,
                  "--size", str(SIZE), str(SIZE), "--intensity", intensity, "--batch-size", "2", "--save-masks")
    assert proc.returncode == 3, proc.stderr  # two files cannot be scored; every other one is
    assert "the model takes 1 channel(s): images are read grey" in proc.stderr
    rows = {int(r["index"]): r for r in read_rows(out)}
    root = dicom_set["root"]
    for k, name in enumerate(FILES):
        row = rows[k]
        if name == "JPEG-lossy.dcm":
            assert row["status"] == "failed" and "DICOM image cannot be decoded (JPEG Extended" in row["error"]
            continue
        if name == "rtplan.dcm":
            assert row["status"] == "failed" and "holds no image" in row["error"]
            continue
        location = root / (f"ct-{k}.png" if name == "CT_small.dcm" else name)
        want = expected_dice(str(location), str(root / f"{name}.mask.png"), intensity)
        assert float(row["dice"]) == pytest.approx(want, abs=1e-9), (name, row)
        if name in ("ExplVR_BigEnd.dcm", "SC_rgb_rle_2frame.dcm"):
            assert row["status"] == "converted" and "converted to grey" in row["error"]
        if name == "SC_rgb_rle_2frame.dcm":
            assert "frame 0 read" in row["error"]
    unlabelled = rows[len(FILES)]
    assert unlabelled["status"] == "unscored" and unlabelled["dice"] == ""  # predicted, counted, not scored
    masks = [f for f in os.listdir(os.path.join(out, "masks")) if f.startswith(f"{len(FILES):07d}_")]
    assert len(masks) == 1 and cv2.imread(os.path.join(out, "masks", masks[0])).shape[:2] == (128, 128)


def test_files_are_recognised_by_content_and_modality_values_are_ecvls(dicom_set):
    root = dicom_set["root"]
    assert sniff(str(root / "ct-0.png")) == "dicom"  # the CT behind a .png name
    notes: list[str] = []
    ct = read_dicom(str(root / "ct-0.png"), notes)
    assert ct.dtype == np.int16 and ct.min() < 0  # Hounsfield units: RescaleIntercept -1024 applied
    assert np.array_equal(ct, ecvl_values(str(root / "ct-0.png")))
    rle = read_dicom(str(root / "MR_small_RLE.dcm"), [])
    assert np.array_equal(rle, read_dicom(str(root / "MR_small.dcm"), []))  # the same pixels, RLE-compressed
    assert np.array_equal(read_dicom(str(root / "MR_small_jp2klossless.dcm"), []), rle)


def test_the_dry_run_reads_every_header_and_refuses_a_set_it_cannot_read(dicom_set, tmp_path):
    proc = mpirun(1, "run", "--dataset", dicom_set["dataset"], "--model", dicom_set["model"], "--out",
                  str(tmp_path / "o"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "dry run: 20 file(s) checked from their headers: 19 readable (10 DICOM, 9 PNG); 1 unsupported" in proc.stderr
    assert "rtplan.dcm" in proc.stderr and not (tmp_path / "o").exists()
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"name": "bad", "images": ["nope.dcm", "bad.yml"], "split": {"test": [0, 1]}}))
    proc = mpirun(1, "run", "--dataset", str(bad), "--model", dicom_set["model"], "--out", str(tmp_path / "o"),
                  "--dry-run")
    assert proc.returncode == 10 and "none of the 2 selected file(s) can be read" in proc.stderr
    assert "1 missing" in proc.stderr and "1 unsupported" in proc.stderr


def test_the_ecvl_loader_reads_medical_sets_with_ecvls_imread_and_says_so():
    """ECVL's DLDataset cannot serve DICOM, NIfTI or volumes: the ECVL loader reads them with ECVL's ImRead
    through our loader (loaders/ecvl_files.py), and says why; the OpenCV loader is unchanged."""
    from mpi_infer.loaders import open_loader
    from mpi_infer.profiles import get_profile
    from mpi_infer.stages.stack import Stack, for_medical

    auto = Stack("ecvl", "eddl", "auto: pyecvl imports", "auto: a .bin")
    assert for_medical(auto, "") is auto
    volumes = for_medical(auto, "volumes")
    assert volumes.loader == "ecvl" and volumes.engine == "eddl" and "ECVL reads each file (ImRead)" in \
        volumes.loader_why and volumes.loader_why.startswith("auto: pyecvl imports")
    assert for_medical(Stack("ecvl", "onnx", "--loader ecvl", "auto"), "files").loader == "ecvl"
    opencv = Stack("opencv", "onnx", "requested", "auto")
    assert for_medical(opencv, "volumes") is opencv
    assert open_loader("opencv", get_profile("kidney-seg"), medical="volumes") is None  # pydicom and nibabel
