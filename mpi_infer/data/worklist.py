"""Shard descriptors: the work items a rank reads (never pixels), in compact arrays that scatter cheaply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class WorkList:
    """A shard's images as columns: cheap to build, pickle and scatter for a million images.

    ``prefix`` is prepended to every path (the YAML folder for plain datasets; empty when the paths
    are already resolved). A location is a string, or a tuple of plane paths."""

    prefix: str
    indices: list[int]
    runs: list[tuple[str, int]]  # (split, how many of the following indices), in order
    locations: list[Any]
    labels: list[str | None]
    targets: list[int | None] | None = None  # classification: the true class of each image (None: unlabelled)
    slices: list[tuple[int, int] | None] | None = None  # volumes: (YAML index of the volume, slice), else None

    def __len__(self) -> int:
        return len(self.indices)

    def splits(self) -> list[str]:
        return [name for name, count in self.runs for _ in range(count)]

    def __iter__(self) -> Any:
        from .worklist import WorkItem

        p = self.prefix
        targets = self.targets or [None] * len(self.indices)
        slices = self.slices or [None] * len(self.indices)
        for index, split, loc, lab, tgt, sl in zip(self.indices, self.splits(), self.locations, self.labels, targets,
                                                   slices):
            locs = (p + loc,) if isinstance(loc, str) else tuple(p + x for x in loc)
            yield WorkItem(index, split, locs, None if lab is None else p + lab, tgt,
                           None if sl is None else sl[0], None if sl is None else sl[1])

    def slice(self, a: int, b: int) -> WorkList:
        """Images a..b-1 (for the dynamic schedule's chunks)."""
        runs: list[tuple[str, int]] = []
        pos = 0
        for name, count in self.runs:
            lo, hi = max(a, pos), min(b, pos + count)
            if hi > lo:
                runs.append((name, hi - lo))
            pos += count
        return WorkList(self.prefix, self.indices[a:b], runs, self.locations[a:b], self.labels[a:b],
                        None if self.targets is None else self.targets[a:b],
                        None if self.slices is None else self.slices[a:b])

    def unit_end(self, b: int) -> int:
        """The first position at or after ``b`` where no volume is cut (a volume's slices stay together)."""
        if self.slices is None:
            return min(b, len(self))
        while 0 < b < len(self) and self.slices[b] is not None and self.slices[b - 1] is not None \
                and self.slices[b][0] == self.slices[b - 1][0]:
            b += 1
        return min(b, len(self))

    def chunks(self, size: int) -> list[WorkList]:
        """Consecutive pieces of at most ``size`` images."""
        return [self.slice(a, min(a + size, len(self))) for a in range(0, len(self), size)]

    @classmethod
    def pending(cls, lists: list[WorkList], done: set[int]) -> WorkList:
        """The images of ``lists`` (one prefix) whose index is not in ``done``, in order: a lost rank's unfinished
        work, for the survivors."""
        out = cls(lists[0].prefix if lists else "", [], [], [], [], None)
        targets: list[int | None] = []
        slices: list[tuple[int, int] | None] = []
        for wl in lists:
            for pos, (index, split) in enumerate(zip(wl.indices, wl.splits())):
                if index in done:
                    continue
                out.indices.append(index)
                out.locations.append(wl.locations[pos])
                out.labels.append(wl.labels[pos])
                targets.append(None if wl.targets is None else wl.targets[pos])
                slices.append(None if wl.slices is None else wl.slices[pos])
                if out.runs and out.runs[-1][0] == split:
                    out.runs[-1] = (split, out.runs[-1][1] + 1)
                else:
                    out.runs.append((split, 1))
        if any(wl.targets is not None for wl in lists):
            out.targets = targets
        if any(wl.slices is not None for wl in lists):
            out.slices = slices
        return out


@dataclass
class WorkItem:
    """One selected image: where it is in the dataset and which files to read."""

    index: int
    split: str
    locations: tuple[str, ...]
    label_path: str | None  # ground-truth mask (segmentation)
    target: int | None = None  # true class index (classification)
    volume: int | None = None  # a volume's slice: the volume's YAML index
    slice: int | None = None  # and the slice (from 0)
