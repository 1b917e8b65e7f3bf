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
from dataclasses import dataclass
from typing import Any

from ..config import RunConfig
from ..data.worklist import WorkList
from ..errors import EXIT_OK, LaunchError, PeerLostError, clip, exit_code_for
from ..outputs.console import ConsoleRecord, print_plan, problem_lines, summary_table
from ..outputs.folder import remove_outputs
from ..outputs.progress import configure, log
from ..stages.finish import finish_run
from ..stages.interrupt import interrupted_by, restore_handlers, stop_on_signals
from ..stages.opening import Opened, open_run
from ..stages.prepare import Prepared, prepare_run
from ..stages.runner import Fault, RankTimings, run_items
from ..stages.stack import Stack, choose_stack, for_medical, rank_threads
from ..tasks import task_for
from .channel import Channel, ChannelOptions
from .gather import DescriptorIndex, RecordTable, record_table
from .watchdog import StallError, Watchdog, in_flight
from .world import (
    MPI_DEFAULTS,
    Topology,
    check_fault_tolerance,
    check_launch,
    check_pmi_clash,
    check_topology,
    gpu_for,
    mpi_family,
    name_launcher,
    topology_lines,
)


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


def run_job(cfg: RunConfig, comm: Any = None) -> int:
    """Run ``cfg`` on ``comm`` (default: MPI.COMM_WORLD, as dask-mpi's ``initialize(comm=None)``); every rank
    returns the same exit code, or the job is aborted: no rank is left waiting."""
    for key, value in MPI_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if comm is None:  # before MPI_Init: a launch MPI itself would fail on
        try:
            check_pmi_clash(os.environ, mpi_family())
        except LaunchError as exc:
            print(f"mpi_infer: error: {exc}", file=sys.stderr, flush=True)
            return exc.exit_code
    from mpi4py import MPI

    comm = comm if comm is not None else MPI.COMM_WORLD
    try:
        check_launch(comm.size, comm.rank, os.environ)  # before anything is read or written
    except LaunchError as exc:
        print(f"mpi_infer: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    record = ConsoleRecord() if comm.rank == 0 else None  # rank 0's console, for OUT/run.log
    if record is not None:
        record.start()
    previous_handlers = stop_on_signals()
    try:
        code = _run(cfg, comm, MPI, record)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - any escape must take the whole job down, not hang it
        stopped = interrupted_by(exc)  # raised inside a library call, the signal may come wrapped in its error
        exc = stopped or exc
        code = exit_code_for(exc)
        if stopped is not None:
            if comm.rank == 0:  # every rank got the signal (mpirun's, or another rank's abort); one line says it
                sys.stderr.write(f"mpi_infer: {exc}; finished images are in {os.path.join(cfg.out, 'ledger')}: "
                                 f"exit {code} (retryable), rerun with --resume\n")
        elif isinstance(exc, StallError | PeerLostError):
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
        if record is not None:
            record.save(cfg.out, code)
        comm.Abort(code)
        return code  # not reached
    finally:
        restore_handlers(previous_handlers)
        if record is not None:
            record.stop()
    if record is not None:
        record.save(cfg.out, code)
    return code


def _run(cfg: RunConfig, comm: Any, MPI: Any, record: ConsoleRecord | None) -> int:
    t_start = time.perf_counter()
    configure(cfg.quiet, cfg.verbose)
    me, topology = _topology(cfg, comm, MPI)
    # Planning (a stat per file on a slow volume), model loading and the start-up probe are watched too: a hang
    # there ends the job (exit 201, naming the phase) as one in inference does.
    watchdog = Watchdog(comm.rank, cfg.stall_timeout, abort=comm.Abort)
    if comm.rank == 0:
        watchdog.arm(phase="planning (reading the dataset, checking the output folder, hashing the model)")
    header, payloads = _plan(cfg, comm, MPI, topology)  # 1.
    watchdog.arm(False)
    if "error" in header or cfg.dry_run:
        watchdog.stop()
    if "error" in header:
        return _fail_together(comm, header["error"] if comm.rank == 0 else None) or 1
    prepared: Prepared = header["prepared"]
    if record is not None:
        record.attempt = prepared.attempt
    if comm.rank == 0 and not cfg.quiet:
        _announce(cfg, prepared, header["stack"], topology)
    plan = _scatter(cfg, comm, payloads)  # 2.
    if cfg.dry_run:  # the plan, as every rank received it; no model is opened, nothing is written
        if comm.rank == 0:
            print_plan(prepared, plan.received, plan.scatter_s, plan.dynamic)
        return EXIT_OK
    watchdog.arm(phase="opening the model (loading it and the start-up probe)")
    opened = _open(cfg, comm, prepared, header["stack"], me)  # 3.
    watchdog.arm(False)
    if isinstance(opened, int):
        watchdog.stop()
        return opened
    table, stats, channel = _infer(cfg, comm, prepared, plan, opened, me, topology, watchdog)  # 4.
    if channel.shrink:  # a rank was lost: the survivors go on in a communicator without it
        comm = comm.Shrink()
    code = _gather(cfg, comm, prepared, plan, opened, topology, table, stats, channel, t_start)  # 5.
    if channel.shrink:
        # Everything is written. After a loss, Open MPI 5's MPI_Finalize can wait forever in a PMIx fence that
        # counts the lost rank (open-mpi/ompi#11404; 2 hangs in 10 here): the survivors leave without it.
        if record is not None:
            record.save(cfg.out, code)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _topology(cfg: RunConfig, comm: Any, MPI: Any) -> tuple[Topology, list[Topology]]:
    """This rank's place (host, local rank, GPU) and everyone's."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
    me = Topology(comm.rank, MPI.Get_processor_name(), node.rank, node.size, None)
    me.gpu = gpu_for(me.local_rank) if cfg.gpu else None
    return me, [Topology(**t) for t in comm.allgather(me.__dict__)]


def _plan(cfg: RunConfig, comm: Any, MPI: Any, topology: list[Topology]) -> tuple[dict[str, Any], list[Any]]:
    """1. Rank 0 checks the world, chooses the stack, loads, validates and plans; every rank learns the plan or
    the error (which then ends every rank with the same code)."""
    header: dict[str, Any] = {}
    payloads: list[Any] = [None] * comm.size
    if comm.rank == 0:
        try:
            check_topology(topology, cfg.expect_hosts)
            if cfg.fault_tolerant:
                check_fault_tolerance(MPI.Get_library_version(), hasattr(comm, "Shrink"), os.environ)
            stack = choose_stack(cfg.loader, cfg.engine, cfg.backend, cfg.model, cfg.decode, cfg.score_at)
            prepared, payloads = prepare_run(cfg, comm.size, stack.engine)
            stack = for_medical(stack, prepared.medical)
            header = {"prepared": prepared, "stack": stack}
        except Exception as exc:  # noqa: BLE001 - reported by _fail_together, once
            header = {"error": (0, str(exc), exit_code_for(exc))}
    return comm.bcast(header, root=0), payloads


def _announce(cfg: RunConfig, prepared: Prepared, stack: Stack, topology: list[Topology]) -> None:
    for w in prepared.warnings:
        log(0, f"warning: {w}")
    log(0, f"launched by {name_launcher(os.environ)}")
    for line in topology_lines(topology):
        log(0, line)
    if prepared.task == "classification":
        log(0, f"task: classification, {len(prepared.classes)} classes ({', '.join(prepared.classes)})"
               + ("; --save-masks does not apply" if cfg.save_masks and not cfg.report else ""))
    log(0, f"loader {stack.loader} ({stack.loader_why}), engine {stack.engine} ({stack.engine_why}); "
           f"profile {prepared.profile.name}; "
           f"splits {', '.join(prepared.splits)}; {prepared.selected} image(s) selected"
           + (f", {len(prepared.previous)} already done" if prepared.previous else ""))


@dataclass
class Scattered:
    """What the scatter left on this rank: its shard (or rank 0's whole list, dynamic), and on rank 0 what it
    needs later."""

    work: WorkList | None
    dynamic: bool
    received: list[int] | None  # rank 0: each rank's count, as received
    scatter_s: float
    planned: DescriptorIndex | None  # rank 0: to rebuild full records from the gathered tables
    shards: list[WorkList] | None  # rank 0, --fault-tolerant static: to re-run a lost rank's images


def _scatter(cfg: RunConfig, comm: Any, payloads: list[Any]) -> Scattered:
    """2. Shard descriptors, never pixels, go out; the dynamic schedule keeps one list on rank 0."""
    rank = comm.rank
    dynamic = cfg.schedule == "dynamic" and comm.size > 1
    t_scatter = time.perf_counter()
    work = (payloads[0] if rank == 0 else None) if dynamic else comm.scatter(payloads, root=0)
    planned = DescriptorIndex(payloads) if rank == 0 and not cfg.dry_run else None
    shards = payloads if rank == 0 and cfg.fault_tolerant and not dynamic else None
    received = comm.gather(len(work) if work is not None else 0, root=0)
    return Scattered(work, dynamic, received, time.perf_counter() - t_scatter, planned, shards)


def _open(cfg: RunConfig, comm: Any, prepared: Prepared, stack: Stack, me: Topology) -> Opened | int:
    """3. Every rank opens the model(s), the loader and its ledger; any failure stops all before inference
    (returned as the exit code)."""
    rank = comm.rank
    opened = error = None
    threads = rank_threads(cfg.threads, me.local_size)
    try:
        opened = open_run(cfg, prepared, stack, rank=rank, threads=threads, device_id=me.gpu or 0,
                          ledger_dir=cfg.out)
        if rank == 0:
            for w in opened.warnings:
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
    return opened


def _infer(cfg: RunConfig, comm: Any, prepared: Prepared, plan: Scattered, opened: Opened, me: Topology,
           topology: list[Topology], watchdog: Watchdog) -> tuple[RecordTable, dict[str, Any], Channel]:
    """4. Inference. Exceptions here abort the job (run_job's handler): nothing may wait forever."""
    rank = comm.rank
    timings = RankTimings()
    channel = Channel(comm, prepared.selected - len(prepared.previous), ChannelOptions.of(cfg),
                      [t.host for t in topology], attempt=prepared.attempt)
    work = plan.work
    watchdog.in_flight = lambda: in_flight(work if not plan.dynamic else None, timings.images, cfg.batch_size)
    loader_threads = cfg.loader_threads or max(2, min(4, opened.threads))
    fault = Fault.from_env(rank)
    comm.Barrier()
    t_run = time.perf_counter()
    if plan.dynamic:
        chunk = cfg.chunk_size or cfg.batch_size
        source = channel.master_items(work, chunk) if rank == 0 else channel.worker_items()
    else:
        source = work
        if plan.shards is not None:
            for r, shard in enumerate(plan.shards):
                channel.recovery.assign(r, shard)
    task = task_for(prepared.task)
    table = record_table(prepared.task, rank, prepared.classes).configure(cfg.outputs if cfg.multi else None,
                                                                          bool(cfg.tta))

    def on_batch(records: list[dict[str, Any]]) -> None:
        watchdog.beat()
        table.extend(records)
        channel.on_batch(records)

    loader = opened.loader
    while source is not None:  # the work, then (--fault-tolerant) any share of a lost rank's images
        watchdog.arm()
        run_items(source, opened.engine.predict, prepared.profile, rank=rank, batch_size=cfg.batch_size,
                  threads=loader_threads, ledger=opened.ledger,
                  on_batch=on_batch, fault=fault, timings=timings,
                  batch_source=loader.batches if loader is not None else None, keep=False,
                  task=task, decode_mode=cfg.decode, max_pixels=cfg.max_pixels, options=prepared.scoring,
                  predictors=opened.predictors, ensemble=cfg.ensemble, tta=cfg.tta, slice_order=cfg.slice_order)
        watchdog.arm(False)  # waiting for the others from here: the channel watches them
        source = channel.finish(plan.dynamic)
    opened.ledger.close()
    timings.total_s = time.perf_counter() - t_run
    watchdog.stop()
    log(rank, f"done: {timings.images} image(s) in {timings.total_s:.2f} s "
              f"(predict {timings.predict_s:.2f} s, waiting for images {timings.wait_s:.2f} s)", verbose=True)
    stats = {"rank": rank, "host": me.host, "images": timings.images, "threads": opened.threads,
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
             **timings.stats(), "loader_threads": loader_threads,
             "progress_s": round(channel.cost_s, 5), "progress_messages": channel.messages}
    return table, stats, channel


def _gather(cfg: RunConfig, comm: Any, prepared: Prepared, plan: Scattered, opened: Opened,
            topology: list[Topology], table: RecordTable, stats: dict[str, Any], channel: Channel,
            t_start: float) -> int:
    """5. The compact record tables go to rank 0, which rebuilds full records, writes the results (and the
    report) and tells every rank the exit code."""
    gathered = comm.gather((table, stats), root=0)
    code = EXIT_OK
    if comm.rank == 0:
        all_records = [r for t, _ in gathered for r in t.to_records(plan.planned)]
        if channel.lost:  # what the lost ranks finished, from their ledgers
            all_records += channel.recovery.lost_records
        summary, code = finish_run(cfg, prepared, all_records, [t.__dict__ for t in topology],
                                   [s for _, s in gathered],
                                   {**opened.stack.describe(), **opened.engine.describe()},
                                   time.perf_counter() - t_start,
                                   {"fault_tolerance": channel.recovery.summary(True)} if cfg.fault_tolerant else None)
        if channel.metrics is not None:
            channel.metrics.finish(summary, code)
        if cfg.report:
            from ..outputs.report import write_report

            write_report(cfg.out)
        if not cfg.quiet:
            where = f"results: {os.path.join(cfg.out, 'summary.json')}, {os.path.join(cfg.out, 'per_image.csv')}"
            print(summary_table(summary, [*problem_lines(prepared.previous + all_records), where]), flush=True)
    return comm.bcast(code, root=0)
