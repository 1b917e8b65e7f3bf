"""Per-image results held compactly on each rank until the gather (numbers only, ~50 bytes an image).

A rank keeps what only it knows (scores, counts, status, error text); the descriptors (split, location,
mask path) are rebuilt on rank 0 from the work lists it planned, so a worker's memory does not grow with
path strings and the gather moves a few arrays instead of one dict per image.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..data.worklist import WorkList
from ..tasks.protocol import STATUSES
from ..tasks.segmentation import BOUNDARY, CURVE

_NO_CURVE = (-1,) * (3 * len(CURVE))
_NAN = float("nan")
_CODE = {s: k for k, s in enumerate(STATUSES)}


class RecordTable:
    """Columns of per-image results, in the order they were produced."""

    def __init__(self, rank: int, classes: int = 0) -> None:
        self.rank = rank
        self.classes = classes  # classification: C probabilities per row (NaN where nothing was predicted)
        self.probs = array("f")
        self.index = array("q")
        self.status = array("b")
        self.iou = array("d")
        self.dice = array("d")
        self.counts = array("q")  # tp, fp, fn, tn per image; -1 where not scored
        self.boundary = array("d")  # hd95, assd, nsd per image; NaN where not computed or excluded
        self.curve = array("i")  # (tp, fp, fn) at each threshold of the curve, per image; -1 where not scored
        self.errors: dict[int, str] = {}  # row -> text, only for rows that have one
        self.models: list[str] = []  # several models: the name of each row's model (code in self.model)
        self.model = array("h")
        self.tta = False
        self.uncertainty = array("d")  # --tta: per row, NaN where there is none

    def configure(self, models: list[str] | None, tta: bool) -> RecordTable:
        """Rows carry their model's name (several models) and the TTA uncertainty (``--tta``)."""
        self.models, self.tta = list(models or []), tta
        return self

    def _extras(self, r: Mapping[str, Any]) -> None:
        if self.models:
            self.model.append(self.models.index(r["model"]))
        if self.tta:
            self.uncertainty.append(_NAN if r.get("uncertainty") is None else float(r["uncertainty"]))

    def _extra_fields(self, row: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.models:
            out["model"] = self.models[self.model[row]]
        if self.tta:
            v = self.uncertainty[row]
            out["uncertainty"] = None if v != v else v
        return out

    def __len__(self) -> int:
        return len(self.index)

    def extend(self, records: Iterable[Mapping[str, Any]]) -> None:
        if self.classes:
            return self._extend_classification(records)
        for r in records:
            row = len(self.index)
            self.index.append(int(r["index"]))
            self.status.append(_CODE[r["status"]])
            scored = r["iou"] is not None
            self.iou.append(float(r["iou"]) if scored else float("nan"))
            self.dice.append(float(r["dice"]) if scored else float("nan"))
            self.counts.extend((int(r["tp"]), int(r["fp"]), int(r["fn"]), int(r["tn"])) if scored
                               else (-1, -1, -1, -1))
            self.curve.extend(r["curve"] if scored else _NO_CURVE)
            self.boundary.extend(_NAN if r.get(k) is None else float(r[k]) for k in BOUNDARY)
            self._extras(r)
            if r.get("error"):
                self.errors[row] = r["error"]

    def _extend_classification(self, records: Iterable[Mapping[str, Any]]) -> None:
        nan = [float("nan")] * self.classes
        for r in records:
            row = len(self.index)
            self.index.append(int(r["index"]))
            self.status.append(_CODE[r["status"]])
            self.probs.extend(r["probs"] if r.get("probs") is not None else nan)
            self._extras(r)
            if r.get("error"):
                self.errors[row] = r["error"]

    def to_records(self, lookup: DescriptorIndex) -> list[dict[str, Any]]:
        """Full records (the ledger's shape), with split, location and mask path (or class) from ``lookup``."""
        if self.classes:
            return self._classification_records(lookup)
        out = []
        k = len(_NO_CURVE)
        for row, index in enumerate(self.index):
            split, location, label, _ = lookup.describe(index)
            where = lookup.slice_of(index)
            scored = self.counts[4 * row] >= 0
            tp, fp, fn, tn = self.counts[4 * row : 4 * row + 4] if scored else (None,) * 4
            out.append({
                "index": index, **({"volume": where[0], "slice": where[1]} if where is not None else {}),
                "split": split, "location": location, "label": label, "rank": self.rank,
                "iou": self.iou[row] if scored else None, "dice": self.dice[row] if scored else None,
                "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                "curve": self.curve[k * row : k * (row + 1)].tolist() if scored else None,
                **{name: (None if v != v else v) for name, v in zip(BOUNDARY, self.boundary[3 * row : 3 * row + 3])},
                "status": STATUSES[self.status[row]], "error": self.errors.get(row, ""), **self._extra_fields(row),
            })
        return out

    def _classification_records(self, lookup: DescriptorIndex) -> list[dict[str, Any]]:
        probs = np.frombuffer(self.probs, np.float32).reshape(-1, self.classes) if self.classes else None
        out = []
        for row, index in enumerate(self.index):
            split, location, _, target = lookup.describe(index)
            p = probs[row]
            predicted = not np.isnan(p).any()
            out.append({
                "index": index, "split": split, "location": location, "rank": self.rank, "target": target,
                "predicted": int(np.argmax(p)) if predicted else None,
                "probs": [float(v) for v in p] if predicted else None,
                "status": STATUSES[self.status[row]], "error": self.errors.get(row, ""), **self._extra_fields(row),
            })
        return out


def record_table(task: str, rank: int, classes: list[str]) -> RecordTable:
    """This rank's empty table for the task's records."""
    return RecordTable(rank, classes=len(classes) if task == "classification" else 0)


class DescriptorIndex:
    """Rank 0's lookup from image index to (split, location, mask path), over the planned work lists."""

    def __init__(self, lists: Iterable[WorkList | None]) -> None:
        self.lists = [w for w in lists if w is not None and len(w)]
        self.splits = [w.splits() for w in self.lists]
        which = [np.full(len(w), k, np.int32) for k, w in enumerate(self.lists)]
        pos = [np.arange(len(w), dtype=np.int64) for w in self.lists]
        keys = np.concatenate([np.asarray(w.indices, np.int64) for w in self.lists]) if self.lists else \
            np.empty(0, np.int64)
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.which = np.concatenate(which)[order] if which else np.empty(0, np.int32)
        self.pos = np.concatenate(pos)[order] if pos else np.empty(0, np.int64)

    def slice_of(self, index: int) -> tuple[int, int] | None:
        """A volume slice's (volume, slice), else None."""
        at = int(np.searchsorted(self.keys, index))
        w = self.lists[int(self.which[at])]
        return None if w.slices is None else w.slices[int(self.pos[at])]

    def describe(self, index: int) -> tuple[str, str, str, int | None]:
        at = int(np.searchsorted(self.keys, index))
        if at >= len(self.keys) or self.keys[at] != index:
            raise KeyError(f"image {index} was not planned")
        k, p = int(self.which[at]), int(self.pos[at])
        w = self.lists[k]
        loc, lab = w.locations[p], w.labels[p]
        location = w.prefix + loc if isinstance(loc, str) else ";".join(w.prefix + x for x in loc)
        target = w.targets[p] if w.targets is not None else None
        return self.splits[k][p], location, "" if lab is None else w.prefix + lab, target
