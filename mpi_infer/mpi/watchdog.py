"""A rank that stops making progress ends the job instead of hanging it (no MPI here: the job passes ``abort``).

Each rank watches itself from a daemon thread: when no batch has finished for ``timeout`` seconds while it is
computing (a read blocked on a stale NFS mount, a wedged device), it prints every thread's stack
(faulthandler), its host and the images in flight, and calls ``abort`` with the retryable exit code, so the
launcher Job retries and ``--resume`` continues. A process that is stopped (SIGSTOP, a
frozen node) cannot watch itself: the job's progress messages let rank 0 name a silent rank, and rank 0's
heartbeats let the others name a silent rank 0 (job.py).

The default timeout, 600 s, is far above any healthy batch: a batch of 8 ISIC-sized photographs through a
full-width SegNet on one CPU core takes about 20 s here, and EDDL's CPU engine at 512x512 about a minute.
"""

from __future__ import annotations

import faulthandler
import socket
import sys
import threading
import time
from collections.abc import Callable

from ..data.worklist import WorkList
from ..errors import EXIT_STALLED, RetryableError, clip

DEFAULT_STALL_TIMEOUT_S = 600.0
ADVICE = (f"the job ends with exit {EXIT_STALLED} (retryable): finished images are in the ledger, rerun with "
          f"--resume")


class StallError(RetryableError):
    """A rank made no progress for the stall timeout."""

    exit_code = EXIT_STALLED


class Watchdog:
    """Calls ``abort(EXIT_STALLED)`` when ``beat`` has not been called for ``timeout`` s while ``armed``."""

    def __init__(self, rank: int, timeout: float, abort: Callable[[int], None],
                 in_flight: Callable[[], str] = lambda: "", poll_s: float | None = None):
        self.rank, self.timeout, self.abort, self.in_flight = rank, timeout, abort, in_flight
        self.phase = ""  # what the rank is doing before inference (planning, opening the model): named if it hangs
        self.last = time.monotonic()
        self.armed = False
        self._stop = threading.Event()
        self._poll = poll_s if poll_s is not None else min(1.0, max(0.05, timeout / 10))
        self._thread = threading.Thread(target=self._watch, name="mpi_infer-watchdog", daemon=True)
        if timeout > 0:
            self._thread.start()

    def beat(self) -> None:
        self.last = time.monotonic()

    def arm(self, armed: bool = True, phase: str = "") -> None:
        """Watch (while computing, or in ``phase`` before inference) or not (while waiting for others, which the
        job watches itself)."""
        self.beat()
        self.armed, self.phase = armed, phase

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            idle = time.monotonic() - self.last
            if self.armed and idle > self.timeout:
                self._fire(idle)
                return

    def _fire(self, idle: float) -> None:
        where = "" if self.phase else self.in_flight()
        what = f"still {self.phase} after" if self.phase else "no batch finished for"
        sys.stderr.write(
            f"[rank {self.rank}] mpi_infer: stalled: {what} {idle:.0f} s (--stall-timeout "
            f"{self.timeout:g}) on host {socket.gethostname()}{f'; in flight: {where}' if where else ''}. "
            f"Every thread's stack follows; {ADVICE}\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        self.abort(EXIT_STALLED)


def in_flight(work: WorkList | None, done: int, batch_size: int) -> str:
    """The images a stalled rank was working on: the next batch of its shard (static schedule)."""
    if work is None:
        return "the current chunk of the dynamic schedule"
    items = list(work.slice(done, min(len(work), done + batch_size)))
    return ", ".join(f"#{it.index} {clip(it.locations[0], 100)}" for it in items) or "none (all done)"
