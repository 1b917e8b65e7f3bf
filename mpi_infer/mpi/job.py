"""The only MPI code: plan on rank 0, scatter descriptors, run every shard, gather records, report.

Failure rules: an error found before inference (bad YAML, model, options, output folder, topology)
is broadcast, reported once by rank 0, and every rank returns the same exit code; no rank is left
waiting in a collective. An exception on any rank during inference calls MPI_Abort at once, with the
rank and traceback on stderr; finished records are already in that rank's ledger on disk.
"""

from __future__ import annotations

import os
import resource
import sys
import time
import traceback
from typing import Any

from ..config import RunConfig
from ..data.dataset import WorkList
from ..engines import Stack, choose_stack, open_engine, visible_gpus
from ..errors import EXIT_OK, LaunchError, MpiInferError, PeerLostError, clip, exit_code_for
from ..outputs.results import Ledger, problem_lines, summary_table
from ..stages.prepare import (
    Topology,
    check_fault_tolerance,
    check_launch,
    check_topology,
    finish_run,
    prepare_run,
    remove_outputs,
    topology_lines,
)
from ..stages.runner import Fault, RankTimings, run_items
from ..tasks import ScoreOptions, task_for
from ..tasks.output import OutputSpec
from .gather import DescriptorIndex
from .progress import ProgressDisplay, configure, log
from .recovery import Recovery
from .watchdog import ADVICE as STALL_ADVICE
from .watchdog import StallError, Watchdog

TAG_PROGRESS, TAG_REQUEST, TAG_WORK, TAG_HEARTBEAT, TAG_GO = 11, 12, 13, 14, 15
PROGRESS_EVERY_S = 0.5
LOST_ADVICE = ("finished images are in the ledger; the job ends with exit 200 (retryable): rerun with --resume")
HEARTBEAT_EVERY_S = 1.0


class Channel:
    """The run's point-to-point traffic: progress counts to rank 0 and, for ``--schedule dynamic``,
    chunk requests to rank 0. Everything is non-blocking for the ranks that compute.

    With ``--fault-tolerant`` (under ``mpirun --with-ft ulfm``) rank 0 also keeps what it handed to each rank;
    when a rank dies, ULFM raises ERR_PROC_FAILED on rank 0's next probe, rank 0 acknowledges it, reads the lost
    rank's ledger (on the shared output volume) and, once the survivors are idle, hands them the images it had
    not finished. A worker that loses rank 0 ends with the retryable exit code."""

    def __init__(self, comm: Any, total: int, cfg: RunConfig, hosts: list[str] | None = None,
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
        self.cost_s = 0.0  # time this rank spent on progress and scheduling messages
        self.messages = 0
        # dynamic schedule state (rank 0 hands out chunks; others ask for them)
        self.queue: WorkList | None = None
        self.cursor = 0
        self.chunk_size = 1
        self.stopped: set[int] = set()
        # fault tolerance (rank 0): what each rank was given, who was lost, what the survivors re-run
        self.outputs_per_image = len(cfg.outputs)
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
        current chunk and the one it asked for ahead)."""
        if self.queue is None or self.cursor >= len(self.queue):
            return None
        chunk = self.queue.slice(self.cursor, min(self.cursor + self.chunk_size, len(self.queue)))
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


def in_flight(work: WorkList | None, done: int, batch_size: int) -> str:
    """The images a stalled rank was working on: the next batch of its shard (static schedule)."""
    if work is None:
        return "the current chunk of the dynamic schedule"
    items = list(work.slice(done, min(len(work), done + batch_size)))
    return ", ".join(f"#{it.index} {clip(it.locations[0], 100)}" for it in items) or "none (all done)"


def open_loader(kind: str, profile: Any, classes: list[str] | None = None) -> Any:
    """ECVL's DLDataset loader, or None for our OpenCV loader (runner.py's default)."""
    if kind == "ecvl":
        from ..loaders.ecvl import EcvlLoader

        return EcvlLoader(profile, classes)
    return None


def _gpu_for(local_rank: int) -> int | None:
    """Local rank modulo the GPUs this host shows (None without GPUs)."""
    count = visible_gpus()
    return local_rank % count if count else None


def rank_threads(cfg: RunConfig, local_size: int) -> int:
    """Intra-op threads: what this rank is bound to, else the host's cores divided among its ranks."""
    if cfg.threads > 0:
        return cfg.threads
    cores = os.cpu_count() or 1
    try:
        bound = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        bound = cores
    if bound < cores:
        return max(1, bound)
    return max(1, cores // max(1, local_size))


def _fail_together(comm: Any, error: tuple[int, str, int] | None) -> int | None:
    """All ranks learn whether any rank failed; rank 0 reports the first failure once."""
    errors = [e for e in comm.allgather(error) if e is not None]
    if not errors:
        return None
    if comm.rank == 0:
        src, message, code = errors[0]
        print(f"mpi_infer: error (rank {src}): {message}", file=sys.stderr, flush=True)
        if len(errors) > 1:
            print(f"mpi_infer: {len(errors) - 1} other rank(s) failed too", file=sys.stderr, flush=True)
    return errors[0][2]


# Open MPI's libfabric (ofi) BTL probes every provider at MPI_Init: about 1 s here, on every run, for a transport
# Open MPI 5 uses only for one-sided operations, which mpi_infer never makes (point-to-point and collectives go
# through ob1's sm/tcp BTLs, or the ucx/cm PMLs on fast fabrics, which this leaves alone). A user's own
# OMPI_MCA_btl wins.
MPI_DEFAULTS = {"OMPI_MCA_btl": "^ofi"}


def run_job(cfg: RunConfig) -> int:
    for key, value in MPI_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    try:
        check_launch(comm.size, comm.rank, os.environ)  # before anything is read or written
    except LaunchError as exc:
        print(f"mpi_infer: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    try:
        return _run(cfg, comm, MPI)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - any escape must take the whole job down, not hang it
        code = exit_code_for(exc)
        if isinstance(exc, StallError | PeerLostError):
            sys.stderr.write(f"[rank {comm.rank}] mpi_infer: {exc}\n")
        elif isinstance(exc, OSError | MemoryError):  # the volume or the machine, not a bug: no traceback
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            what = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            sys.stderr.write(f"[rank {comm.rank}] mpi_infer: error: {what}{where}; finished images are in "
                             f"{os.path.join(cfg.out, 'ledger')}; fix this, then rerun with --resume\n")
        else:
            sys.stderr.write(f"[rank {comm.rank}] mpi_infer: fatal {type(exc).__name__}: {clip(str(exc), 2000)}\n"
                             + "".join(f"[rank {comm.rank}] {line}\n" for line in
                                       "".join(traceback.format_exception(exc)).rstrip().splitlines()))
        sys.stderr.flush()
        comm.Abort(code)
        return code  # not reached


def _run(cfg: RunConfig, comm: Any, MPI: Any) -> int:
    t_start = time.perf_counter()
    configure(cfg.quiet, cfg.verbose)
    rank, size = comm.rank, comm.size
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    me = Topology(rank, MPI.Get_processor_name(), node.rank, node.size, None)
    me.gpu = _gpu_for(me.local_rank) if cfg.gpu else None
    topology = [Topology(**t) for t in comm.allgather(me.__dict__)]

    # 1. Rank 0 loads, validates and plans; a failure there ends every rank with the same code.
    header: dict[str, Any] = {}
    payloads: list[Any] = [None] * size
    if rank == 0:
        try:
            check_topology(topology, cfg.expect_hosts)
            if cfg.fault_tolerant:
                check_fault_tolerance(MPI.Get_library_version(), hasattr(comm, "Shrink"), os.environ)
            stack = choose_stack(cfg.loader, cfg.engine, cfg.backend, cfg.model, cfg.decode, cfg.score_at)
            prepared, payloads = prepare_run(cfg, size, stack.engine)
            header = {"prepared": prepared, "stack": stack}
        except Exception as exc:  # noqa: BLE001 - reported below, once
            header = {"error": (0, str(exc), exit_code_for(exc))}
    header = comm.bcast(header, root=0)
    if "error" in header:
        return _fail_together(comm, header["error"] if rank == 0 else None) or 1
    prepared = header["prepared"]
    cfg.profile = prepared.profile  # the task's default recipe where --profile was not given
    if rank == 0 and not cfg.quiet:
        for w in prepared.warnings:
            log(0, f"warning: {w}")
        for line in topology_lines(topology):
            log(0, line)
        stack = header["stack"]
        if prepared.task == "classification":
            log(0, f"task: classification, {len(prepared.classes)} classes ({', '.join(prepared.classes)})"
                   + ("; --save-masks does not apply" if cfg.save_masks and not cfg.report else ""))
        log(0, f"loader {stack.loader} ({stack.loader_why}), engine {stack.engine} ({stack.engine_why}); "
               f"profile {cfg.profile.name}; "
               f"splits {', '.join(prepared.splits)}; {prepared.selected} image(s) selected"
               + (f", {len(prepared.previous)} already done" if prepared.previous else ""))

    dynamic = cfg.schedule == "dynamic" and size > 1
    t_scatter = time.perf_counter()
    if dynamic:
        work = payloads[0] if rank == 0 else None
    else:
        work = comm.scatter(payloads, root=0)
    planned = DescriptorIndex(payloads) if rank == 0 and not cfg.dry_run else None  # to rebuild records
    shards = payloads if rank == 0 and cfg.fault_tolerant and not dynamic else None  # to re-run a lost rank's
    del payloads
    received = comm.gather(len(work) if work is not None else 0, root=0)
    scatter_s = time.perf_counter() - t_scatter

    if cfg.dry_run:  # the plan, as every rank received it; no model is opened, nothing is written
        if rank == 0:
            print_plan(prepared, received, scatter_s, dynamic)
        return EXIT_OK

    # 2. Every rank opens the model and its ledger; any failure stops all before inference.
    error = None
    engine = loader = ledger = None
    stack = header["stack"]
    threads = rank_threads(cfg, me.local_size)
    try:
        spec = OutputSpec(cfg.activation, cfg.cls)
        head = task_for(prepared.task).head(spec, cfg.profile, prepared.classes)
        def open_model(path: str, arch: str | None) -> Any:  # several models: one shared ONNX Runtime arena
            return open_engine(stack, path, cfg.profile, threads=threads, gpu=cfg.gpu, device_id=me.gpu or 0,
                               arch=arch, eddl_mem=cfg.eddl_mem, head=head, output=cfg.output,
                               arena=not prepared.models)

        engine = open_model(prepared.run_model, prepared.arch)
        if engine.name != stack.engine:  # auto fell back to EDDL's importer
            stack = Stack(stack.loader, engine.name, stack.loader_why, "auto: ONNX Runtime cannot load the model")
        predictors = None
        if prepared.models:  # several models: each opened once per rank, all on every batch
            engines = [engine]
            for info in prepared.models[1:]:
                try:
                    engines.append(open_model(info["run_model"], info["arch"]))
                except MpiInferError as exc:
                    raise type(exc)(f"model {info['name']} ({info['path']}): {exc}") from None
            predictors = [(info["name"], e.predict) for info, e in zip(prepared.models, engines)]
        loader = open_loader(stack.loader, cfg.profile, prepared.classes or None)
        ledger = Ledger(cfg.out, prepared.attempt, rank)
        if rank == 0:
            for w in getattr(head, "warnings", []):
                log(0, f"warning: {w}")
                prepared.warnings.append(w)
    except Exception as exc:  # noqa: BLE001
        error = (rank, str(exc), exit_code_for(exc))
    failed = _fail_together(comm, error)
    if failed is not None:
        if rank == 0 and prepared.fresh_output:
            # nothing ran: leave --out as it was (absent or empty), so a fixed rerun just works
            remove_outputs(cfg.out, remove_folder=prepared.created_output)
        return failed

    # 3. Inference. Exceptions here abort the job (run_job's handler): nothing may wait forever.
    timings = RankTimings()
    channel = Channel(comm, prepared.selected - len(prepared.previous), cfg, [t.host for t in topology],
                      attempt=prepared.attempt)
    watchdog = Watchdog(rank, cfg.stall_timeout, abort=comm.Abort,
                        in_flight=lambda: in_flight(work if not dynamic else None, timings.images, cfg.batch_size))
    loader_threads = cfg.loader_threads or max(2, min(4, threads))
    fault = Fault.from_env(rank)
    comm.Barrier()
    t_run = time.perf_counter()
    if dynamic:
        chunk = cfg.chunk_size or cfg.batch_size
        source = channel.master_items(work, chunk) if rank == 0 else channel.worker_items()
    else:
        source = work
        if shards is not None:
            for r, shard in enumerate(shards):
                channel.recovery.assign(r, shard)
    task = task_for(prepared.task)
    table = task.table(rank, prepared.classes).configure(cfg.outputs if cfg.multi else None, bool(cfg.tta))

    def on_batch(records: list[dict[str, Any]]) -> None:
        watchdog.beat()
        table.extend(records)
        channel.on_batch(records)

    options = ScoreOptions(masks_dir=cfg.out if cfg.save_masks else None, score_at=cfg.score_at,
                           boundary=(cfg.nsd_tolerance, cfg.empty_boundary) if cfg.boundary else None)
    while source is not None:  # the work, then (--fault-tolerant) any share of a lost rank's images
        watchdog.arm()
        run_items(source, engine.predict, cfg.profile, rank=rank, batch_size=cfg.batch_size,
                  threads=loader_threads, ledger=ledger,
                  on_batch=on_batch, fault=fault, timings=timings,
                  batch_source=loader.batches if loader is not None else None, keep=False,
                  task=task, decode_mode=cfg.decode, options=options,
                  predictors=predictors, ensemble=cfg.ensemble, tta=cfg.tta)
        watchdog.arm(False)  # waiting for the others from here: the channel watches them
        source = channel.finish(dynamic)
    ledger.close()
    timings.total_s = time.perf_counter() - t_run
    watchdog.stop()
    if channel.shrink:  # a rank was lost: the survivors go on in a communicator without it
        comm = comm.Shrink()

    # 4. Gather the compact record tables to rank 0, which rebuilds full records and writes the report.
    stats = {"rank": rank, "host": me.host, "images": timings.images, "threads": threads,
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
             "wall_s": round(timings.total_s, 4), "predict_s": round(timings.predict_s, 4),
             "wait_s": round(timings.wait_s, 4), "score_s": round(timings.score_s, 4),
             "decode_s": round(timings.decode_s, 4), "preprocess_s": round(timings.preprocess_s, 4),
             "loader_threads": loader_threads,
             "progress_s": round(channel.cost_s, 5), "progress_messages": channel.messages}
    log(rank, f"done: {timings.images} image(s) in {timings.total_s:.2f} s "
              f"(predict {timings.predict_s:.2f} s, waiting for images {timings.wait_s:.2f} s)", verbose=True)
    gathered = comm.gather((table, stats), root=0)
    code = EXIT_OK
    if rank == 0:
        all_records = [r for t, _ in gathered for r in t.to_records(planned)]
        if channel.lost:  # what the lost ranks finished, from their ledgers
            all_records += channel.recovery.lost_records
        rank_stats = [s for _, s in gathered]
        summary, code = finish_run(cfg, prepared, all_records, topology, rank_stats,
                                   {**stack.describe(), **engine.describe()},
                                   time.perf_counter() - t_start,
                                   {"fault_tolerance": channel.recovery.summary(True)} if cfg.fault_tolerant else None)
        if cfg.report:
            from ..outputs.report import write_report

            write_report(cfg.out)
        if not cfg.quiet:
            where = f"results: {os.path.join(cfg.out, 'summary.json')}, {os.path.join(cfg.out, 'per_image.csv')}"
            print(summary_table(summary, [*problem_lines(prepared.previous + all_records), where]), flush=True)
    code = comm.bcast(code, root=0)
    if channel.shrink:
        # Everything is written. After a loss, Open MPI 5's MPI_Finalize can wait forever in a PMIx fence that
        # counts the lost rank (open-mpi/ompi#11404; 2 hangs in 10 here): the survivors leave without it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def print_plan(prepared: Any, received: list[int], scatter_s: float, dynamic: bool) -> None:
    if dynamic:
        print(f"plan: {prepared.selected} image(s), dynamic schedule: rank 0 hands out chunks to "
              f"{len(received)} rank(s); splits {', '.join(prepared.splits)}")
    else:
        print(f"plan: {prepared.selected} image(s) in {len(prepared.shard_sizes)} shard(s) by "
              f"{prepared.sharding}, splits {', '.join(prepared.splits)}")
        for row, got in zip(prepared.shard_sizes, received):
            per = ", ".join(f"{k} {v}" for k, v in row["per_split"].items())
            check = "" if got == row["images"] else f"  (received {got}!)"
            print(f"  rank {row['rank']:>4}: {row['images']:>8} image(s)  ({per}){check}")
    print(f"timing: load+validate+plan {prepared.prepare_s:.3f} s, scatter {scatter_s:.3f} s")
    sys.stdout.flush()
