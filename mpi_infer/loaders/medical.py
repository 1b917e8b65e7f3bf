"""DICOM and NIfTI files read as ECVL reads them (deephealthproject/ecvl modules/core/src/support_dcmtk.cpp and
support_nifti.cpp; ../shared/reference/ecvl.md section 11), picked by content, not by extension:

- DICOM (the ``DICM`` preamble; pydicom, with the pylibjpeg plugins for JPEG, JPEG 2000, JPEG-LS and RLE, which
  ECVL's DCMTK build cannot decode beyond JPEG): the modality transform (RescaleSlope/Intercept, or a Modality LUT)
  applied and truncated toward zero to an integer, as DCMTK's ``getInterData`` stores it; no VOI windowing;
  MONOCHROME1 not inverted; frame 0 of a multi-frame file; grey for MONOCHROME1/2, RGB otherwise (a palette
  through its colour LUT).
- NIfTI-1/2 (a 348- or 540-byte header, gzipped or not; nibabel): the stored values, ``scl_slope``/``scl_inter``
  NOT applied and no reorientation, as ECVL's own reader; slice k is ``arr[:, :, k].T`` (axes x, y, z).

The values come back in the smallest integer type that holds them (uint8, uint16, int16; else float32), so the
profile's resize works on the type ECVL resizes; the intensity step (raw, /255, min-max) is the profile's.
"""

from __future__ import annotations

import gzip
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .imagefiles import ImageFault, check_image_file

DICOM_OFFSET = 128
NIFTI_SIZES = {348: "NIfTI-1", 540: "NIfTI-2"}


def sniff(path: str) -> str:
    """'dicom', 'nifti' or 'other' (OpenCV's formats, or none), from the first bytes (a gzipped file: from its
    decompressed first bytes)."""
    with open(path, "rb") as fh:
        head = fh.read(DICOM_OFFSET + 4)
    if head[DICOM_OFFSET:DICOM_OFFSET + 4] == b"DICM":
        return "dicom"
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as fh:
                head = fh.read(DICOM_OFFSET + 4)
        except (OSError, EOFError):
            return "other"
    if len(head) >= 4:
        for order in ("<", ">"):
            if struct.unpack(order + "i", head[:4])[0] in NIFTI_SIZES:
                return "nifti"
    return "other"


@dataclass
class Header:
    """What a medical file's header says, read without its pixels (the dry run's check)."""

    format: str
    shape: tuple[int, ...]  # (rows, columns) of a 2D image; NIfTI: the stored (x, y, z, ...) shape
    detail: str


def read_header(path: str, kind: str) -> Header:
    """The header of a DICOM or NIfTI file; an ImageFault naming the format when it cannot be read."""
    if kind == "dicom":
        ds = dicom_header(path)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        return Header("dicom", dicom_size(ds, path),
                      f"{ds.get('PhotometricInterpretation', '?')}, {syntax.name if syntax else 'no transfer syntax'}")
    img = _nifti(path)
    return Header("nifti", tuple(int(s) for s in img.shape), NIFTI_SIZES.get(img.header.sizeof_hdr, "NIfTI"))


def dicom_header(path: str) -> Any:
    """A DICOM file's data set without its pixels; an ImageFault when it cannot be read."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many kinds for a damaged file
        raise ImageFault(f"DICOM file cannot be read ({type(exc).__name__}: {_one_line(exc)}): {path}") from None


def dicom_size(ds, path: str) -> tuple[int, int]:
    """(rows, columns) of a DICOM data set; ImageFault for one that holds no image."""
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageFault(f"DICOM file holds no image (no Rows/Columns: {ds.get('Modality', 'no modality')}, "
                         f"e.g. a structured report or an RT plan): {path}")
    return int(ds.Rows), int(ds.Columns)


def check_dicom_pixels(ds, path: str, max_pixels: int) -> None:
    """ImageFault for a data set with no image, or one whose frame declares more than ``max_pixels``: checked
    from the header, before any pixel is decoded."""
    rows, cols = dicom_size(ds, path)
    if rows * cols > max_pixels:
        raise ImageFault(f"DICOM declares {cols}x{rows} ({rows * cols / 1e6:.0f} megapixels), more than "
                         f"--max-megapixels allows: {path}")


def read_dicom(path: str, notes: list[str], max_pixels: int = 64_000_000) -> np.ndarray:
    """A DICOM image as ECVL yields it: H x W (grey) or H x W x 3 (RGB), modality values truncated to integers.
    A frame declaring more than ``max_pixels`` is refused before its pixels are decoded."""
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

    check_image_file(path, "image")
    try:  # one read: the pixel bytes come with it (the file is within its size bound), decoded only below
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many kinds for a damaged file
        raise ImageFault(f"DICOM file cannot be read ({type(exc).__name__}: {_one_line(exc)}): {path}") from None
    check_dicom_pixels(ds, path, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            arr = pixel_array(ds, index=0) if frames > 1 else ds.pixel_array
    except Exception as exc:  # pydicom's decoders raise many kinds
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise ImageFault(f"DICOM image cannot be decoded ({syntax.name if syntax else 'unknown transfer syntax'}: "
                         f"{type(exc).__name__}: {_one_line(exc)}): {path}") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    notes += dicom_notes(ds)
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        if arr.dtype != np.uint8:  # 16-bit palette entries: their high byte, as an 8-bit RGB image
            arr = (arr >> 8).astype(np.uint8)
    elif photometric.startswith("MONOCHROME"):
        values = apply_modality_lut(arr, ds)
        if values is not arr and values.dtype.kind == "f":
            values = np.trunc(values)  # DCMTK stores the transformed value in an integer: a C cast
        arr = values
    if arr.ndim == 3 and arr.shape[2] not in (3,):
        raise ImageFault(f"DICOM image has shape {arr.shape}; expected rows x columns (x 3): {path}")
    return smallest_type(arr)


def dicom_notes(ds) -> list[str]:
    """What ECVL's reading of this DICOM leaves as it is, from its header: frame 0 of several, MONOCHROME1."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return ([f"DICOM has {frames} frames; frame 0 read, as ECVL does"] if frames > 1 else []) + \
        (["DICOM is MONOCHROME1 (white is low); not inverted, as ECVL does"]
         if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1" else [])


def nifti_notes(path: str) -> list[str]:
    """``scaling_notes`` of a NIfTI file, from its header."""
    return scaling_notes(_nifti(path))


class Readers:
    """How DICOM files and NIfTI volumes are read: pydicom and nibabel following ECVL's rules (here), or ECVL's
    own ``ImRead`` (loaders/ecvl_files.py). Everything after the read (slicing, resizing) is shared."""

    def dicom(self, path: str, notes: list[str], max_pixels: int = 64_000_000) -> np.ndarray:
        """H x W (grey) or H x W x 3 (RGB) values, as ``read_dicom``."""
        return read_dicom(path, notes, max_pixels)

    def nifti_volume(self, path: str, notes: list[str]) -> np.ndarray:
        """(x, y, z) stored values, as ``read_nifti_volume``."""
        return read_nifti_volume(path, notes)


READERS = Readers()


def _nifti(path: str):
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel's ImageFileError, a gzip error, a short file
        raise ImageFault(f"NIfTI file cannot be read ({type(exc).__name__}: {_one_line(exc)}): {path}") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ImageFault(f"not a NIfTI-1/2 image ({type(img).__name__}): {path}")
    return img


def nifti_slices(path: str) -> int:
    """How many 2D slices (the third axis) a NIfTI file holds."""
    shape = _nifti(path).shape
    return int(shape[2]) if len(shape) >= 3 else 1


def read_nifti(path: str, notes: list[str], k: int | None = None, readers: Readers = READERS) -> np.ndarray:
    """A NIfTI file as ECVL's reader yields it: the stored values (no scl_slope/scl_inter, no reorientation);
    a 2D image as rows x columns (``arr.T``); ``k``: slice k of a volume (``arr[:, :, k].T``)."""
    volume = readers.nifti_volume(path, notes)
    depth = volume.shape[2]
    if k is None and depth > 1:
        raise ImageFault(f"NIfTI file is a volume of {depth} slices {volume.shape}: {path}")
    k = k or 0
    if not 0 <= k < depth:
        raise ImageFault(f"slice {k} is outside the {depth} slices of {path}")
    return np.ascontiguousarray(volume[:, :, k].T)


def read_nifti_volume(path: str, notes: list[str]) -> np.ndarray:
    """A NIfTI volume's stored values, (x, y, z) as stored (slice k is ``[:, :, k].T``), read once."""
    check_image_file(path, "image")
    img = _nifti(path)
    shape = img.shape
    if len(shape) > 3 and any(s > 1 for s in shape[3:]):
        raise ImageFault(f"NIfTI file is {len(shape)}-D {shape} (a time series?); mpi_infer reads 2D images and "
                         f"3D volumes: {path}")
    try:
        proxy = img.dataobj
        stored = proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else np.asarray(proxy)
        arr = np.asarray(stored).reshape(shape[:3] if len(shape) >= 3 else (*shape[:2], 1))
    except Exception as exc:
        raise ImageFault(f"NIfTI data cannot be read ({type(exc).__name__}: {_one_line(exc)}): {path}") from None
    notes += scaling_notes(img)
    return smallest_type(arr)


def scaling_notes(img) -> list[str]:
    """What ECVL's reader leaves out: the scl_slope/scl_inter scaling (nibabel keeps it on the array proxy)."""
    slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
    if (slope is None or not np.isfinite(slope) or float(slope) in (0.0, 1.0)) and not (inter and np.isfinite(inter)):
        return []
    return [f"NIfTI scl_slope {float(slope):g}, scl_inter {float(inter or 0):g} not applied (the stored values, as "
            f"ECVL reads them)"]


def smallest_type(arr: np.ndarray) -> np.ndarray:
    """Integer values in the smallest of uint8, uint16, int16 that holds them; anything else as float32."""
    if arr.size == 0:
        raise ImageFault("image has no pixels")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ImageFault("image holds NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    integral = arr.dtype.kind in "iub" or bool(np.all(np.equal(np.mod(arr, 1), 0)))
    if integral:
        for dtype in (np.uint8, np.uint16, np.int16):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return arr.astype(dtype, copy=False)
    return arr.astype(np.float32, copy=False)


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."
