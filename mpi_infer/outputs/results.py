"""Per-image records -> summary.json, per_image.csv, the ledger, predicted masks, a stdout table.

Every file a user reads is written atomically (temp file, fsync, rename): a killed job leaves the old
file or the new one, never half of one. The ledger is append-only, one complete JSON record per line,
flushed and fsync'd per batch, so finished work survives a crash and ``--resume`` can skip it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import cv2
import numpy as np

from ..atomic import with_path, write_text
from ..errors import clip

LEDGER_DIR = "ledger"
MASK_DIR = "masks"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def write_summary(out_dir: str, summary: Mapping[str, Any]) -> str:
    path = os.path.join(out_dir, "summary.json")
    write_text(path, json.dumps(summary, indent=2, sort_keys=False) + "\n")
    return path


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_per_image_csv(out_dir: str, records: Iterable[Mapping[str, Any]], task: Any,
                        classes: list[str] | None = None) -> str:
    """One row per selected image (per image and model, with several models: then a ``model`` column after
    ``index``), in dataset order (``index`` = position in the original YAML), models in the order given; the
    task gives the columns and each row (tasks/). ``--tta`` adds ``uncertainty`` before ``status``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    records = list(records)
    columns = list(task.csv_columns(records))
    if any("model" in r for r in records):
        columns.insert(1, "model")
    if any("uncertainty" in r for r in records):
        columns.insert(columns.index("status"), "uncertainty")
    writer.writerow(columns)
    for r in sorted(records, key=lambda r: (r["index"], r["split"])):  # stable: the model order stays
        row = {**task.csv_row(r, classes or []), **{k: r[k] for k in ("model", "uncertainty") if k in r}}
        writer.writerow([_fmt(row.get(c)) for c in columns])
    path = os.path.join(out_dir, "per_image.csv")
    write_text(path, buf.getvalue())
    return path


def read_per_image_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def mask_file_name(index: int, location: str) -> str:
    """``<index>_<image stem>.png``: unique per image (the index), safe (no folders, no ``..``)."""
    stem = os.path.splitext(os.path.basename(location.rstrip("/")))[0]
    stem = _UNSAFE.sub("_", stem).strip("._") or "image"
    return f"{index:07d}_{stem[:100]}.png"


def save_mask(out_dir: str, index: int, location: str, prob: np.ndarray, threshold: float,
              original_hw: tuple[int, int]) -> str:
    """The prediction at the image's original size as a 0/255 PNG (probabilities resized linearly,
    then thresholded), written atomically under ``<out>/masks/``."""
    h, w = original_hw
    full = cv2.resize(prob.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    png = ((full >= threshold).astype(np.uint8) * 255)
    ok, data = cv2.imencode(".png", png)
    if not ok:
        raise OSError("PNG encoding failed")
    folder = os.path.join(out_dir, MASK_DIR)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, mask_file_name(index, location))
    from ..atomic import write_bytes

    write_bytes(path, data.tobytes(), fsync=False)
    return path


class Ledger:
    """Append-only per-rank record log on the output volume (one attempt, one rank, one file)."""

    def __init__(self, out_dir: str, attempt: int, rank: int):
        os.makedirs(os.path.join(out_dir, LEDGER_DIR), exist_ok=True)
        self.path = ledger_path(out_dir, attempt, rank)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the run

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        if lines:
            try:
                self._fh.write(lines)
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except OSError as exc:
                raise with_path(exc, self.path) from None

    def close(self) -> None:
        self._fh.close()


def ledger_path(out_dir: str, attempt: int, rank: int) -> str:
    return os.path.join(out_dir, LEDGER_DIR, f"attempt-{attempt:03d}-rank-{rank:05d}.jsonl")


def read_ledger_file(path: str) -> list[dict[str, Any]]:
    """Every complete record of one ledger file (none if it is absent); a torn last line (a crash) is ignored."""
    records: list[dict[str, Any]] = []
    if not os.path.isfile(path):
        return records
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break  # torn write: the crash happened mid-line
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if not (isinstance(record, dict) and type(record.get("index")) is int
                    and isinstance(record.get("status"), str)):
                break  # not a record we wrote: trust nothing after it in this file
            records.append(record)
    return records


def complete_images(records: Iterable[Mapping[str, Any]], per_image: int, ok_only: bool = False) -> set[int]:
    """The images with a record for every one of their ``per_image`` outputs (each model, the ensemble); with
    ``ok_only``, records of failed images do not count (a resume runs those again)."""
    seen: dict[int, int] = {}
    for r in records:
        if not (ok_only and r["status"] == "failed"):
            seen[r["index"]] = seen.get(r["index"], 0) + 1
    return {i for i, n in seen.items() if n >= per_image}


def read_ledgers(out_dir: str) -> list[dict[str, Any]]:
    """Every complete record from every attempt's ledger, in attempt order."""
    folder = os.path.join(out_dir, LEDGER_DIR)
    if not os.path.isdir(folder):
        return []
    return [r for name in sorted(os.listdir(folder)) if name.endswith(".jsonl")
            for r in read_ledger_file(os.path.join(folder, name))]


def next_attempt(out_dir: str) -> int:
    folder = os.path.join(out_dir, LEDGER_DIR)
    if not os.path.isdir(folder):
        return 0
    nums = [int(m.group(1)) for n in os.listdir(folder) if (m := re.match(r"attempt-(\d+)-", n))]
    return max(nums) + 1 if nums else 0


def _num(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def summary_table(summary: Mapping[str, Any], notes: Iterable[str] = ()) -> str:
    """A one-screen table: counts and metrics per split and overall, then ``notes`` (the failed images), then the
    exit line."""
    if summary.get("task") == "classification":
        return _classification_table(summary, notes)
    rows = [("split", "selected", "scored", "unscored", "failed", "mean IoU", "mean Dice", "global IoU",
             "global Dice")]
    parts = list(summary.get("per_split", {}).items()) + [("all", summary)]
    for name, s in parts:
        im, m = s["images"], s["metrics"]
        rows.append((name, str(im["selected"]), str(im["scored"]), str(im["unscored"]), str(im["failed"]),
                     _num(m["mean_iou"]), _num(m["mean_dice"]), _num(m["global_iou"]), _num(m["global_dice"])))
    head = (f"mpi_infer: {summary.get('world_size')} rank(s) on {len(summary.get('hosts', []))} host(s), "
            f"backend {summary.get('backend', {}).get('backend', '?')}, profile "
            f"{summary.get('profile', {}).get('name', '?')}, threshold {summary.get('threshold')}")
    return _render(rows, head, summary, [*ci_lines(summary), *model_lines(summary), *notes])


def model_lines(summary: Mapping[str, Any]) -> list[str]:
    """Several models: each one's headline with its CI, the best per split, and each pair's verdict."""
    models = summary.get("models")
    if not models:
        return []
    best = summary.get("best_model", {})
    metric = best.get("metric", "mean_dice")
    key = {"mean_dice": "dice", "accuracy": "accuracy"}.get(metric, metric)

    def one(name: str, m: Mapping[str, Any]) -> str:
        lo, hi = (m.get("statistics", {}).get(key) or {}).get("ci95") or (None, None)
        return f"{name} {_num(m['metrics'].get(metric))}" + (f" [{_num(lo)}, {_num(hi)}]" if lo is not None else "")
    per = ", ".join(f"{s} {n}" for s, n in best.get("per_split", {}).items())
    return [f"models ({metric.replace('_', ' ')}): " + "; ".join(one(n, m) for n, m in models.items()),
            f"best: {best.get('all')} (per split: {per})", *(c["verdict"] for c in summary.get("comparison", []))]


def ci_lines(summary: Mapping[str, Any]) -> list[str]:
    """The headline means with their bootstrap 95% CIs, and the ISIC score, in one line."""
    st = summary.get("statistics") or {}
    if not st.get("dice", {}).get("ci95"):
        return []

    def cited(key: str, label: str) -> str:
        s = st[key]
        value = s.get("mean", s.get("value"))
        lo, hi = s.get("ci95") or (None, None)
        return f"{label} {_num(value)} [{_num(lo)}, {_num(hi)}]"

    boot = summary.get("bootstrap", {})
    boundary = [f"{label} {_num(st[k]['mean'], 2)} [{_num((st[k].get('ci95') or [None])[0], 2)}, "
                f"{_num((st[k].get('ci95') or [None, None])[1], 2)}] (n {st[k]['n']}, worst case "
                f"{st[k]['worst_case_images']}, excluded {st[k]['excluded_images']})"
                for k, label in (("hd95", "HD95 px"), ("assd", "ASSD px"), ("nsd", "NSD")) if k in st]
    policy = summary.get("boundary", {}).get("empty_policy", "")
    head = f"95% CI ({boot.get('replicates')} bootstrap resamples of {boot.get('unit', 'image')}s): "
    return [*([f"boundary ({policy}): " + "; ".join(boundary)] if boundary else []), head
            + ", ".join(cited(k, label) for k, label in (("dice", "mean Dice"), ("iou", "mean IoU"),
                                                          ("thresholded_jaccard", "ISIC score"),
                                                          ("global_dice", "global Dice")))]


def _render(rows: list[tuple[str, ...]], head: str, summary: Mapping[str, Any], notes: Iterable[str] = ()) -> str:
    """Aligned columns, rules around the body, the head line above and the timing and exit line below."""
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    t = summary.get("timings", {})
    converted = summary.get("images", {}).get("converted", 0)
    tail = (f"wall {t.get('total_s', 0):.2f} s, {t.get('images_per_s', 0):.1f} images/s"
            + (f"; {converted} image(s) scored after a conversion (per_image.csv says which)" if converted else ""))
    return "\n".join([head, *lines, tail, *notes, exit_line(summary.get("exit_code"), summary.get("exit_meaning", ""))])


def exit_line(code: Any, meaning: str) -> str:
    """The last line a run prints. Under mpirun a non-zero exit is followed by Open MPI's own "prterun detected
    that one or more processes exited with non-zero status" block: say here that the code is ours."""
    line = f"exit {code}: {meaning}"
    if code:
        line += (" (mpi_infer's own exit code; under mpirun, Open MPI's 'prterun detected ... non-zero status' "
                 "note after this line only repeats it: it is not a crash)")
    return line


def problem_lines(records: list[Mapping[str, Any]], limit: int = 10) -> list[str]:
    """The failed images, with their reasons, for the console (the first ``limit``; per_image.csv has all)."""
    failed = sorted((r for r in records if r.get("status") == "failed"), key=lambda r: r["index"])
    if not failed:
        return []
    lines = [f"failed: {len(failed)} image(s)"]
    for r in failed[:limit]:
        where = ";".join(r.get("location", "")) if isinstance(r.get("location"), list) else r.get("location", "")
        lines.append(f"  #{r['index']} {clip(str(where), 120)}: {clip(str(r.get('error', '')), 200)}")
    if len(failed) > limit:
        lines.append(f"  ... and {len(failed) - limit} more (per_image.csv, status 'failed')")
    return lines


def _classification_table(summary: Mapping[str, Any], notes: Iterable[str] = ()) -> str:
    topk = "top-2" if summary["metrics"].get("top_k_accuracy", {}).get("2") is not None else None
    rows = [("split", "selected", "scored", "unscored", "failed", "accuracy", "balanced acc", "macro F1",
             *([topk] if topk else []))]
    for name, s in [*summary.get("per_split", {}).items(), ("all", summary)]:
        im, m = s["images"], s["metrics"]
        rows.append((name, str(im["selected"]), str(im["scored"]), str(im["unscored"]), str(im["failed"]),
                     _num(m["accuracy"]), _num(m["balanced_accuracy"]), _num(m["macro_f1"]),
                     *([_num(m["top_k_accuracy"].get("2"))] if topk else [])))
    head = (f"mpi_infer: classification, {len(summary.get('classes', []))} classes; "
            f"{summary.get('world_size')} rank(s) on {len(summary.get('hosts', []))} host(s), "
            f"backend {summary.get('backend', {}).get('backend', '?')}, profile "
            f"{summary.get('profile', {}).get('name', '?')}")
    return _render(rows, head, summary, [*model_lines(summary), *notes])
