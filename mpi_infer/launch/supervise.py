"""The launcher's guard around ``mpirun``: an exit 0 that finished nothing becomes the retryable exit 200.

Open MPI 5's runtime (PRRTE 3) cannot survive a lost *host*: when the daemon of one node dies (the node is gone,
its pod is killed), prterun prints "PRTE has lost communication with a remote daemon ... will terminate the job",
kills every rank, and exits **0** (measured in scripts/rehearsal.py --lose-host, with and without ULFM; PRRTE's
errmgr aborts the daemon job on any daemon COMM_FAILED). On Kubernetes that launcher exit marks the MPIJob
Succeeded with no results. ``mpi_infer supervise -- mpirun ...`` runs the command, and when it exits 0 but
``--out`` holds no summary of the attempt it started, says so and exits 200, so the launcher Job retries and
``--resume`` continues. An exit of 128 or more that is none of ours (mpirun's 255 when its runtime fails, a
killed process) becomes 200 as well, saying so; our own codes pass through; SIGTERM and SIGINT are forwarded to
mpirun (and the launcher then exits 202).

A permanent failure stays permanent. No MPI Operator release accepts ``restartPolicy: ExitCode`` (validation.go
allows Never and OnFailure; kubeflow/mpi-operator#537), so the launcher Job retries every failure up to its
``backoffLimit``. When the run ends with one of our permanent codes (bad input, a bad model, some images failed),
supervise records it in ``OUT/.final-exit.json`` under the launcher Job's uid ($MPI_INFER_LAUNCH_ID, from the
pod's ``batch.kubernetes.io/controller-uid`` label); a retry of the same Job finds it and exits with that code at
once, saying why, without running anything. A new submission (a new Job, a new uid) runs afresh.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from ..atomic import write_text
from ..errors import EXIT_CODES, EXIT_INTERRUPTED, EXIT_RETRYABLE, EXIT_USAGE
from ..outputs.folder import FINAL_FILE
from ..outputs.ledger import next_attempt
from .k8s import LAUNCH_ID_ENV


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


def hostfile_hosts(path: str) -> list[str]:
    """The host names of an Open MPI hostfile (``name slots=N``; comments and blank lines skipped)."""
    with open(path, encoding="utf-8") as fh:
        return [ln.split()[0] for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]


def wait_for_workers(hostfile: str, port: int, timeout_s: float, poll_s: float = 1.0) -> int:
    """Wait until every worker's sshd accepts a connection, at most ``timeout_s`` (under a gang scheduler the
    launcher starts with its workers, not after them: MPI Operator's WaitForWorkersReady deadlocks there).
    0 when all answered; past the deadline, the retryable exit naming the workers that never did, so a retry
    (or Kueue's own requeue) comes before Kueue's waitForPodsReady timeout."""
    try:
        hosts = hostfile_hosts(hostfile)
    except OSError as exc:
        print(f"mpi_infer supervise: cannot read the hostfile {hostfile}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_RETRYABLE
    waiting = set(hosts)
    end = time.monotonic() + timeout_s
    while waiting:
        for host in sorted(waiting):
            try:
                with socket.create_connection((host, port), timeout=min(2.0, poll_s * 2)):
                    waiting.discard(host)
            except OSError:
                pass
        if not waiting or time.monotonic() >= end:
            break
        time.sleep(poll_s)
    if waiting:
        print(f"mpi_infer supervise: {len(waiting)} of {len(hosts)} worker(s) never answered on port {port} within "
              f"{timeout_s:g} s: {', '.join(sorted(waiting)[:10])}. Exit {EXIT_RETRYABLE} (retryable)",
              file=sys.stderr, flush=True)
        return EXIT_RETRYABLE
    return 0


def finished(out: str, attempt: int) -> bool:
    """summary.json exists and was written by attempt ``attempt`` or a later one."""
    try:
        with open(os.path.join(out, "summary.json"), encoding="utf-8") as fh:
            return int(json.load(fh).get("attempt", -1)) >= attempt
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def permanent(code: int) -> bool:
    """One of our exits a retry cannot change (docs/usage.md's table: 2, 3, 10-14, 70). Any other code (mpirun's
    own 1 when it cannot start its daemons, a signal) may be transient: retried."""
    return code in EXIT_CODES and 0 < code < 128


def earlier_final(out: str, launch_id: str) -> dict | None:
    """The permanent exit an earlier attempt of this launch recorded, if any."""
    try:
        with open(os.path.join(out, FINAL_FILE), encoding="utf-8") as fh:
            final = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(final, dict) or final.get("launch") != launch_id or not isinstance(final.get("code"), int) \
            or not permanent(final["code"]):
        return None
    return final


def record_final(out: str, launch_id: str, code: int) -> None:
    """Remember a permanent exit for this launch's retries (best effort: without it a retry just runs again)."""
    try:
        write_text(os.path.join(out, FINAL_FILE), json.dumps({"launch": launch_id, "code": code,
                                                              "meaning": EXIT_CODES.get(code, "")}))
    except OSError as exc:
        print(f"mpi_infer supervise: cannot record the permanent exit {code} in {out}: {exc}", file=sys.stderr)


def supervise(command: Sequence[str]) -> int:
    if not command:
        print("mpi_infer supervise: give the command after --, e.g. supervise -- mpirun ...", file=sys.stderr)
        return EXIT_USAGE
    out = run_out_dir(command)
    launch_id = os.environ.get(LAUNCH_ID_ENV, "")
    final = earlier_final(out, launch_id) if out and launch_id else None
    if final is not None:
        print(f"mpi_infer supervise: an earlier attempt of this job already ended with exit "
              f"{final['code']} ({final.get('meaning') or 'permanent'}), which a retry cannot change: exit "
              f"{final['code']} again without running. Fix the cause and submit a new job (its log has the "
              f"reason)", file=sys.stderr, flush=True)
        return int(final["code"])
    code = _run(command, out)
    if out and launch_id and permanent(code):
        record_final(out, launch_id, code)
    return code


def _run(command: Sequence[str], out: str | None) -> int:
    """The command's exit code, as the launcher should report it (the docstring's rules)."""
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
        # code comes from here, so that a preempted or evicted job is retried, never recorded as permanent.
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
    code = code if code >= 0 else 128 - code  # killed by a signal: the shell's convention
    if code >= 128 and code not in EXIT_CODES:
        print(f"mpi_infer supervise: {command[0]} exited {code}, which is none of mpi_infer's codes (Open MPI's "
              f"runtime failed, e.g. 255 when a host's daemon is lost, or a process was killed): exit {EXIT_RETRYABLE} "
              f"(retryable); finished images are in {os.path.join(out or '--out', 'ledger')}, a retry with --resume "
              f"continues", file=sys.stderr, flush=True)
        return EXIT_RETRYABLE
    return code
