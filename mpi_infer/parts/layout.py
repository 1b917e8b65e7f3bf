"""Where parts write in the shared output folder, and what each part records for ``merge``.

OUT/parts/part-K-of-N/ is part K's own run folder (run.json, ledger/, run.log, part.json, done.json); masks go
to OUT/masks/ (named by image index: parts never collide); ``merge`` writes OUT/summary.json, per_image.csv and
report.html, as one MPI run would."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

from ..argtypes import MAX_PARTS
from ..atomic import read_input, write_text
from ..config import RunConfig
from ..errors import ConfigError, UsageError, clip
from ..models.modelset import ModelSpec
from ..outputs.results import strict_json

PARTS_DIR = "parts"
PART_FILE = "part.json"  # written when the part starts: its options, its place in the plan
DONE_FILE = "done.json"  # written when the part finishes: its timings, host and engine
PART_NAME = re.compile(r"part-(\d{1,6})-of-(\d{1,6})")


def part_spec(text: str) -> tuple[int, int]:
    """``K/N`` (0 <= K < N): which part of how many."""
    m = re.fullmatch(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*", text)
    if not m:
        raise UsageError(f"argument --part: expected K/N (part K of N, counted from 0), got {clip(text, 40)!r}")
    k, n = int(m.group(1)), int(m.group(2))
    if not 0 < n <= MAX_PARTS or k >= n:
        raise UsageError(f"argument --part: {k}/{n}: needs 0 <= K < N <= {MAX_PARTS} (parts count from 0, as "
                         f"SLURM_ARRAY_TASK_ID and JOB_COMPLETION_INDEX do)")
    return k, n


def part_dir(out: str, k: int, n: int) -> str:
    return os.path.join(out, PARTS_DIR, f"part-{k:03d}-of-{n:03d}")


def list_parts(out: str) -> dict[int, list[tuple[int, str]]]:
    """The part folders in ``out``: N -> [(K, folder)] as found (a folder of another N is refused by both)."""
    found: dict[int, list[tuple[int, str]]] = {}
    folder = os.path.join(out, PARTS_DIR)
    if os.path.isdir(folder) and not os.path.islink(folder):
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            m = PART_NAME.fullmatch(entry.name)
            if m and entry.is_dir(follow_symlinks=False):
                found.setdefault(int(m.group(2)), []).append((int(m.group(1)), entry.path))
    return found


# How a part ran, not what it computes: parts may differ in these (a requeued task adds --resume; a bigger node
# gets more --threads); everything else must match for the merge.
OPERATIONAL = ("resume", "overwrite", "quiet", "verbose", "progress_interval", "threads", "loader_threads",
               "stall_timeout", "metrics_file", "pushgateway", "pushgateway_job", "gpu", "eddl_mem", "expect_hosts",
               "dry_run", "batch_size")


def same_run(a: Any, b: Any) -> bool:
    """Whether two parts' recorded options describe the same run (OPERATIONAL options aside)."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    return {k: v for k, v in a.items() if k not in OPERATIONAL} == {k: v for k, v in b.items() if k not in OPERATIONAL}


def config_to_json(cfg: RunConfig) -> dict[str, Any]:
    """The run's options as part.json keeps them (paths absolute: the merge may run elsewhere in the tree)."""
    data = dataclasses.asdict(cfg)
    data["models"] = [{"name": m.name, "path": os.path.abspath(m.path), "activation": m.activation}
                      for m in cfg.models]
    for key in ("dataset", "out", "metrics_file"):
        if data[key]:
            data[key] = os.path.abspath(data[key])
    return data


def config_from_json(data: Any, where: str) -> RunConfig:
    """part.json's options back as the RunConfig they came from; anything else is a ConfigError naming the file."""
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    if not isinstance(data, dict) or set(data) - set(fields) or not {"dataset", "out", "models"} <= set(data):
        raise ConfigError(f"{where}: 'config' is not the options a part records (a newer or foreign file?)")
    try:
        models = tuple(ModelSpec(str(m["name"]), str(m["path"]), str(m.get("activation", "none")))
                       for m in data["models"])
    except (TypeError, KeyError) as exc:
        raise ConfigError(f"{where}: 'config.models' is damaged: {clip(str(exc), 100)}") from None
    values = {**data, "models": models, "splits": tuple(data.get("splits") or ("test",))}
    return RunConfig(**values)


def write_json(path: str, data: dict[str, Any]) -> None:
    write_text(path, strict_json(data, indent=2, default=str))


def read_json(path: str, what: str) -> dict[str, Any]:
    """A part's record file: a JSON object, or a ConfigError naming the file."""
    try:
        data = json.loads(read_input(path, ConfigError, what, max_bytes=1 << 24).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: damaged ({clip(str(exc), 120)}); not the {what} a part writes") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: damaged (expected a JSON object); not the {what} a part writes")
    return data
