"""The launcher's guard around ``mpirun``: an exit 0 that finished nothing becomes the retryable exit 200.

Open MPI 5's runtime (PRRTE 3) cannot survive a lost *host*: when the daemon of one node dies (the node is gone,
its pod is killed), prterun prints "PRTE has lost communication with a remote daemon ... will terminate the job",
kills every rank, and exits **0** (measured in scripts/rehearsal.py --lose-host, with and without ULFM; PRRTE's
errmgr aborts the daemon job on any daemon COMM_FAILED). On Kubernetes that launcher exit marks the MPIJob
Succeeded with no results. ``mpi_infer supervise -- mpirun ...`` runs the command, and when it exits 0 but
``--out`` holds no summary of the attempt it started, says so and exits 200, so the launcher Job retries and
``--resume`` continues. Any other exit code passes through; SIGTERM and SIGINT are forwarded to mpirun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from ..errors import EXIT_INTERRUPTED, EXIT_RETRYABLE, EXIT_USAGE
from ..outputs.ledger import next_attempt


def run_out_dir(command: Sequence[str]) -> str | None:
    """The ``--out`` of the ``mpi_infer run`` inside the command (``--out X`` or ``--out=X``): the last one, as
    argparse reads it, so the guard looks where the run wrote."""
    found = None
    for k, arg in enumerate(command):
        if arg == "--out" and k + 1 < len(command):
            found = command[k + 1]
        elif arg.startswith("--out="):
            found = arg.split("=", 1)[1]
    return found


def finished(out: str, attempt: int) -> bool:
    """summary.json exists and was written by attempt ``attempt`` or a later one."""
    try:
        with open(os.path.join(out, "summary.json"), encoding="utf-8") as fh:
            return int(json.load(fh).get("attempt", -1)) >= attempt
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def supervise(command: Sequence[str]) -> int:
    if not command:
        print("mpi_infer supervise: give the command after --, e.g. supervise -- mpirun ...", file=sys.stderr)
        return EXIT_USAGE
    out = run_out_dir(command)
    attempt = next_attempt(out) if out else 0
    proc = subprocess.Popen(list(command))
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = proc.wait()
    if received and not (code == 0 and out and finished(out, attempt)):
        # Open MPI's mpirun exits 1 once it is signalled itself, whatever its ranks returned: the launcher's
        # code comes from here, so that restartPolicy: ExitCode retries a preempted or evicted job.
        print(f"mpi_infer supervise: interrupted by {signal.Signals(received[0]).name} ({command[0]} exited "
              f"{code}): exit {EXIT_INTERRUPTED} (retryable); finished images are in "
              f"{os.path.join(out or '--out', 'ledger')}, a retry with --resume continues", file=sys.stderr,
              flush=True)
        return EXIT_INTERRUPTED
    if code == 0 and out and not finished(out, attempt):
        print(f"mpi_infer supervise: {command[0]} exited 0, but {os.path.join(out, 'summary.json')} is not from "
              f"this attempt ({attempt}): the run did not finish (Open MPI's runtime ends a job with exit 0 when it "
              f"loses a host's daemon). Exit {EXIT_RETRYABLE} (retryable): finished images are in "
              f"{os.path.join(out, 'ledger')}; a retry with --resume continues", file=sys.stderr, flush=True)
        return EXIT_RETRYABLE
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention
