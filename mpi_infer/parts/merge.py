"""``mpi_infer merge OUT``: check that every part of a ``run --part K/N`` split finished, then write the one
summary.json, per_image.csv (and report.html) that one MPI run over the same plan writes, bootstrap CIs included.

The merge trusts nothing it has not checked: every part must have recorded the same options and the same plan
(its fingerprint), the dataset and the model(s) must still hash as the parts saw them, and the parts' records
must hold every selected image exactly once. A part that has not finished is named, with the command that
finishes it, and the merge exits 200 (retryable)."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from ..config import RunConfig
from ..data.dataset import Dataset, load_dataset, select_splits
from ..data.partition import describe
from ..errors import ConfigError, RetryableError
from ..models.files import model_sha256
from ..outputs.console import problem_lines, summary_table
from ..outputs.folder import RUN_FILE, read_run_file
from ..outputs.ledger import complete_images, latest_records, read_ledgers
from ..stages.finish import finish_run
from ..stages.prepare import (
    Prepared,
    identity_differences,
    model_infos,
    part_plan,
    record_check,
    resolve_arch,
    resolve_profile,
    run_identity,
    score_options,
    selection,
)
from .layout import DONE_FILE, PART_FILE, config_from_json, list_parts, part_dir, read_json, same_run


class PartsMissing(RetryableError):
    """Some parts have not finished: run them (with --resume), then merge again."""


def wait_for_parts(top: str, parts: int | None, wait: float, poll: float = 5.0) -> None:
    """Until every part has written its done.json (``parts``: how many; else as the folders' names say), or
    ``wait`` seconds have passed (the merge then names what is missing). A merge pod started with the parts'
    pods (an Indexed Job's) waits here instead of failing at once."""
    deadline = time.monotonic() + wait
    said = False
    while time.monotonic() < deadline:
        found = list_parts(top)
        n = parts or (next(iter(found)) if len(found) == 1 else None)
        if n and all(os.path.isfile(os.path.join(part_dir(top, k, n), DONE_FILE)) for k in range(n)):
            return
        if not said:
            print(f"merge: waiting (at most {wait:.0f} s) for every part to finish", flush=True)
            said = True
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


def merge_parts(out: str, *, report: bool | None = None, quiet: bool = False, parts: int | None = None,
                wait: float = 0.0) -> tuple[dict[str, Any], int]:
    """Merge OUT's parts into OUT's results; returns (summary, exit code: 0, or 3 with failed images). Raises
    PartsMissing (exit 200) naming unfinished parts, ConfigError (exit 12) for parts that do not agree.
    ``parts``: the N every part must have been run with; ``wait``: first wait that long for them."""
    t0 = time.perf_counter()
    top = os.path.abspath(out)
    if wait:
        wait_for_parts(top, parts, wait)
    found = list_parts(top)
    if parts is not None and found and set(found) != {parts}:
        raise ConfigError(f"merge {out} --parts {parts}: the folder holds the parts of a "
                          f"{' and '.join(map(str, sorted(found)))}-way split")
    if not found and parts is not None:
        raise PartsMissing(f"merge {out}: none of the {parts} parts has started; run `mpi_infer run --part K/{parts} "
                           f"--out {out} ...` for K = 0..{parts - 1}")
    if not found:
        raise ConfigError(f"merge {out}: no parts/part-K-of-N/ folder with a {PART_FILE} in it: nothing ran "
                          f"`mpi_infer run --part K/N --out {out}` there")
    if len(found) > 1:
        raise ConfigError(f"merge {out}: parts of {' and '.join(map(str, sorted(found)))}-way splits share the "
                          f"folder; one plan per folder")
    n, folders = next(iter(found.items()))
    started = {k: read_json(os.path.join(f, PART_FILE), PART_FILE) for k, f in folders
               if os.path.isfile(os.path.join(f, PART_FILE))}
    if not started:
        raise PartsMissing(f"merge {out}: none of the {n} parts has started; run `mpi_infer run --part K/{n} ...`")
    first = min(started)
    where = os.path.join(part_dir(top, first, n), PART_FILE)
    cfg = config_from_json(started[first].get("config"), where)
    for k, info in started.items():
        if not same_run(info.get("config"), started[first].get("config")) or info.get("part") != [k, n]:
            raise ConfigError(f"merge {out}: part {k}/{n} ran with other options than part {first}/{n} "
                              f"({os.path.join(part_dir(top, k, n), PART_FILE)}); every part must run the same "
                              f"command but for --part")
    if report is not None:
        cfg = dataclasses.replace(cfg, report=report, save_masks=cfg.save_masks or report)
    cfg = dataclasses.replace(cfg, out=top, resume=False, overwrite=False, quiet=quiet)
    prepared, shards, dataset = _prepare_merge(cfg, n, top)
    for k, info in started.items():
        if info.get("plan_sha256") != prepared.plan_sha256:
            raise ConfigError(f"merge {out}: part {k}/{n} cut another plan ({str(info.get('plan_sha256'))[:12]}, "
                              f"here {prepared.plan_sha256[:12]}): the dataset's files changed between parts; "
                              f"run every part again (--overwrite) on files that stay put")
    records, missing, done = _collect(cfg, dataset, prepared, shards, top, n)
    if missing:
        lines = [f"part {k}/{n}: {left} of {len(shards[k])} image(s) not finished"
                 + ("" if k in started else " (never started)") for k, left in missing]
        ks = ",".join(str(k) for k, _ in missing)
        raise PartsMissing(f"merge {out}: {len(missing)} of {n} part(s) have not finished: {'; '.join(lines[:20])}"
                           f"{'; ...' if len(lines) > 20 else ''}. Run them (part {ks}) with the same command and "
                           f"--part K/{n} --resume, then merge again")
    topology = [{"rank": k, "host": d.get("stats", {}).get("host", "?"), "local_rank": 0, "local_size": 1,
                 "gpu": None} for k, d in sorted(done.items())]
    stats = [d.get("stats", {"rank": k}) for k, d in sorted(done.items())]
    backend = next((d["backend"] for d in done.values() if isinstance(d.get("backend"), dict)), {})
    walls = [float(d.get("wall_s", 0)) for d in done.values()]
    merge_s = time.perf_counter() - t0
    extra = {"parts": {"n": n, "plan_sha256": prepared.plan_sha256, "merge_s": round(merge_s, 4),
                       "per_part": [{"part": k, "attempts": d.get("attempt", 0) + 1, "images": d.get("images"),
                                     "failed": d.get("failed"), "wall_s": d.get("wall_s"),
                                     "host": d.get("stats", {}).get("host")} for k, d in sorted(done.items())]}}
    prepared.attempt = max((int(d.get("attempt", 0)) for d in done.values()), default=0)
    summary, code = finish_run(cfg, prepared, records, topology, stats, backend, max(walls, default=0.0), extra)
    if cfg.report:
        from ..outputs.report import write_report

        write_report(top)
    if not quiet:
        where = f"results: {os.path.join(top, 'summary.json')}, {os.path.join(top, 'per_image.csv')}"
        print(summary_table(summary, [*problem_lines(records),
                                      f"merged {n} part(s) in {merge_s:.2f} s", where]), flush=True)
    return summary, code


def _prepare_merge(cfg: RunConfig, n: int, top: str) -> tuple[Prepared, list[Any], Dataset]:
    """What finish_run needs, from the files as they are now, checked against what every part recorded."""
    t0 = time.perf_counter()
    dataset = load_dataset(cfg.dataset, allow_overlap=cfg.allow_overlap)
    splits = select_splits(dataset, cfg.splits)
    selected = selection(dataset, splits)
    profile = resolve_profile(cfg, dataset.task, volumes=bool(dataset.volume_sizes))
    arch = resolve_arch(cfg)
    model_sha = model_sha256(cfg.model)
    infos = model_infos(cfg, model_sha, arch)
    identity = run_identity(cfg, profile, model_sha, dataset.sha256, splits, arch, infos)
    for k, folder in list_parts(top)[n]:
        path = os.path.join(folder, RUN_FILE)
        if not os.path.isfile(path):
            continue
        differs = identity_differences(read_run_file(path), identity)
        if differs:
            raise ConfigError(f"merge: part {k}/{n} ran with a different {', '.join(differs)} than the files hold "
                              f"now ({path}); run the parts again (--overwrite) or restore the files")
    shards, sharding, fingerprint = part_plan(cfg, dataset, selected, n)
    prepared = Prepared(
        run_model="", model_sha256=model_sha, dataset_sha256=dataset.sha256, splits=splits, attempt=0,
        shard_sizes=describe(shards), selected=sum(len(v) for v in selected.values()),
        warnings=list(dataset.warnings), prepare_s=time.perf_counter() - t0, sharding=sharding, arch=arch,
        task=dataset.task, classes=list(dataset.classes), profile=profile, scoring=score_options(cfg),
        models=infos, plan_sha256=fingerprint)
    return prepared, shards, dataset


def _collect(cfg: RunConfig, dataset: Dataset, prepared: Prepared, shards: list[Any], top: str, n: int
             ) -> tuple[list[dict[str, Any]], list[tuple[int, int]], dict[int, dict[str, Any]]]:
    """Every part's latest records for its own images (checked as --resume checks them), what each has left,
    and each finished part's done.json."""
    outputs = cfg.outputs if cfg.multi else None
    check = record_check(dataset, selection(dataset, prepared.splits), outputs)
    records: list[dict[str, Any]] = []
    missing: list[tuple[int, int]] = []
    done: dict[int, dict[str, Any]] = {}
    for k, shard in enumerate(shards):
        folder = part_dir(top, k, n)
        mine = {i for _, i in shard.items()}
        recs = [r for r in latest_records(read_ledgers(folder, check), outputs) if r["index"] in mine]
        complete = complete_images(recs, len(cfg.outputs))
        left = len(mine - complete)
        if left:
            missing.append((k, left))
            continue
        records += [r for r in recs if r["index"] in complete]
        path = os.path.join(folder, DONE_FILE)
        done[k] = read_json(path, DONE_FILE) if os.path.isfile(path) else {"stats": {"rank": k}}
    return records, missing, done
