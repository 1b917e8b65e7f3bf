"""Volumes: a YAML entry whose ``location`` is a NIfTI volume (several slices along its third axis) or a list of
per-slice DICOM files (ECVL stacks them in YAML order) is a volume, scored slice by slice (ECVL's pipelines push
slices: use-case-pipelines cpp/kidney_segmentation.cpp, cpp/ms_segmentation_training.cpp).

On rank 0, ``expand_volumes`` finds the volumes among the selected entries (reading headers only) and gives each
slice its own sample id after the YAML's indices, in selection order, so the planner, the ledger and the gather
treat slices as they treat images, and the plan's exactly-once proof covers every slice; a plan keeps each
volume on one rank. Each rank reads a NIfTI volume (and a label volume) once, into a small cache, and serves its
slices from it. A model taking K channels scores slice k from the K-slice sample holding it (``read_sample``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..data.dataset import Dataset
from ..errors import DatasetError, clip
from .imagefiles import ImageFault, check_image_file
from .medical import READERS, Readers, nifti_slices, smallest_type, sniff

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


class OnceCache:
    """The last few values made under a key, shared by a rank's loader threads: each is made once, however many
    threads ask for it at the same time (the others wait for the first)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._lock = threading.Lock()
        self._values: OrderedDict[Any, tuple[threading.Event, Any]] = OrderedDict()

    def get(self, key: Any, make: Callable[[list[str]], Any], notes: list[str]) -> Any:
        """``make(notes)``'s value for ``key``; its notes are added to ``notes`` on every call, so every slice
        says them whichever thread made the value. An ImageFault is kept and raised again."""
        with self._lock:
            entry = self._values.get(key)
            owner = entry is None
            if owner:
                entry = (threading.Event(), None)
                self._values[key] = entry
                while len(self._values) > self.keep:
                    self._values.popitem(last=False)
            else:
                self._values.move_to_end(key)
        event, _ = entry
        if owner:
            said: list[str] = []
            try:
                value: Any = (make(said), said)
            except ImageFault as exc:
                value = (exc, said)
            with self._lock:
                self._values[key] = (event, value)
            event.set()
        else:
            event.wait()
        value = self._values.get(key, (None, None))[1]
        if value is None:  # evicted before we looked: make it ourselves
            said = []
            value = (make(said), said)
        result, said = value
        if isinstance(result, ImageFault):
            raise result
        notes += said
        return result


class VolumeCache:
    """A rank's volumes (images and labels: the last two read) and its K-slice samples (the last few made): a
    volume is read once however many of its slices the rank scores, and a K-slice sample is read and resized
    once for its K slices."""

    def __init__(self, keep: int = 2, samples: int = 16, readers: Readers = READERS) -> None:
        self.volumes = OnceCache(keep)
        self.samples = OnceCache(samples)
        self.readers = readers  # pydicom/nibabel, or ECVL's ImRead

    def get(self, path: str, notes: list[str]) -> np.ndarray:
        """The NIfTI volume's stored values (its notes, scaling not applied, added to ``notes``)."""
        return self.volumes.get(path, lambda said: self.readers.nifti_volume(path, said), notes)


def read_slice(locations: tuple[str, ...], k: int, order: str, cache: VolumeCache, notes: list[str]
               ) -> np.ndarray:
    """Slice ``k`` of a volume as ECVL yields it: file k (``reversed``: the (Z-1-k)th) of a DICOM list, or
    ``arr[:, :, k].T`` of a NIfTI volume's stored values."""
    if len(locations) > 1:
        pos = len(locations) - 1 - k if order == "reversed" else k
        return cache.readers.dicom(locations[pos], notes)
    volume = cache.get(locations[0], notes)
    return np.ascontiguousarray(volume[:, :, k].T)


def sample_start(k: int, depth: int, slices: int) -> int:
    """The first slice of the K-slice sample that scores slice ``k``: samples of K consecutive slices, stride K
    (use-case-pipelines' MSVolume), the last one ending on the volume's last slice. Upstream drops a volume's
    last ``depth mod K`` slices; here they are scored from that last sample, so every slice is scored once."""
    if depth < slices:
        raise ImageFault(f"the volume has {depth} slice(s); the model takes {slices} consecutive slices per sample")
    return min((k // slices) * slices, depth - slices)


def read_sample(locations: tuple[str, ...], k: int, slices: int, order: str, cache: VolumeCache, notes: list[str]
                ) -> tuple[np.ndarray, int]:
    """The K consecutive slices (H x W x K, stored values, grey, in the smallest type that holds them all) of the
    sample that scores slice ``k``, and its first slice. Its notes are said once (a NIfTI volume's scaling note
    comes with each of its slices)."""
    said: list[str] = []
    depth = len(locations) if len(locations) > 1 else cache.get(locations[0], said).shape[2]
    start = sample_start(k, depth, slices)
    planes = [read_slice(locations, j, order, cache, said) for j in range(start, start + slices)]
    notes += dict.fromkeys(said)
    if any(p.ndim != 2 for p in planes):
        raise ImageFault(f"slices {start}..{start + slices - 1} of {locations[0]}: a K-slice sample takes grey "
                         f"slices, got shapes {[p.shape for p in planes]}")
    if len({p.shape for p in planes}) != 1:
        raise ImageFault(f"slices {start}..{start + slices - 1} of {locations[0]} differ in size: "
                         f"{[p.shape for p in planes]}")
    return np.ascontiguousarray(smallest_type(np.stack(planes, axis=2))), start  # one type for the K slices


def read_label_slice(path: str, k: int, cache: VolumeCache) -> np.ndarray:
    """Slice ``k`` of a NIfTI label volume as a 0/255 mask: any value above 0 is foreground."""
    volume = cache.get(path, [])
    if volume.ndim < 3 or k >= volume.shape[2]:
        raise ImageFault(f"label volume {path} has {volume.shape[2] if volume.ndim >= 3 else 1} slice(s); slice "
                         f"{k} was asked for")
    return np.where(volume[:, :, k].T > 0, 255, 0).astype(np.uint8)
