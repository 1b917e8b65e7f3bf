"""``--loader ecvl`` on DICOM, NIfTI and volumes: ECVL reads every file (``ecvl.ImRead``: DCMTK's modality
transform, its own NIfTI reader), our loader does the rest, where pyecvl imports.

ECVL's ``DLDataset`` cannot serve these sets: it feeds a volume as one image of Z channels, and our pre-check (which
keeps a bad file from ending the process inside ECVL's loader threads) reads OpenCV's formats only. The DeepHealth
volume pipelines do not use it for volumes either: use-case-pipelines' ``MSVolume`` and the kidney pipeline load
each volume with ``Sample::LoadImage`` (``ImRead`` per file, stacked) and slice it in numpy. So here ECVL reads,
and slicing, K-slice samples, the resize (``cv2.resize``, which ECVL's ``AugResizeDim`` calls with the same
interpolation), the intensity step and scoring are our loader's, the same code as ``--loader opencv``: the two
give the same per-slice scores wherever ECVL's reading equals pydicom's and nibabel's (tests/loaders, where
pyecvl imports). The notes (MONOCHROME1, frame 0, NIfTI scaling) come from the headers, worded alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..data.worklist import WorkItem
from ..profiles import Profile
from .imagefiles import DEFAULT_MAX_PIXELS, ImageFault, check_image_file
from .medical import Readers, check_dicom_pixels, dicom_header, dicom_notes, nifti_notes, smallest_type
from .opencv import Batch, iter_batches


def xy_planes(img: Any, path: str) -> np.ndarray:
    """An ECVL image as (x, y, planes): ``np.array(img)`` has its dims in ``channels_`` order ("xyc", "xyz",
    "xyo", ...); BGR is put in RGB order."""
    from pyecvl import ecvl

    order = str(img.channels_)
    if len(order) != 3 or "x" not in order or "y" not in order:
        raise ImageFault(f"ECVL read {path} as a {order!r} image; expected x, y and one more axis")
    arr = np.moveaxis(np.array(img, copy=True), [order.index("x"), order.index("y")], [0, 1])
    if img.colortype_ == ecvl.ColorType.BGR:
        arr = arr[:, :, ::-1]
    return arr


class EcvlReaders(Readers):
    """DICOM files and NIfTI volumes read by ECVL's ``ImRead``; the headers give the notes and the size bound."""

    def _read(self, path: str) -> np.ndarray:
        from pyecvl import ecvl

        check_image_file(path, "image")
        try:
            img = ecvl.ImRead(path)
        except Exception as exc:  # ECVL raises its own kinds through pybind11
            raise ImageFault(f"ECVL cannot read {path} ({type(exc).__name__}: {str(exc)[:200]}; a pyecvl built "
                             f"without DICOM support reads no DICOM)") from None
        if img.IsEmpty():
            raise ImageFault(f"ECVL read nothing from {path}")
        return xy_planes(img, path)

    def dicom(self, path: str, notes: list[str], max_pixels: int = 64_000_000) -> np.ndarray:
        check_image_file(path, "image")
        ds = dicom_header(path)
        check_dicom_pixels(ds, path, max_pixels)
        planes = self._read(path)
        notes += dicom_notes(ds)
        image = planes[:, :, 0].T if planes.shape[2] == 1 else planes.transpose(1, 0, 2)
        return smallest_type(np.ascontiguousarray(image))

    def nifti_volume(self, path: str, notes: list[str]) -> np.ndarray:
        said = nifti_notes(path)
        volume = smallest_type(self._read(path))
        notes += said
        return volume


class EcvlFilesLoader:
    """Batches of DICOM, NIfTI and volume slices read by ECVL (``EcvlReaders``), through our loader."""

    name = "ecvl"

    def __init__(self, profile: Profile, max_pixels: int = DEFAULT_MAX_PIXELS, slice_order: str = "yaml") -> None:
        from pyecvl import ecvl  # noqa: F401 - fail here, clearly, when missing

        self.profile, self.max_pixels, self.slice_order = profile, max_pixels, slice_order
        self.readers = EcvlReaders()

    def batches(self, items: Iterable[WorkItem], batch_size: int, threads: int) -> Iterator[Batch]:
        return iter_batches(items, self.profile, batch_size, threads=threads, max_pixels=self.max_pixels,
                            slice_order=self.slice_order, readers=self.readers)
