"""Synthetic volumes for the DeepHealth volume use cases (the tests' and the volume demo's data; no scan ships here):

- ``ct`` (UC11's kidney layout): each volume a series of per-slice DICOM files (CT, int16 Hounsfield units stored
  with RescaleSlope 1 and RescaleIntercept -1024, PatientID set, two volumes per patient), listed slice by slice
  in the YAML's ``location``, with one NIfTI label volume; the first slice of the first series is MONOCHROME1
  (ECVL does not invert it: its values are read as they are);
- ``mri`` (MSSEG's layout): each volume one NIfTI file whose stored values carry ``scl_slope`` 2 (ECVL reads the
  stored values, unscaled), with a NIfTI label volume.

A body (an ellipse of soft tissue in air) holds a lesion (an ellipsoid, brighter) that the label marks. Volume i
depends only on (seed, i). ``model.onnx`` beside the YAML is an analytic one-channel threshold model (a sigmoid of
the value against the halfway point between tissue and lesion), not a trained network: it lets the volume demo
and the tests run a real ONNX model over real DICOM and NIfTI files.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from .synth import SynthSpec, write_yaml

TISSUE_HU, LESION_HU, AIR_HU = 40.0, 160.0, -1000.0


def volume_sample(seed: int, index: int, size: int, slices: int) -> tuple[np.ndarray, np.ndarray]:
    """(values [Z, H, W] float, label [Z, H, W] uint8 0/1): a body with a lesion, in Hounsfield units."""
    rng = np.random.default_rng([seed, 7919, index])
    z, yy, xx = np.mgrid[0:slices, 0:size, 0:size].astype(np.float32)
    body = ((yy - size / 2) / (size * 0.42)) ** 2 + ((xx - size / 2) / (size * 0.36)) ** 2 <= 1
    values = np.where(body, TISSUE_HU, AIR_HU)
    for k in range(slices):  # the scanner's blur at the body's edge (no 1000 HU step for a cubic resize to ring on)
        values[k] = cv2.GaussianBlur(values[k], (0, 0), 2.0)
    values = values + rng.normal(0, 12, (slices, size, size))
    c = (slices * rng.uniform(0.3, 0.7), size * rng.uniform(0.35, 0.65), size * rng.uniform(0.35, 0.65))
    r = (slices * rng.uniform(0.15, 0.3), size * rng.uniform(0.06, 0.16), size * rng.uniform(0.06, 0.16))
    lesion = ((z - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
    values = np.where(lesion & body, LESION_HU + rng.normal(0, 15, values.shape), values)
    return np.round(values), (lesion & body).astype(np.uint8)


def _dicom_slice(path: str, hu: np.ndarray, patient: str, series: int, k: int, monochrome1: bool) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient, str(series), str(k)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientName = "CT", patient, f"Synthetic^{patient}"
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient, str(series)])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient])
    ds.InstanceNumber, ds.SliceThickness, ds.PixelSpacing = k + 1, 2.5, [0.8, 0.8]
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 16, 15, 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
    ds.PixelData = (hu + 1024).astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _model(path: str, centre: float, gain: float) -> None:
    """A one-channel ONNX model: sigmoid((x - centre) * gain), any input size."""
    import onnx
    from onnx import TensorProto, helper

    consts = [helper.make_tensor("c", TensorProto.FLOAT, [], [centre]), helper.make_tensor("k", TensorProto.FLOAT, [],
                                                                                            [gain])]
    nodes = [helper.make_node("Sub", ["x", "c"], ["d"]), helper.make_node("Mul", ["d", "k"], ["s"]),
             helper.make_node("Sigmoid", ["s"], ["p"])]
    graph = helper.make_graph(nodes, "threshold", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   ["N", 1, "H", "W"])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1, "H", "W"])], consts)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def make_volume_dataset(out_dir: str, spec: SynthSpec, preset: str = "ct", size: int = 128,
                        slices: tuple[int, int] = (10, 16)) -> str:
    """``spec.n`` volumes of ``size``² slices (between ``slices`` of them) as ``preset`` lays them out; returns the
    YAML's path."""
    import nibabel as nib

    os.makedirs(out_dir, exist_ok=True)
    images = []
    for i in range(spec.n):
        z = int(np.random.default_rng([spec.seed, 104729, i]).integers(slices[0], slices[1] + 1))
        hu, label = volume_sample(spec.seed, i, size, z)
        patient = f"SYN{spec.seed % 1000:03d}P{i // 2:03d}"
        label_name = f"labels/{patient}_vol{i:04d}.nii.gz"
        os.makedirs(os.path.join(out_dir, "labels"), exist_ok=True)
        # NIfTI axes x, y, z: ECVL's slice k is arr[:, :, k].T, so store [W, H, Z]
        nib.save(nib.Nifti1Image(label.transpose(2, 1, 0).copy(), np.eye(4)), os.path.join(out_dir, label_name))
        if preset == "ct":
            folder = f"ct/{patient}/vol{i:04d}"
            os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
            files = []
            for k in range(z):
                name = f"{folder}/slice{k:03d}.dcm"
                _dicom_slice(os.path.join(out_dir, name), hu[k], patient, i, k, monochrome1=i == 0 and k == 0)
                files.append(name)
            images.append({"location": files, "label": label_name})
        else:
            name = f"mri/{patient}_vol{i:04d}.nii.gz"
            os.makedirs(os.path.join(out_dir, "mri"), exist_ok=True)
            img = nib.Nifti1Image(np.round((hu + 1024) / 2).astype(np.int16).transpose(2, 1, 0).copy(), np.eye(4))
            img.header.set_slope_inter(2.0, -1024.0)  # the scaled value would be HU; ECVL reads the stored one
            nib.save(img, os.path.join(out_dir, name))
            images.append({"location": name, "label": label_name})
    centre, gain = ((TISSUE_HU + LESION_HU) / 2, 0.1) if preset == "ct" else \
        ((TISSUE_HU + LESION_HU) / 2 / 2 + 512, 0.2)  # mri: in stored units, (HU + 1024) / 2
    _model(os.path.join(out_dir, "model.onnx"), centre, gain)
    doc = {"name": f"synthetic-{preset}-volumes",
           "description": f"Synthetic {preset.upper()} volumes with lesions (seed {spec.seed}, {spec.n} volumes)",
           "images": images}
    return write_yaml(out_dir, spec, doc)
