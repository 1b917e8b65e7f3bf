"""Per-image records -> summary.json, per_image.csv, the ledger, predicted masks, a stdout table.

Every file a user reads is written atomically (temp file, fsync, rename): a killed job leaves the old
file or the new one, never half of one. The ledger is append-only, one complete JSON record per line,
flushed and fsync'd per batch, so finished work survives a crash and ``--resume`` can skip it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ..atomic import write_text


def write_summary(out_dir: str, summary: Mapping[str, Any]) -> str:
    path = os.path.join(out_dir, "summary.json")
    write_text(path, strict_json(summary, indent=2) + "\n")
    return path


def strict_json(value: Any, **kw: Any) -> str:
    """JSON that every parser accepts: a NaN or an infinity (an undefined statistic) is written as null, never
    as the ``NaN`` Python's json module writes by default, which is not JSON."""
    return json.dumps(_finite(value), allow_nan=False, **kw)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


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
    if any("slice" in r for r in records):
        columns[1:1] = ["volume", "slice"]
    if any("uncertainty" in r for r in records):
        columns.insert(columns.index("status"), "uncertainty")
    writer.writerow(columns)
    for r in sorted(records, key=lambda r: (r["index"], r["split"])):  # stable: the model order stays
        row = {**task.csv_row(r, classes or []),
               **{k: r[k] for k in ("model", "uncertainty", "volume", "slice") if k in r}}
        writer.writerow([_fmt(row.get(c)) for c in columns])
    path = os.path.join(out_dir, "per_image.csv")
    write_text(path, buf.getvalue())
    return path


PATIENTS_FILE = "patients.csv"
VOLUMES_FILE = "per_volume.csv"


def write_rows(path: str, rows: list[Mapping[str, Any]]) -> str:
    """A CSV of dict rows (patients.csv), columns in first-seen order."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([_fmt(r.get(c)) for c in columns])
    write_text(path, buf.getvalue())
    return path


def read_per_image_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


