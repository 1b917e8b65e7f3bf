"""Each rank's ledger: finished records appended as JSON lines under <out>/ledger/, one file per attempt and
rank, so --resume, --fault-tolerant and a crash lose no finished image; and reading them back."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..atomic import open_append, with_path
from ..errors import ConfigError, clip
from .results import strict_json

LEDGER_DIR = "ledger"


class Ledger:
    """Append-only per-rank record log on the output volume (one attempt, one rank, one file)."""

    def __init__(self, out_dir: str, attempt: int, rank: int):
        folder = os.path.join(out_dir, LEDGER_DIR)
        os.makedirs(folder, exist_ok=True)
        if os.path.islink(folder):
            raise ConfigError(f"--out {out_dir}: {LEDGER_DIR}/ is a symlink; mpi_infer never writes through one")
        self.path = ledger_path(out_dir, attempt, rank)
        try:
            self._fh = open_append(self.path)
        except OSError as exc:
            raise ConfigError(f"--out {out_dir}: cannot open the ledger {self.path}: {exc.strerror or exc}"
                              + (" (a symlink: never followed)" if os.path.islink(self.path) else "")) from None

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        lines = "".join(strict_json(r, separators=(",", ":")) + "\n" for r in records)
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


def read_ledger_file(path: str, check: Callable[[dict[str, Any]], str | None] | None = None
                     ) -> list[dict[str, Any]]:
    """Every complete record of one ledger file (none if it is absent); a torn last line (a crash) is ignored.

    ``check`` (--resume) says what is wrong with a record, or None: a complete line that is not a record this run
    could have written is then a ConfigError (exit 12) naming the file and the line, never a result. Without it
    (a lost rank's ledger, written moments ago by this very run) nothing after such a line is trusted."""
    records: list[dict[str, Any]] = []
    if not os.path.isfile(path):
        return records
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.endswith("\n"):
                break  # torn write: the crash happened mid-line
            try:
                record = json.loads(line, parse_constant=_no_constant)
                problem = (None if isinstance(record, dict) and type(record.get("index")) is int
                           and isinstance(record.get("status"), str) else "not a record (index, status, ...)")
            except (json.JSONDecodeError, ValueError) as exc:
                record, problem = None, f"not JSON: {clip(str(exc), 80)}"
            if problem is None and check is not None:
                problem = check(record)
            if problem is not None:
                if check is None:
                    break  # not a record we wrote: trust nothing after it in this file
                raise ConfigError(f"--resume: {path}: line {number}: {problem}; not a record this run could have "
                                  f"written. Move the file away (its images run again), or use a new --out or "
                                  f"--overwrite")
            records.append(record)
    return records


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def complete_images(records: Iterable[Mapping[str, Any]], per_image: int, ok_only: bool = False) -> set[int]:
    """The images with a record for every one of their ``per_image`` outputs (each model, the ensemble); with
    ``ok_only``, records of failed images do not count (a resume runs those again)."""
    seen: dict[int, int] = {}
    for r in records:
        if not (ok_only and r["status"] == "failed"):
            seen[r["index"]] = seen.get(r["index"], 0) + 1
    return {i for i, n in seen.items() if n >= per_image}


def read_ledgers(out_dir: str, check: Callable[[dict[str, Any]], str | None] | None = None
                 ) -> list[dict[str, Any]]:
    """Every complete record from every attempt's ledger, in attempt order (``check``: read_ledger_file's)."""
    folder = os.path.join(out_dir, LEDGER_DIR)
    if not os.path.isdir(folder):
        return []
    return [r for name in sorted(os.listdir(folder)) if name.endswith(".jsonl")
            for r in read_ledger_file(os.path.join(folder, name), check)]


def next_attempt(out_dir: str) -> int:
    folder = os.path.join(out_dir, LEDGER_DIR)
    if not os.path.isdir(folder):
        return 0
    nums = [int(m.group(1)) for n in os.listdir(folder) if (m := re.match(r"attempt-(\d+)-", n))]
    return max(nums) + 1 if nums else 0


def latest_records(records: list[dict[str, Any]], outputs: list[str] | None = None) -> list[dict[str, Any]]:
    """One record per image (per image and model, for ``outputs``): the last one written (ledgers are read in
    attempt order); records of a model this run does not have are dropped."""
    by_key: dict[tuple[int, str], dict[str, Any]] = {}
    for r in records:
        model = r.get("model", "") if outputs else ""
        if outputs is None or model in outputs:
            by_key[(r["index"], model)] = r
    return list(by_key.values())
