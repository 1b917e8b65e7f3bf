"""SIGTERM and SIGINT as a retry, not a crash: an MPI rank and a ``--part`` process stop the same way (what
finished is in the ledger; exit 202)."""

from __future__ import annotations

import signal
from typing import Any

from ..errors import Interrupted


def stop_on_signals() -> dict[int, Any]:
    """SIGTERM (an eviction, a preemption, the launcher's grace period) and SIGINT (Ctrl-C; mpirun forwards both
    to every rank) stop the run as a retry: Interrupted is raised in the main thread, which ends the job with
    the retryable exit 202 after the ledger (written batch by batch) has every finished image. Returns the
    handlers to restore (the Python API's caller keeps its own)."""
    def interrupt(signum: int, _frame: Any) -> None:
        raise Interrupted(f"interrupted by {signal.Signals(signum).name} (an eviction or a preemption, Ctrl-C, or "
                          f"another rank's abort, whose own message says why)")

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, interrupt)
        except ValueError:  # not the main thread (a caller's worker thread): the caller handles signals
            break
    return previous


def interrupted_by(exc: BaseException) -> Interrupted | None:
    """The Interrupted behind ``exc``: the signal handler's exception, or the cause of the error a library
    (ONNX Runtime's run, say) raised when the handler interrupted it."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, Interrupted):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def restore_handlers(handlers: dict[int, Any]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
