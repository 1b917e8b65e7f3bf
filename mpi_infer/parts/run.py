"""``run --part K/N``: one process runs part K of the run's exact N-way plan, with no MPI at all (a Slurm array
task, a Kubernetes Indexed Job's pod). Its records go to its own ledger; ``merge`` makes the one summary."""

from __future__ import annotations

import dataclasses
import os
import resource
import socket
import sys
import time
import traceback
from typing import Any

from ..config import RunConfig
from ..errors import EXIT_CODES, EXIT_OK, EXIT_PARTIAL, ConfigError, MpiInferError, clip, exit_code_for
from ..mpi.world import check_one_process, name_launcher
from ..outputs.console import ConsoleRecord, print_plan
from ..outputs.ledger import LEDGER_DIR
from ..outputs.progress import configure, log
from ..stages.interrupt import interrupted_by, restore_handlers, stop_on_signals
from ..stages.opening import open_run
from ..stages.prepare import prepare_run
from ..stages.runner import Fault, RankTimings, run_items
from ..stages.stack import choose_stack, for_medical, rank_threads
from ..tasks import task_for
from .layout import DONE_FILE, PART_FILE, config_to_json, list_parts, part_dir, write_json


def run_part(cfg: RunConfig, part: tuple[int, int]) -> int:
    """Run part K of N into OUT/parts/part-K-of-N/ and return the exit code (0, 3 with failed images, 202 when
    stopped by SIGTERM/SIGINT, or an error's code). ``--resume`` runs only what this part has left."""
    k, n = part
    top = os.path.abspath(cfg.out)
    folder = part_dir(top, k, n)
    configure(cfg.quiet, cfg.verbose)
    record = ConsoleRecord()
    record.start()
    handlers = stop_on_signals()
    code = EXIT_OK
    try:
        code = _run_part(cfg, top, folder, k, n, record)
    except Exception as exc:  # noqa: BLE001 - every way out is an exit code and one message
        stopped = interrupted_by(exc)
        code = exit_code_for(stopped or exc)
        if stopped is not None:
            sys.stderr.write(f"mpi_infer: part {k}/{n}: {stopped}; finished images are in "
                             f"{os.path.join(folder, LEDGER_DIR)}: exit {code} (retryable), rerun the part with "
                             f"--resume\n")
        elif isinstance(exc, MpiInferError):
            sys.stderr.write(f"mpi_infer: error: part {k}/{n}: {clip(str(exc), 2000)}\n")
        else:
            sys.stderr.write(f"mpi_infer: part {k}/{n}: fatal {type(exc).__name__}: {clip(str(exc), 2000)}\n"
                             + "".join(traceback.format_exception(exc)))
    finally:
        restore_handlers(handlers)
        record.save(folder, code)
    return code


def _check_out(top: str, n: int) -> None:
    """OUT may hold this N's parts (and their masks), never a whole MPI run's ledger or another N's parts."""
    if os.path.exists(top) and not os.path.isdir(top):
        raise ConfigError(f"--out {top}: exists and is not a folder")
    if os.path.isdir(os.path.join(top, LEDGER_DIR)):
        raise ConfigError(f"--out {top}: holds an MPI run's ledger/; parts write their own folders under parts/: "
                          f"use a new --out")
    others = sorted(m for m in list_parts(top) if m != n)
    if others:
        raise ConfigError(f"--out {top}: holds the parts of a {others[0]}-way split; a {n}-way part cannot join "
                          f"them (every part must cut the same plan): use a new --out, or --part K/{others[0]}")
    os.makedirs(top, exist_ok=True)
    for name in ("parts", "masks"):
        if os.path.islink(os.path.join(top, name)):
            raise ConfigError(f"--out {top}: {name}/ is a symlink; mpi_infer never writes through one")


def _run_part(cfg: RunConfig, top: str, folder: str, k: int, n: int, record: ConsoleRecord) -> int:
    t_start = time.perf_counter()
    check_one_process(os.environ)
    _check_out(top, n)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    part_cfg = dataclasses.replace(cfg, out=folder)
    stack = choose_stack(cfg.loader, cfg.engine, cfg.backend, cfg.model, cfg.decode, cfg.score_at)
    prepared, payloads = prepare_run(part_cfg, n, stack.engine, part=(k, n))
    stack = for_medical(stack, prepared.medical)
    prepared.scoring = dataclasses.replace(prepared.scoring, masks_dir=top if cfg.save_masks else None)
    record.attempt = prepared.attempt
    work = payloads[0]
    if cfg.dry_run:
        print_plan(prepared, [len(work)], 0.0, False)
        return EXIT_OK
    write_json(os.path.join(folder, PART_FILE), {
        "part": [k, n], "plan_sha256": prepared.plan_sha256, "sharding": prepared.sharding,
        "images": prepared.selected, "config": config_to_json(cfg)})
    for w in prepared.warnings:
        log(k, f"warning: {w}")
    threads = rank_threads(cfg.threads, 1)
    opened = open_run(part_cfg, prepared, stack, rank=k, threads=threads, device_id=0, ledger_dir=folder)
    for w in opened.warnings:
        log(k, f"warning: {w}")
    log(k, f"part {k}/{n}, launched by {name_launcher(os.environ)}: {prepared.selected} image(s) of the "
           f"{prepared.sharding} plan "
           f"{prepared.plan_sha256[:12]}, {len(prepared.previous)} already done; loader {opened.stack.loader}, "
           f"engine {opened.stack.engine}; profile {prepared.profile.name}")
    timings = RankTimings()
    failed = 0

    def on_batch(records: list[dict[str, Any]]) -> None:
        nonlocal failed
        failed += sum(r["status"] == "failed" for r in records)

    loader_threads = cfg.loader_threads or max(2, min(4, threads))
    run_items(work, opened.engine.predict, prepared.profile, rank=k, batch_size=cfg.batch_size,
              threads=loader_threads, ledger=opened.ledger, on_batch=on_batch, fault=Fault.from_env(k),
              timings=timings, batch_source=opened.loader.batches if opened.loader is not None else None,
              keep=False, task=task_for(prepared.task), decode_mode=cfg.decode, max_pixels=cfg.max_pixels,
              options=prepared.scoring, predictors=opened.predictors, ensemble=cfg.ensemble, tta=cfg.tta,
              slice_order=cfg.slice_order)
    opened.ledger.close()
    failed += sum(r["status"] == "failed" for r in prepared.previous)
    code = EXIT_PARTIAL if failed else EXIT_OK
    wall = time.perf_counter() - t_start
    stats = {"rank": k, "host": socket.gethostname(), "images": timings.images, "threads": threads,
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
             **timings.stats(), "loader_threads": loader_threads}
    write_json(os.path.join(folder, DONE_FILE), {
        "part": [k, n], "attempt": prepared.attempt, "plan_sha256": prepared.plan_sha256, "exit_code": code,
        "images": prepared.selected, "failed": failed, "wall_s": round(wall, 4),
        "prepare_s": round(prepared.prepare_s, 4), "stats": stats,
        "backend": {**opened.stack.describe(), **opened.engine.describe()}})
    log(k, f"part {k}/{n}: {timings.images} image(s) run in {wall:.1f} s ({failed} failed); when every part has "
           f"finished: mpi_infer merge {top}")
    if not cfg.quiet:
        print(f"exit {code}: {EXIT_CODES[code]}", flush=True)
    return code
