"""The ECVL loader: ECVL's own ``DLDataset`` turns a rank's images into tensors (pyecvl 1.3.0 on ECVL 1.0.3).

Written against pyecvl's DLDataset (deephealthproject/ecvl modules/eddl/src/support_eddl.cpp), and run
against the real libraries where they import. pyecvl is imported only when this loader is used; everything
that does not need it (the shard YAML, the augmentation chain for a profile, the pre-check) is a plain
function, tested everywhere.

Per group of items (a rank's whole shard under the static schedule; a few batches at a time under the
dynamic one): the items are written as an ECVL dataset YAML in a private temporary folder (images with a
mask and images without one go to separate splits, since ECVL decides "has labels" per split); DLDataset
loads it with one augmentation container per split (resize with the profile's interpolation, masks
nearest; the /255 and mean/std follow in numpy, see ``augmentation_spec``); Start/GetBatch
with drop_last off yields every image, the short last batch included (LoadBatch would throw on it).
GetBatch's order is not deterministic with several workers, so results are keyed by the returned samples.

ECVL's loader threads cannot survive a bad file: ``Sample::LoadImage`` throws inside a std::thread, which
ends the whole process (std::terminate). So every file is pre-checked first from its header, without
decoding pixels: a regular file within the size bound; for PNG an IHDR and a complete stream (IEND: libpng
refuses a truncated PNG); for JPEG a frame header and a scan (libjpeg decodes a JPEG truncated inside the
scan, with grey rows, as ECVL would); any other format is decoded once. A file that fails becomes a
``failed`` record with the reason, and the run goes on. The headers also give what the OpenCV loader
reports (16-bit, alpha, grey, colour masks, a mask whose size differs from its image), so both loaders
give the same statuses; 0/1 masks are recognised on the mask ECVL loaded.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..data.dataset import dump_document
from ..data.worklist import WorkItem
from ..profiles import Profile
from .imagefiles import (
    DEFAULT_MAX_PIXELS,
    TRANSPOSING_ORIENTATIONS,
    ImageFault,
    check_pixels,
    exif_orientation,
    read_header,
    truncation_notes,
)
from .opencv import Batch, Loaded, check_deep_mask, check_mask_size, conversion_notes, mask_notes, normalise

NOLABEL = "--no-mask"
GROUP_BATCHES = 4  # dynamic schedule: batches per DLDataset (each one loads its first image once more)


def shard_document(items: list[WorkItem], name: str, classes: list[str] | None = None
                   ) -> tuple[dict[str, Any], list[str]]:
    """The ECVL YAML for a group of items (absolute paths) and its split names in order.

    At most two splits, ``masked`` and ``--no-mask``, whatever our splits are: ECVL decides "has labels" per
    split, and every split costs a Start/Stop of the loader threads (the pipeline drains at each); results are
    keyed back to our items, which carry their own split. A masked image comes first where there is one:
    DLDataset sizes every split's label tensor from ``samples_[0]``'s mask, and with an unmasked first sample
    it asks for a -1-channel tensor (16 EB) for the masked split.

    Classification (``classes`` given): the labels are class indices, and the splits ``masked`` (labelled)
    and ``--no-mask`` alike."""
    images: list[Any] = []
    split: dict[str, list[int]] = {}
    for it in sorted(items, key=lambda it: _label(it, classes) is None):  # stable: labelled first, order kept
        label = _label(it, classes)
        split.setdefault(NOLABEL if label is None else "masked", []).append(len(images))
        loc: Any = it.locations[0] if len(it.locations) == 1 else list(it.locations)
        images.append({"location": loc} if label is None else {"location": loc, "label": label})
    doc = {"name": name, "description": "mpi_infer shard for ECVL's DLDataset", "images": images, "split": split}
    if classes:
        doc["classes"] = list(classes)
    return doc, list(split)


def _label(item: WorkItem, classes: list[str] | None) -> Any:
    """What the shard YAML says of an item's ground truth: its class index, its mask path, or None."""
    return item.target if classes else item.label_path


def augmentation_spec(profile: Profile) -> list[tuple[str, tuple]]:
    """The per-split augmentation chain for a profile, as (pyecvl class, arguments): the resize alone.

    ECVL decodes, converts the colour (BGR -> RGB) and resizes on uint8, which is what makes results ECVL's;
    ``ImageToTensor`` then gives exact float32 copies of those uint8 values. The /255 and mean/std that
    upstream writes as AugToFloat32/AugNormalize are done on the batch in numpy (``loader.normalise``, the
    OpenCV loader's arithmetic), since ECVL's element-wise conversions cost a third of its loading time
    (measured: 0.35 s against 0.24 s of CPU for 120 images) for the same values; masks stay 0..255."""
    return [("AugResizeDim", ([profile.width, profile.height], profile.interpolation))]  # dims are [W, H]


def batch_plan(count: int, batch_size: int) -> list[int]:
    """Batch sizes GetBatch yields with drop_last off: full batches, then the short remainder."""
    full, rest = divmod(count, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def precheck(item: WorkItem, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[str]:
    """The notes ECVL's conversions deserve (as the OpenCV loader words them); raises ImageFault for an
    item ECVL's loader thread would die on, or one the OpenCV loader would refuse too."""
    notes: list[str] = []
    if len(item.locations) == 1:
        head = read_header(item.locations[0], "image")
        check_pixels(item.locations[0], "image", max_pixels)
        notes += conversion_notes("image", head.depth, head.alpha) + truncation_notes(item.locations[0], "image")
        if head.channels == 1:
            notes.append("image is grey; replicated to RGB")
    else:
        planes = [read_header(p, f"plane {k}") for k, p in enumerate(item.locations)]
        for k, p in enumerate(item.locations):
            check_pixels(p, f"plane {k}", max_pixels)
        if len(planes) != 3 or any(p.channels != 1 for p in planes):
            raise ImageFault(f"multi-plane image needs 3 grey planes for an RGB model, got "
                             f"{[(p.height, p.width, p.channels) for p in planes]}")
        if len({(p.height, p.width) for p in planes}) != 1:
            raise ImageFault(f"planes differ in size: {[(p.height, p.width) for p in planes]}")
        for k, p in enumerate(planes):
            notes += conversion_notes(f"plane {k}", p.depth, p.alpha)
        head = planes[0]
    if item.label_path:
        mask = read_header(item.label_path, "mask")
        check_pixels(item.label_path, "mask", max_pixels)
        notes += conversion_notes("mask", mask.depth, mask.alpha)
        if mask.depth == 16:
            check_deep_mask(item.label_path)
        if mask.channels == 3:
            notes.append("mask is colour; converted to grey with ECVL's 0.299R+0.587G+0.114B")
        shown = (head.width, head.height)  # as ECVL decodes it: after the EXIF rotation
        if len(item.locations) == 1 and exif_orientation(item.locations[0]) in TRANSPOSING_ORIENTATIONS:
            shown = shown[::-1]
        check_mask_size((mask.width, mask.height), shown, item.label_path, item.locations[0])
    return notes


class EcvlLoader:
    """Batches from ECVL's DLDataset, keyed back to our work items (every image once, short tail included)."""

    name = "ecvl"

    def __init__(self, profile: Profile, classes: list[str] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        from pyecvl import ecvl  # noqa: F401 - fail here, clearly, when missing
        from pyeddl import tensor  # noqa: F401 - GetBatch returns pyeddl Tensors: their type must be registered

        self.profile = profile
        self.classes = classes or None  # classification: one-hot labels come back; we keep our own targets
        self.max_pixels = max_pixels

    def batches(self, items: Iterable[WorkItem], batch_size: int, threads: int) -> Iterator[Batch]:
        if isinstance(items, list | tuple):
            groups: Iterable[list[WorkItem]] = [list(items)]
        else:  # the dynamic schedule: items arrive as rank 0 hands them out
            source = iter(items)
            groups = iter(lambda: list(itertools.islice(source, batch_size * GROUP_BATCHES)), [])
        for group in groups:
            yield from self._group(group, batch_size, threads)

    def _group(self, items: list[WorkItem], batch_size: int, threads: int) -> Iterator[Batch]:
        from pyecvl import ecvl

        ready, notes = [], {}
        for it in items:
            try:
                notes[it.index] = precheck(it, self.max_pixels)
                ready.append(it)
            except ImageFault as exc:
                yield Batch([Loaded(it, status="failed", notes=[str(exc)])], None, [])
        if not ready:
            return
        doc, split_names = shard_document(ready, "mpi_infer-shard", self.classes)
        folder = tempfile.mkdtemp(prefix="mpi_infer-ecvl-")
        try:
            path = os.path.join(folder, "shard.yml")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(dump_document(doc))
            augs = ecvl.DatasetAugmentations([self._container(ecvl)] * len(split_names))
            ctype = ecvl.ColorType.GRAY if self.profile.channels == 1 else ecvl.ColorType.RGB  # the model's
            dataset = ecvl.DLDataset(path, batch_size, augs, ctype, ecvl.ColorType.GRAY,
                                     num_workers=max(1, threads), queue_ratio_size=2,
                                     drop_last={s: False for s in split_names})
            by_key: dict[tuple[str, str], deque[WorkItem]] = defaultdict(deque)
            for it in ready:
                label = _label(it, self.classes)
                by_key[(it.locations[0], "" if label is None else str(label))].append(it)
            for s, name in enumerate(split_names):
                dataset.SetSplit(s)
                dataset.ResetBatch(s, False)
                dataset.Start()
                try:
                    for _ in range(dataset.GetNumBatches(s)):
                        samples, x, y = dataset.GetBatch()
                        yield self._to_batch(samples, x, y, by_key, notes, has_masks=name != NOLABEL)
                finally:
                    dataset.Stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _container(self, ecvl: Any) -> Any:
        (_, (dims, interpolation)), = augmentation_spec(self.profile)
        return ecvl.SequentialAugmentationContainer(
            [ecvl.AugResizeDim(dims, getattr(ecvl.InterpolationType, interpolation))])

    def _to_batch(self, samples: list, x: Any, y: Any, by_key: dict, notes: dict[int, list[str]],
                  has_masks: bool) -> Batch:
        xs = normalise(np.array(x, copy=True), self.profile)  # uint8 values as float32 -> /255, mean/std
        ys = np.array(y, copy=True) if has_masks else None
        loaded = []
        for k, sample in enumerate(samples):
            if not has_masks:
                label = ""
            elif self.classes:
                label = str(list(sample.label_)[0])
            else:
                label = sample.label_path_ or ""
            item = by_key[(sample.location_[0], label)].popleft()
            size = list(sample.size_)  # [W, H], filled on first load
            entry = Loaded(item, image=None, original_hw=(int(size[1]), int(size[0])),
                           status="ok" if has_masks else "unscored", notes=list(notes[item.index]))
            if ys is not None and not self.classes:
                mask = ys[k, 0].astype(np.uint8)  # exact: ECVL's uint8 mask values as float32
                try:
                    entry.notes += mask_notes(mask, item.label_path or "")
                    entry.mask = mask
                except ImageFault as exc:
                    entry.status, entry.notes = "failed", [str(exc)]
            if entry.notes and entry.status != "failed":
                entry.status = "converted"
            loaded.append(entry)
        rows = [k for k, it in enumerate(loaded) if it.status != "failed"]
        return Batch(loaded, xs[rows] if len(rows) < len(loaded) else xs, rows)
