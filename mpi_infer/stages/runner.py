"""Run one rank's images: load in the background, predict, score, record. No MPI here.

Records are plain dicts (JSON- and pickle-friendly), one per image, whatever happened to it, so the
report counts every selected image exactly once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..data.worklist import WorkItem
from ..loaders.imagefiles import DEFAULT_MAX_PIXELS
from ..loaders.opencv import Batch, iter_batches
from ..models.modelset import ENSEMBLE, combine, predict_tta, uncertainty
from ..outputs.ledger import Ledger
from ..profiles import Profile
from ..tasks import ScoreOptions, Task, task_for

FAULT_ENV = "MPI_INFER_FAULT"


@dataclass
class Fault:
    """Test-only fault injection, from $MPI_INFER_FAULT, e.g. ``raise:rank=1:after=3``,
    ``kill:rank=0:after=2`` or ``slow:rank=1:factor=2``. Never set outside tests and benchmarks."""

    kind: str = ""
    rank: int = -1
    after: int = 0
    factor: float = 1.0

    @classmethod
    def from_env(cls, rank: int) -> Fault:
        """The first fault for this rank; several are separated by ``;`` (``kill:rank=1:after=2;kill:rank=2``)."""
        for spec in os.environ.get(FAULT_ENV, "").split(";"):
            if not spec:
                continue
            kind, *opts = spec.split(":")
            kv = dict(o.split("=", 1) for o in opts if "=" in o)
            fault = cls(kind, int(kv.get("rank", -1)), int(kv.get("after", 0)), float(kv.get("factor", 1)))
            if fault.rank in (-1, rank):
                return fault
        return cls()

    def check(self, done: int) -> None:
        if self.kind == "raise" and done >= self.after:
            raise RuntimeError(f"injected fault ({FAULT_ENV}) after {done} images")
        if self.kind == "kill" and done >= self.after:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "stop" and done >= self.after:
            self.kind = ""  # once: a real SIGSTOP, as a frozen node or `kill -STOP` does
            os.kill(os.getpid(), signal.SIGSTOP)


@dataclass
class RankTimings:
    wait_s: float = 0.0  # waiting for the loader
    decode_s: float = 0.0  # loader threads' CPU seconds reading and decoding files (summed over threads)
    preprocess_s: float = 0.0  # loader threads' CPU seconds resizing and checking (summed over threads)
    predict_s: float = 0.0
    score_s: float = 0.0
    total_s: float = 0.0
    images: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def stats(self) -> dict[str, float]:
        """The rank's timings as summary.json's per-rank line shows them."""
        return {"wall_s": round(self.total_s, 4), "predict_s": round(self.predict_s, 4),
                "wait_s": round(self.wait_s, 4), "score_s": round(self.score_s, 4),
                "decode_s": round(self.decode_s, 4), "preprocess_s": round(self.preprocess_s, 4)}


def run_items(
    items: Iterable[WorkItem],
    predict: Callable[[np.ndarray], np.ndarray],
    profile: Profile,
    *,
    rank: int = 0,
    batch_size: int = 8,
    threads: int = 2,
    ledger: Ledger | None = None,
    on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
    fault: Fault | None = None,
    timings: RankTimings | None = None,
    batch_source: Callable[[Iterable[WorkItem], int, int], Iterable[Batch]] | None = None,
    keep: bool = True,
    task: Task | None = None,
    options: ScoreOptions | None = None,
    decode_mode: str = "exact",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    predictors: list[tuple[str, Callable[[np.ndarray], np.ndarray]]] | None = None,
    ensemble: str | None = None,
    tta: str | None = None,
    slice_order: str = "yaml",
) -> list[dict[str, Any]]:
    """Every item's record; the short last batch is run like any other.

    Batches come from our OpenCV loader, or from ``batch_source(items, batch_size, threads)`` (the ecvl
    backend's DLDataset); everything after the forward pass is the same code either way.
    ``keep=False`` returns nothing: the caller takes each batch's records in ``on_batch`` (the MPI job
    keeps them compactly). The task (default: segmentation) makes each record and scores each batch.

    ``predictors`` [(name, predict)] runs several models on every batch (each record then carries ``model``), and
    ``ensemble``/``tta`` combine them (models/modelset.py); masks are saved for the first model only."""
    task = task or task_for("segmentation")
    options = options or ScoreOptions()
    fault = fault or Fault()
    timings = timings if timings is not None else RankTimings()
    out: list[dict[str, Any]] = []
    start = time.perf_counter()
    t_wait = time.perf_counter()
    if batch_source is not None:
        batches = batch_source(items, batch_size, threads)
    else:
        batches = iter_batches(items, profile, batch_size, threads=threads, decode_mode=decode_mode,
                               keep_full_mask=options.score_at == "original", max_pixels=max_pixels,
                               slice_order=slice_order)
    for batch in batches:
        t0 = time.perf_counter()
        timings.wait_s += t0 - t_wait
        for it in batch.items:
            timings.decode_s += it.decode_s
            timings.preprocess_s += it.preprocess_s
        predicted_before = timings.predict_s
        records, saved = _score_models(batch, predictors or [("", predict)], task, profile, options, rank,
                                       ensemble, tta, timings, tag=predictors is not None and
                                       (len(predictors) > 1 or bool(ensemble)))
        if fault.kind == "slow" and fault.factor > 1:
            time.sleep((timings.predict_s - predicted_before) * (fault.factor - 1))
        if ledger is not None:
            try:
                ledger.append(records)
            except OSError:  # no record, no mask: a mask on disk always has its record in the ledger
                for path in saved:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                raise
        if keep:
            out.extend(records)
        timings.images += len(batch.items)
        if on_batch is not None:
            on_batch(records)
        fault.check(timings.images)
        t_wait = time.perf_counter()
    timings.total_s += time.perf_counter() - start
    return out


def _score_models(batch: Any, predictors: list[tuple[str, Callable[[np.ndarray], np.ndarray]]], task: Task,
                  profile: Profile, options: ScoreOptions, rank: int, ensemble: str | None, tta: str | None,
                  timings: RankTimings, tag: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """Every model (then the ensemble) on one batch: a record per image per output, model-major (one model, no
    ``tag``: one plain record per image)."""
    outputs: list[tuple[str, np.ndarray | None, np.ndarray | None]] = []
    if batch.x is not None:
        t0 = time.perf_counter()
        for name, predict in predictors:
            outputs.append((name, *predict_tta(predict, batch.x, tta)))
        if ensemble:
            means = [o[1] for o in outputs]
            outputs.append((ENSEMBLE, combine(means, ensemble), np.stack(means).std(axis=0) if tta else None))
        outputs = [(name, batch.per_row(probs), batch.per_row(spread)) for name, probs, spread in outputs]
        timings.predict_s += time.perf_counter() - t0
    else:
        outputs = [(name, None, None) for name, _ in predictors] + ([(ENSEMBLE, None, None)] if ensemble else [])
    t1 = time.perf_counter()
    records: list[dict[str, Any]] = []
    saved: list[str] = []
    for j, (name, probs, spread) in enumerate(outputs):
        recs = [task.blank_record(it, rank) for it in batch.items]
        for r in recs:
            if tag:
                r["model"] = name
            if tta:
                r["uncertainty"] = None
        if probs is not None:
            saved += task.score_batch(batch, probs, recs, profile, options if j == 0 else
                                      replace(options, masks_dir=None))
            if spread is not None:
                for pos, value in enumerate(uncertainty(probs, spread, profile.threshold)):
                    recs[batch.rows[pos]]["uncertainty"] = value
        records += recs
    timings.score_s += time.perf_counter() - t1
    return records, saved
