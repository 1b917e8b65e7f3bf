"""Rank 0's one aggregated progress display (no MPI here: job.py feeds it the counts).

On a terminal: a live tqdm bar. Otherwise (Kubernetes logs, CI): one log line every few seconds with
images done of total, images/s, ETA and failures. Every log line carries the rank that wrote it.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_LEVEL = {"quiet": False, "verbose": False}


def configure(quiet: bool = False, verbose: bool = False) -> None:
    _LEVEL["quiet"], _LEVEL["verbose"] = quiet, verbose


def log(rank: int, message: str, *, verbose: bool = False, stream: TextIO | None = None) -> None:
    """``[rank k] message`` on stderr; verbose lines only with --verbose, nothing but errors with --quiet."""
    if _LEVEL["quiet"] or (verbose and not _LEVEL["verbose"]):
        return
    out = stream or sys.stderr
    out.write(f"[rank {rank}] {message}\n")
    out.flush()


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def progress_line(done: int, total: int, failed: int, elapsed: float) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else None
    pct = 100.0 * done / total if total else 100.0
    return (f"progress: {done}/{total} images ({pct:.1f}%), {rate:.1f} images/s, "
            f"ETA {format_eta(eta)}, {failed} failed")


class ProgressDisplay:
    """Shows the job's totals; ``update`` is cheap and may be called as often as counts arrive."""

    def __init__(self, total: int, *, interval: float = 5.0, enabled: bool = True,
                 stream: TextIO | None = None, tty: bool | None = None):
        self.total = total
        self.interval = interval
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.tty = self.stream.isatty() if tty is None else tty
        self.start = time.perf_counter()
        self.last_log = self.start
        self.done = self.failed = 0
        self.bar = None
        if self.enabled and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=self.stream, unit="img", dynamic_ncols=True, desc="mpi_infer")

    def update(self, done: int, failed: int) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(done - self.done)
            self.bar.set_postfix(failed=failed, refresh=False)
        self.done, self.failed = done, failed
        now = time.perf_counter()
        if self.bar is None and now - self.last_log >= self.interval:
            self.last_log = now
            self.stream.write(f"[rank 0] {progress_line(done, self.total, failed, now - self.start)}\n")
            self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            elapsed = time.perf_counter() - self.start
            self.stream.write(f"[rank 0] {progress_line(self.done, self.total, self.failed, elapsed)}\n")
            self.stream.flush()
