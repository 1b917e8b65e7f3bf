"""The run's point-to-point traffic (with mpi/job.py, the only MPI code): progress to rank 0, the dynamic
schedule's chunks, heartbeats, and --fault-tolerant's recovery of a lost rank's images."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from ..config import RunConfig
from ..data.worklist import WorkList
from ..errors import PeerLostError
from ..outputs.metrics import MetricsFile
from ..outputs.progress import ProgressDisplay
from .recovery import Recovery
from .watchdog import ADVICE as STALL_ADVICE
from .watchdog import StallError

TAG_PROGRESS, TAG_REQUEST, TAG_WORK, TAG_HEARTBEAT, TAG_GO = 11, 12, 13, 14, 15
PROGRESS_EVERY_S = 0.5
LOST_ADVICE = ("finished images are in the ledger; the job ends with exit 200 (retryable): rerun with --resume")
HEARTBEAT_EVERY_S = 1.0


@dataclass(frozen=True)
class ChannelOptions:
    """What the channel needs of the run's options, and nothing else."""

    out: str  # the output folder: the ledgers a lost rank leaves
    outputs_per_image: int  # records per image (one per model, and the ensemble's)
    stall_timeout: float  # a silent rank ends the job after this long (s); 0: never
    progress_interval: float  # seconds between progress lines on rank 0
    quiet: bool
    fault_tolerant: bool
    metrics_file: str | None = None  # --metrics-file: rank 0's Prometheus text file
    push: tuple[str, str, dict[str, str]] | None = None  # --pushgateway: (URL, job, grouping key)

    @classmethod
    def of(cls, cfg: RunConfig) -> ChannelOptions:
        push = (cfg.pushgateway, cfg.pushgateway_job, {"run": os.path.basename(os.path.abspath(cfg.out))}) \
            if cfg.pushgateway else None
        return cls(cfg.out, len(cfg.outputs), cfg.stall_timeout, cfg.progress_interval, cfg.quiet,
                   cfg.fault_tolerant, cfg.metrics_file, push)


class Channel:
    """The run's point-to-point traffic: progress counts to rank 0 and, for ``--schedule dynamic``,
    chunk requests to rank 0. Everything is non-blocking for the ranks that compute.

    With ``--fault-tolerant`` (under ``mpirun --with-ft ulfm``) rank 0 also keeps what it handed to each rank;
    when a rank dies, ULFM raises ERR_PROC_FAILED on rank 0's next probe, rank 0 acknowledges it, reads the lost
    rank's ledger (on the shared output volume) and, once the survivors are idle, hands them the images it had
    not finished. A worker that loses rank 0 ends with the retryable exit code."""

    def __init__(self, comm: Any, total: int, cfg: ChannelOptions, hosts: list[str] | None = None,
                 attempt: int = 0):
        self.comm = comm
        self.rank, self.size = comm.rank, comm.size
        self.timeout = cfg.stall_timeout
        self.hosts = hosts or ["?"] * self.size
        now = time.monotonic()
        self.last_heard = {r: now for r in range(self.size)}  # rank 0: the last message from each rank
        self.last_beat = 0.0
        self.done = self.failed = 0
        self.sends: list[tuple[int, Any]] = []  # (destination, request)
        self.last_sent = 0.0
        self.rank_counts = {r: (0, 0) for r in range(self.size)}
        self.finished: set[int] = set()
        self.display = ProgressDisplay(total, interval=cfg.progress_interval,
                                       enabled=self.rank == 0 and not cfg.quiet)
        self.metrics = (MetricsFile(cfg.metrics_file, total, self.size, push=cfg.push)
                        if self.rank == 0 and (cfg.metrics_file or cfg.push) else None)
        self.cost_s = 0.0  # time this rank spent on progress and scheduling messages
        self.messages = 0
        # dynamic schedule state (rank 0 hands out chunks; others ask for them)
        self.queue: WorkList | None = None
        self.cursor = 0
        self.chunk_size = 1
        self.stopped: set[int] = set()
        # fault tolerance (rank 0): what each rank was given, who was lost, what the survivors re-run
        self.outputs_per_image = cfg.outputs_per_image
        self.fault_tolerant = cfg.fault_tolerant
        self.recovery = Recovery(cfg.out, attempt, self.hosts, self.outputs_per_image)
        self.shrink = False  # survivors shrink the communicator before the gather

    # -- sending ----------------------------------------------------------------------------
    def _isend(self, obj: Any, dest: int, tag: int) -> None:
        from mpi4py import MPI

        if dest not in self.lost:
            try:
                self.sends.append((dest, self.comm.isend(obj, dest=dest, tag=tag)))
            except MPI.Exception as exc:
                self._on_failure(exc)

    def _prune(self) -> None:
        """Drop completed sends; cancel those to a lost rank (a pending one would hold up MPI_Finalize)."""
        self._settle(wait=False)

    def _wait_sends(self) -> None:
        self._settle(wait=True)

    def _settle(self, wait: bool) -> None:
        from mpi4py import MPI

        keep = []
        for dest, req in self.sends:
            try:
                if dest in self.lost:
                    req.Cancel()
                    req.Free()
                elif wait:
                    req.Wait()
                elif not req.Test():
                    keep.append((dest, req))
            except MPI.Exception as exc:
                self._on_failure(exc)
        self.sends = keep

    # -- a lost rank ----------------------------------------------------------------------------
    def _on_failure(self, exc: Exception) -> None:
        """ERR_PROC_FAILED (or a revoked communicator): note the lost rank (rank 0 with --fault-tolerant), or end
        this rank with the retryable code; any other MPI error is re-raised."""
        from mpi4py import MPI

        if not (isinstance(exc, MPI.Exception) and exc.Get_error_class() in
                (MPI.ERR_PROC_FAILED, MPI.ERR_PROC_FAILED_PENDING, MPI.ERR_REVOKED)):
            raise exc
        if self.rank != 0:
            raise PeerLostError(f"rank 0 (host {self.hosts[0]}) was lost mid-run; {LOST_ADVICE}") from None
        self.comm.Ack_failed()
        failed = self.comm.Get_failed()
        ranks = MPI.Group.Translate_ranks(failed, list(range(failed.Get_size())), self.comm.Get_group())
        failed.Free()
        new = [r for r in ranks if r not in self.lost and r is not None and r >= 0]
        if not self.fault_tolerant:
            names = ", ".join(f"{r} (host {self.hosts[r]})" for r in new) or "?"
            raise PeerLostError(f"rank {names} was lost mid-run; {LOST_ADVICE} (or launch with mpirun --with-ft "
                                f"ulfm and --fault-tolerant, so the survivors finish its images)") from None
        for r in new:
            self._recover(r)

    def _recover(self, r: int) -> None:
        """Rank 0: what rank ``r`` finished is in its ledger; the rest waits for the survivors."""
        info = self.recovery.lose(r)
        self.rank_counts[r] = (info["images_done"], info["images_failed"])
        self.finished.discard(r)
        print(f"[rank 0] mpi_infer: warning: rank {r} (host {self.hosts[r]}) was lost after {info['images_done']} "
              f"image(s); the survivors will run its {info['images_rerun']} unfinished image(s) (--fault-tolerant)",
              file=sys.stderr, flush=True)

    @property
    def lost(self) -> dict[int, dict[str, Any]]:
        """Rank -> what is known of its loss (rank 0, --fault-tolerant)."""
        return self.recovery.lost

    def live_workers(self) -> set[int]:
        return set(range(1, self.size)) - set(self.lost)

    # -- progress ----------------------------------------------------------------------------
    def on_batch(self, records: list[dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        self._report(records)
        self.cost_s += time.perf_counter() - t0

    def _report(self, records: list[dict[str, Any]]) -> None:
        per = self.outputs_per_image  # several models: one record per image per model; progress counts images
        self.done += len(records) // per
        self.failed += sum(r["status"] == "failed" for r in records) // per
        if self.rank == 0:
            self.rank_counts[0] = (self.done, self.failed)
            self.poll()
        else:
            self._drain_heartbeats()
            if time.perf_counter() - self.last_sent >= PROGRESS_EVERY_S:
                self._send_progress(final=False)

    def _send_progress(self, final: bool) -> None:
        self.last_sent = time.perf_counter()
        self.messages += 1
        self._isend((self.done, self.failed, final), 0, TAG_PROGRESS)
        if not final:
            self._prune()

    def poll(self) -> None:
        """Rank 0: take in whatever progress and chunk requests have arrived; answer requests."""
        from mpi4py import MPI

        status = MPI.Status()
        try:
            while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status):
                src, tag = status.Get_source(), status.Get_tag()
                msg = self.comm.recv(source=src, tag=tag)
                if src in self.lost:
                    continue  # sent before it died: its ledger is the truth now
                self.last_heard[src] = time.monotonic()
                if tag == TAG_PROGRESS:
                    done, failed, final = msg
                    self.rank_counts[src] = (done, failed)
                    if final:
                        self.finished.add(src)
                elif tag == TAG_REQUEST:
                    chunk = self._next_chunk()
                    if chunk is None:
                        self.stopped.add(src)
                    else:
                        self.recovery.assign(src, chunk)
                    self._isend(chunk, src, TAG_WORK)
        except MPI.Exception as exc:
            self._on_failure(exc)
        done = sum(d for d, _ in self.rank_counts.values())
        failed = sum(f for _, f in self.rank_counts.values())
        self.display.update(done, failed)
        if self.metrics is not None:
            now = time.monotonic()
            quiet_for = self.timeout / 2 if self.timeout > 0 else float("inf")
            self.metrics.update(self.rank_counts, lost=len(self.lost),
                                stalled=sum(1 for r in self.live_workers()
                                            if r not in self.finished and now - self.last_heard[r] > quiet_for))
        self._heartbeat()
        self._check_silent()

    # -- liveness: rank 0 names a silent rank; the others name a silent rank 0 -----------------------
    def _heartbeat(self) -> None:
        now = time.monotonic()
        if self.size > 1 and now - self.last_beat >= HEARTBEAT_EVERY_S:
            self.last_beat = now
            for r in self.live_workers():
                self._isend(None, r, TAG_HEARTBEAT)
            self._prune()

    def _check_silent(self) -> None:
        if self.timeout <= 0:
            return
        now = time.monotonic()
        for r in sorted(self.live_workers()):
            if r not in self.finished and now - self.last_heard[r] > self.timeout:
                done, _ = self.rank_counts[r]
                raise StallError(f"rank {r} (host {self.hosts[r]}) sent nothing for {now - self.last_heard[r]:.0f} s "
                                 f"(--stall-timeout {self.timeout:g}; it had finished {done} image(s)): it is "
                                 f"stopped or blocked; {STALL_ADVICE}")

    def _drain_heartbeats(self) -> tuple[bool, Any]:
        """A worker: take rank 0's heartbeats; (True, rank 0's word) once rank 0 said what comes next (nothing
        more: all ranks are done; or, with --fault-tolerant, a lost rank's images to run)."""
        from mpi4py import MPI

        try:
            while self.comm.Iprobe(source=0, tag=TAG_HEARTBEAT):
                self.comm.recv(source=0, tag=TAG_HEARTBEAT)
                self.last_heard[0] = time.monotonic()
            if self.comm.Iprobe(source=0, tag=TAG_GO):
                return True, self.comm.recv(source=0, tag=TAG_GO)
        except MPI.Exception as exc:
            self._on_failure(exc)
        return False, None

    def finish(self, dynamic: bool) -> WorkList | None:
        """Everyone, after its work: report the final count and wait. Rank 0 waits for every live rank (and stops
        idle askers), naming a rank that falls silent; the others wait for rank 0's word, naming rank 0 if its
        heartbeats stop. Returns more work for this rank (a lost rank's images), else None: all done."""
        if self.rank != 0:
            self._send_progress(final=True)
            self.last_heard[0] = time.monotonic()
            while True:
                said, word = self._drain_heartbeats()
                if said:
                    break
                silent = time.monotonic() - self.last_heard[0]
                if self.timeout > 0 and silent > self.timeout:
                    raise StallError(f"rank 0 (host {self.hosts[0]}) sent no heartbeat for {silent:.0f} s "
                                     f"(--stall-timeout {self.timeout:g}): it is stopped or blocked; {STALL_ADVICE}")
                time.sleep(0.01)
            if isinstance(word, dict):
                self.shrink = bool(word.get("shrink"))
                if word.get("work") is not None:
                    return word["work"]
            self._wait_sends()
            return None
        while not (self.finished >= self.live_workers()
                   and (not dynamic or self.stopped | set(self.lost) >= self.live_workers())):
            self.poll()
            time.sleep(0.005)
        if self.recovery.queue:
            return self._hand_out()
        self.display.close()
        self.shrink = bool(self.lost)
        word = {"work": None, "shrink": self.shrink} if self.fault_tolerant else None
        for r in self.live_workers():
            self._isend(word, r, TAG_GO)
        self._wait_sends()
        return None

    def _hand_out(self) -> WorkList:
        """Rank 0: the lost ranks' unfinished images to the survivors (itself included); returns its own share."""
        survivors = [0, *sorted(self.live_workers())]
        parts = self.recovery.hand_out(survivors)
        for r, part in zip(survivors[1:], parts[1:]):
            self.finished.discard(r)
            self._isend({"work": part, "shrink": False}, r, TAG_GO)
        return parts[0]

    # -- dynamic schedule ----------------------------------------------------------------------
    def _next_chunk(self) -> WorkList | None:
        """The next fixed-size chunk (small chunks keep the tail short: a slow rank holds at most its
        current chunk and the one it asked for ahead), stretched to the end of a volume it would cut."""
        if self.queue is None or self.cursor >= len(self.queue):
            return None
        chunk = self.queue.slice(self.cursor, self.queue.unit_end(self.cursor + self.chunk_size))
        self.cursor += len(chunk)
        return chunk

    def master_items(self, work: WorkList, chunk_size: int) -> Any:
        """Rank 0's own work under the dynamic schedule: it takes chunks from the same queue it serves."""
        self.queue, self.cursor, self.chunk_size = work, 0, max(1, chunk_size)
        while True:
            self.poll()
            chunk = self._next_chunk()
            if chunk is None:
                return
            for item in chunk:
                yield item
                self.poll()  # answer waiting workers promptly, between our own items

    def worker_items(self) -> Any:
        """A worker's work: ask rank 0 for chunks, one request always in flight to hide the latency."""
        from mpi4py import MPI

        self._isend(None, 0, TAG_REQUEST)
        while True:
            try:
                chunk = self.comm.recv(source=0, tag=TAG_WORK)
            except MPI.Exception as exc:
                self._on_failure(exc)
                return
            if chunk is None:
                return
            self._isend(None, 0, TAG_REQUEST)
            yield from chunk
