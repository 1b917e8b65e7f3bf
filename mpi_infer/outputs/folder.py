"""The output folder's rules: what mpi_infer writes there, run.json (what --resume must match), and when a
folder may be used (--resume, --overwrite), removed, or left as it was after a failure before inference."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from typing import Any

from ..atomic import read_input
from ..errors import ConfigError, clip
from ..tasks.masks import MASK_DIR
from .ledger import LEDGER_DIR

RUN_FILE = "run.json"
LOG_FILE = "run.log"  # what rank 0 printed, appended per attempt (console.ConsoleRecord)
FINAL_FILE = ".final-exit.json"  # a launch's permanent exit, for its retries (launch/supervise.py)


OUR_FILES = ("summary.json", "per_image.csv", RUN_FILE, "report.html", LOG_FILE, "patients.csv", "per_volume.csv",
             FINAL_FILE)


# Our folders and the names we write in them (plus atomic writes' ".tmp-*"): --overwrite and the clean-up
# after an early failure delete these by name, never a user's file that happens to sit in the folder.
OUR_FOLDERS = {
    LEDGER_DIR: re.compile(r"attempt-\d{3,}-rank-\d{5,}\.jsonl"),
    MASK_DIR: re.compile(r"\d{7,}_[A-Za-z0-9._-]+\.png"),
    ".cache": re.compile(r"[0-9a-f]{20}-[a-z0-9-]+-\d+x\d+\.onnx"),
}


def prepare_output(out: str, resume: bool, overwrite: bool) -> tuple[bool, bool]:
    """Refuse a non-empty folder unless --resume or --overwrite; check it can be written.

    Returns (fresh, created): whether the folder was absent or empty, and whether we made it (then a failure
    before inference clears what we wrote, and removes the folder we made)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pick one")
    created = not os.path.exists(out)
    try:
        busy = os.path.isdir(out) and any(True for _ in os.scandir(out))
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot list it: {exc.strerror or exc}") from exc
    if busy and not (resume or overwrite):
        raise ConfigError(f"--out {out}: folder is not empty; pass --resume to continue the run there, "
                          f"or --overwrite to replace its results")
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)  # O_EXCL: never a planted symlink
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write there: {exc.strerror or exc}") from exc
    for folder in OUR_FOLDERS:  # nothing of ours is written through a link a colleague planted
        if os.path.islink(os.path.join(out, folder)):
            raise ConfigError(f"--out {out}: {folder}/ is a symlink; mpi_infer never writes through one (remove it, "
                              f"or use a new --out)")
    if busy and overwrite:
        try:
            remove_outputs(out)
        except OSError as exc:
            raise ConfigError(f"--out {out}: --overwrite cannot remove the earlier results: "
                              f"{exc.strerror or exc}: {exc.filename or ''}") from exc
    return not busy, created


def remove_outputs(out: str, *, remove_folder: bool = False) -> None:
    """Delete what mpi_infer writes in ``out``, by name, and nothing else (a user's file in ``masks/`` stays,
    and so does its folder). ``remove_folder``: also remove ``out`` itself if that leaves it empty."""
    for name in OUR_FILES:
        p = os.path.join(out, name)
        if os.path.isfile(p) or os.path.islink(p):
            os.unlink(p)
    for folder, pattern in OUR_FOLDERS.items():
        path = os.path.join(out, folder)
        if not os.path.isdir(path) or os.path.islink(path):
            continue
        for entry in os.scandir(path):
            if (pattern.fullmatch(entry.name) or entry.name.startswith(".tmp-")) and not entry.is_dir(
                    follow_symlinks=False):
                os.unlink(entry.path)
        with contextlib.suppress(OSError):
            os.rmdir(path)  # only if nothing of the user's is left in it
    if remove_folder:
        with contextlib.suppress(OSError):
            os.rmdir(out)


def read_run_file(path: str) -> dict[str, Any]:
    """The identity an earlier attempt recorded; a damaged file is a configuration error naming it."""
    try:
        before = json.loads(read_input(path, ConfigError, "run.json", max_bytes=1 << 24).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--resume: {path} is damaged ({clip(str(exc), 120)}); it is not the run.json an "
                          f"earlier attempt wrote; use a new --out, or --overwrite") from None
    if not isinstance(before, dict):
        raise ConfigError(f"--resume: {path} is damaged (expected a JSON object, found {type(before).__name__}); "
                          f"use a new --out, or --overwrite")
    return before
