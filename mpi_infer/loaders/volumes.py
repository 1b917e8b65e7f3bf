"""Volumes: a YAML entry whose ``location`` is a NIfTI volume (several slices along its third axis) or a list of
per-slice DICOM files (ECVL stacks them in YAML order) is a volume, scored slice by slice (ECVL's pipelines push
slices: use-case-pipelines cpp/kidney_segmentation.cpp, cpp/ms_segmentation_training.cpp).

On rank 0, ``expand_volumes`` finds the volumes among the selected entries (reading headers only) and gives each
slice its own sample id after the YAML's indices, in selection order, so the planner, the ledger and the gather
treat slices as they treat images, and the plan's exactly-once proof covers every slice. Each rank reads a NIfTI
volume (and a label volume) once, into a small cache, and serves its slices from it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..data.dataset import Dataset
from ..errors import DatasetError, clip
from .imagefiles import ImageFault, check_image_file
from .medical import nifti_slices, read_dicom, read_nifti_volume, sniff

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def volume_slices(dataset: Dataset, index: int) -> int | None:
    """How many slices entry ``index`` holds if it is a volume (None for a 2D image), from headers only.

    Planning must not open every image (a million files on a network volume; one read that never returns): only
    a list ``location`` (its first file's content: DICOM makes it a series) and a ``.nii``/``.nii.gz`` location
    (its header) are looked at. A NIfTI volume under another name is read as an image and fails saying it is a
    volume."""
    entry = dataset.entries[index]
    raw = entry.get("location") if isinstance(entry, dict) else entry
    if isinstance(raw, str) and not raw.lower().endswith(NIFTI_SUFFIXES):
        return None  # the common case, decided without a system call
    sample = dataset.sample(index)
    try:
        if len(sample.locations) > 1:
            check_image_file(sample.locations[0], "image")
            return len(sample.locations) if sniff(sample.locations[0]) == "dicom" else None
        if not sample.locations[0].lower().endswith(NIFTI_SUFFIXES):
            return None
        check_image_file(sample.locations[0], "image")
        if sniff(sample.locations[0]) != "nifti":
            return None
        z = nifti_slices(sample.locations[0])
    except (ImageFault, OSError):
        return None  # unreadable: the image's own record says why
    return z if z > 1 else None


def expand_volumes(dataset: Dataset, selected: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The selection with every volume replaced by its slices' sample ids (in place, in order); records the ids in
    ``dataset.volume_of``. Ids start after the YAML's last index and follow the selection's order, so every
    process (every part) numbers them alike."""
    if dataset.classes:
        return dict(selected)
    next_id = len(dataset.entries)
    out: dict[str, np.ndarray] = {}
    for split, idx in selected.items():
        ids: list[int] = []
        for i in (int(x) for x in idx):
            z = volume_slices(dataset, i)
            if z is None:
                ids.append(i)
                continue
            if dataset.sample(i).label_path is not None and dataset.sample(i).label_path.endswith((".png", ".jpg")):
                raise DatasetError(f"{dataset.path}: images[{i}] is a volume of {z} slices, but its label "
                                   f"{clip(dataset.sample(i).label_path, 200)} is a 2D image; a volume's label is a "
                                   f"NIfTI volume")
            dataset.volume_sizes[i] = z
            for k in range(z):
                dataset.volume_of[next_id] = (i, k)
                ids.append(next_id)
                next_id += 1
        out[split] = np.asarray(ids, np.int64)
    return out


class VolumeCache:
    """The last few volumes a rank read (images and labels), shared by its loader threads: a volume is read once
    however many of its slices the rank scores (a volume cut between two ranks' shards is read by both)."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._volumes: OrderedDict[str, tuple[threading.Event, Any]] = OrderedDict()

    def get(self, path: str, notes: list[str]) -> np.ndarray:
        """The volume's stored values; its notes (scaling not applied) are added to ``notes`` on every call, so
        every slice says them whichever rank read the volume first."""
        with self._lock:
            entry = self._volumes.get(path)
            owner = entry is None
            if owner:
                entry = (threading.Event(), None)
                self._volumes[path] = entry
                while len(self._volumes) > self.keep:
                    self._volumes.popitem(last=False)
            else:
                self._volumes.move_to_end(path)
        event, _ = entry
        if owner:
            said: list[str] = []
            try:
                value: Any = (read_nifti_volume(path, said), said)
            except ImageFault as exc:
                value = (exc, said)
            with self._lock:
                self._volumes[path] = (event, value)
            event.set()
        else:
            event.wait()
        value = self._volumes.get(path, (None, None))[1]
        if value is None:  # evicted before we looked: read it ourselves
            said = []
            value = (read_nifti_volume(path, said), said)
        array, said = value
        if isinstance(array, ImageFault):
            raise array
        notes += said
        return array


def read_slice(locations: tuple[str, ...], k: int, order: str, cache: VolumeCache, notes: list[str]
               ) -> np.ndarray:
    """Slice ``k`` of a volume as ECVL yields it: file k (``reversed``: the (Z-1-k)th) of a DICOM list, or
    ``arr[:, :, k].T`` of a NIfTI volume's stored values."""
    if len(locations) > 1:
        pos = len(locations) - 1 - k if order == "reversed" else k
        return read_dicom(locations[pos], notes)
    volume = cache.get(locations[0], notes)
    return np.ascontiguousarray(volume[:, :, k].T)


def read_label_slice(path: str, k: int, cache: VolumeCache) -> np.ndarray:
    """Slice ``k`` of a NIfTI label volume as a 0/255 mask: any value above 0 is foreground."""
    volume = cache.get(path, [])
    if volume.ndim < 3 or k >= volume.shape[2]:
        raise ImageFault(f"label volume {path} has {volume.shape[2] if volume.ndim >= 3 else 1} slice(s); slice "
                         f"{k} was asked for")
    return np.where(volume[:, :, k].T > 0, 255, 0).astype(np.uint8)
