"""Rank 0's work before inference, as plain functions (mpi/job.py adds the MPI around them): load and validate
the dataset, resolve the profile, check the output folder, hash (and if needed convert) the model, skip what a
previous attempt finished (--resume), plan the shards. What every rank needs travels in ``Prepared``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import __version__
from ..atomic import write_text
from ..config import RunConfig
from ..data.dataset import Dataset, check_single_labels, load_dataset, outside_paths, select_splits, selected_items
from ..data.partition import Shard, describe, plan
from ..data.worklist import WorkList
from ..errors import ConfigError, DatasetError, clip
from ..models.convert import cached_onnx
from ..models.files import DEMO_CLASSIFIER, input_channels, model_format, model_sha256
from ..outputs.folder import RUN_FILE, prepare_output, read_run_file, remove_outputs
from ..outputs.ledger import complete_images, latest_records, next_attempt, read_ledgers
from ..outputs.results import strict_json
from ..profiles import Profile, get_profile
from ..tasks import ScoreOptions, task_for


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
    profile: Profile | None = None  # the recipe every rank uses (the task's default where --profile was not given)
    scoring: ScoreOptions = field(default_factory=ScoreOptions)  # what the task is told about scoring
    sharding: str = "images"  # how the static shards were cut: bytes | images | images (balanced) | dynamic
    models: list[dict[str, Any]] = field(default_factory=list)  # several models: name, path, run_model, sha256, arch
    plan_sha256: str = ""  # --part: the whole N-way plan's fingerprint (every part's must agree)
    volumes: int = 0  # volumes among the selected entries (their slices are the samples)
    medical: str = ""  # "volumes", "files" (DICOM or NIfTI: the first selected image says), or ""


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


# only when used
OPTIONAL_IDENTITY = ("output", "decode", "boundary", "score_at", "models", "ensemble", "tta", "slice_order")


def run_identity(cfg: RunConfig, profile: Profile, model_sha: str, dataset_sha: str, splits: list[str],
                 arch: str | None, models: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What must match for --resume to reuse earlier records."""
    identity = {"model_sha256": model_sha, "dataset_sha256": dataset_sha, "profile": profile.to_dict(),
                "splits": splits, "arch": arch}
    if (cfg.activation, cfg.cls, cfg.output) != ("none", None, None):  # absent for the plain case: older
        identity["output"] = {"activation": cfg.activation, "class": cfg.cls}  # run.json files match
        if cfg.output is not None:
            identity["output"]["name"] = cfg.output
    if cfg.score_at != "network":
        identity["score_at"] = cfg.score_at
    if cfg.boundary:  # other records (absent: older run.json files match)
        identity["boundary"] = {"nsd_tolerance": cfg.nsd_tolerance, "empty": cfg.empty_boundary}
    if cfg.slice_order != "yaml":  # other slices under the same ids (absent: older run.json files match)
        identity["slice_order"] = cfg.slice_order
    if cfg.decode != "exact":  # other pixels: records of the two modes never mix (absent: older run.json match)
        identity["decode"] = cfg.decode
    if models:  # several models: each one's name, hash and architecture, in order
        identity["models"] = [{"name": m["name"], "sha256": m["sha256"], "arch": m["arch"],
                               **({"activation": m["activation"]} if m["activation"] != "none" else {})}
                              for m in models]
    if cfg.ensemble:
        identity["ensemble"] = cfg.ensemble
    if cfg.tta:
        identity["tta"] = cfg.tta
    # As run.json will hold it (tuples become lists), so that the same command compares equal on --resume.
    return json.loads(json.dumps(identity))


def identity_differences(before: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """The keys in which an earlier run.json differs from this run's identity; optional keys count both ways
    (written before but absent now is a difference too)."""
    keys = [*identity, *(k for k in OPTIONAL_IDENTITY if k in before and k not in identity)]
    return [k for k in keys if before.get(k) != identity.get(k)]


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


def resolve_profile(cfg: RunConfig, task: str, warnings: list[str] | None = None, volumes: bool = False) -> Profile:
    """The recipe every rank uses: --profile (and its overrides), else the task's default: segnet-192 for
    segmentation, vgg16-224 for classification (lenet-64 for the shipped demo classifier); its channels are the
    model's input's (ECVL's ColorType: 1 grey, 3 RGB), said in ``warnings`` where they differ from the recipe's.
    On a set of ``volumes`` a model taking K > 1 channels takes K consecutive slices per sample (the MS
    pipeline's ``in_channels``)."""
    name = cfg.profile_name
    if name is None and task == "classification":
        name = "lenet-64" if os.path.basename(cfg.model).startswith(DEMO_CLASSIFIER) else "vgg16-224"
    profile = get_profile(name, **cfg.profile_overrides)
    found = {m.path: input_channels(m.path) for m in cfg.models}  # a header read (a dry run too): no weights
    wanted = {c for c in found.values() if c is not None}
    if len(wanted) > 1:
        raise ConfigError(f"the models take different channels ({', '.join(f'{p}: {c}' for p, c in found.items())}); "
                          f"one run reads its images one way: run them separately")
    channels = wanted.pop() if wanted else None
    slices = channels if volumes and channels is not None and channels > 1 else None
    if slices or (channels is not None and channels != profile.channels and channels in (1, 3)):  # else the
        try:  # engine says
            profile = get_profile(name, **cfg.profile_overrides, channels=1 if slices else channels, slices=slices)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (the model takes {channels} channel(s)): give --mean/--std one value each, "
                              f"or {channels}") from None
        if warnings is not None and slices:
            warnings.append(f"the model takes {slices} channels and the set holds volumes: each sample is {slices} "
                            f"consecutive slices (stride {slices}; a volume's last sample ends on its last slice), "
                            f"one probability map per slice")
        elif warnings is not None:
            read = "grey" if channels == 1 else "RGB"
            warnings.append(f"the model takes {channels} channel(s): images are read {read} (profile {profile.name} "
                            f"says {3 if channels == 1 else 1})")
    return profile


def model_infos(cfg: RunConfig, model_sha: str, arch: str | None) -> list[dict[str, Any]]:
    """Several models: each one's name, path, hash, architecture and activation (the first's already known);
    one model: none."""
    if len(cfg.models) < 2:
        return []
    return [{"name": m.name, "path": m.path, "sha256": model_sha if k == 0 else
             ("" if cfg.dry_run else model_sha256(m.path)), "arch": arch if k == 0 else resolve_arch(cfg, m.path),
             "activation": m.activation} for k, m in enumerate(cfg.models)]


def score_options(cfg: RunConfig) -> ScoreOptions:
    """The run's options as the task needs them, and nothing else."""
    return ScoreOptions(masks_dir=cfg.out if cfg.save_masks else None, score_at=cfg.score_at,
                        boundary=(cfg.nsd_tolerance, cfg.empty_boundary) if cfg.boundary else None,
                        bootstrap=cfg.bootstrap, seed=cfg.seed)


def selection(dataset: Dataset, splits: list[str]) -> dict[str, Any]:
    """The selected images per split, each volume replaced by its slices (loaders/volumes.py)."""
    from ..loaders.volumes import expand_volumes

    return expand_volumes(dataset, selected_items(dataset, splits))


def check_volume_channels(dataset: Dataset, selected: dict[str, Any], profile: Profile) -> None:
    """Volumes go to a one-channel model slice by slice, or to a K-channel one K slices at a time; a 2D image
    among them has no K slices, and a colour model no volumes (ConfigError)."""
    if not dataset.volume_sizes:
        return
    if profile.channels != 1:
        raise ConfigError(f"{dataset.path}: the set holds volumes, and the model takes {profile.channels} colour "
                          f"channels; a volume's slices are grey")
    if profile.slices > 1:
        flat = next((int(i) for idx in selected.values() for i in idx if int(i) not in dataset.volume_of), None)
        if flat is not None:
            raise ConfigError(f"{dataset.path}: images[{flat}] is a 2D image, and the model takes {profile.slices} "
                              f"consecutive slices of a volume per sample; run the 2D images with a model of "
                              f"their own")


def medical_files(dataset: Dataset, selected: dict[str, Any]) -> str:
    """'files' when the first selected image is DICOM or NIfTI (one header read), else ''."""
    from ..loaders.medical import sniff

    first = next((int(i) for idx in selected.values() for i in idx), None)
    if first is None:
        return ""
    try:
        return "files" if sniff(dataset.sample(first).locations[0]) in ("dicom", "nifti") else ""
    except (OSError, ValueError):
        return ""


def record_check(dataset: Dataset, selected: dict[str, Any], outputs: list[str] | None) -> Any:
    """--resume's test of a ledger record: an image of this plan (its index in its split, its location) and a
    record its task could have written (tasks' check_record)."""
    task = task_for(dataset.task)
    members: dict[str, set[int]] = {}

    def check(r: dict[str, Any]) -> str | None:
        index, split = r["index"], r.get("split")
        if split not in selected:
            return f"split {clip(repr(split), 60)}: not a split this run selected"
        if split not in members:
            members[split] = {int(i) for i in selected[split]}
        if index not in members[split]:
            return f"index {index}: not an image of split {split} in {dataset.path}"
        if r.get("location") != ";".join(dataset.sample(index).locations):
            return f"location {clip(repr(r.get('location')), 120)}: not image {index}'s"
        if outputs is not None and r.get("model") not in outputs:
            return None  # a model this run does not have: dropped, never scored
        return task.check_record(r, list(dataset.classes))

    return check


def dry_run_files(dataset: Dataset, selected: dict[str, Any]) -> str:
    """The dry run's file check: every selected image's (and mask's) header read; a set where no image can be
    read is refused (DatasetError, exit 10), naming the first problems."""
    from ..loaders.probe import check_files

    def files() -> Any:
        for idx in selected.values():
            for i in idx:
                sample = dataset.sample(int(i))
                yield from ((p, "image") for p in sample.locations)
                if sample.label_path:
                    yield sample.label_path, "mask"

    check = check_files(files())
    images = sum(len(v) for v in selected.values())
    if images and check.readable == 0:
        raise DatasetError(f"{dataset.path}: none of the {check.checked} selected file(s) can be read: "
                           f"{check.line().split(': ', 1)[1]}")
    return check.line()


def prepare_run(cfg: RunConfig, world: int, engine: str = "onnx", part: tuple[int, int] | None = None
                ) -> tuple[Prepared, list[WorkList]]:
    """Everything before inference; raises our errors (with exit codes) on bad input. ``part`` (K, N): one
    process runs shard K of the N-way plan of the whole selection (``run --part K/N``); the one payload is what
    K has left (without the images its own earlier attempts finished)."""
    t0 = time.perf_counter()
    dataset = load_dataset(cfg.dataset, allow_overlap=cfg.allow_overlap)
    splits = select_splits(dataset, cfg.splits)
    model_sha = "" if cfg.dry_run else model_sha256(cfg.model)  # a dry run never touches the model
    fresh, created = (False, False) if cfg.dry_run else prepare_output(cfg.out, cfg.resume, cfg.overwrite)
    try:
        prepared, payloads = _prepare(cfg, world, engine, dataset, splits, model_sha, fresh, t0, part)
    except Exception:
        if fresh:
            remove_outputs(cfg.out, remove_folder=created)
        raise
    prepared.created_output = created
    return prepared, payloads


def _prepare(cfg: RunConfig, world: int, engine: str, dataset: Dataset, splits: list[str], model_sha: str,
             fresh: bool, t0: float, part: tuple[int, int] | None = None) -> tuple[Prepared, list[WorkList]]:
    warnings: list[str] = []
    selected = selection(dataset, splits)  # volumes found once (their headers), for --resume's check and the plan
    profile = resolve_profile(cfg, dataset.task, warnings, volumes=bool(dataset.volume_sizes))
    check_volume_channels(dataset, selected, profile)
    arch = resolve_arch(cfg)
    if cfg.ensemble == "vote" and dataset.task != "classification":
        raise ConfigError("--ensemble vote is for classification (a vote of class labels); a segmentation "
                          "ensemble averages probabilities: --ensemble mean")
    infos = model_infos(cfg, model_sha, arch)
    identity = run_identity(cfg, profile, model_sha, dataset.sha256, splits, arch, infos)
    previous: list[dict[str, Any]] = []
    attempt = 0
    run_file = os.path.join(cfg.out, RUN_FILE)
    if cfg.resume and os.path.exists(run_file):
        differs = identity_differences(read_run_file(run_file), identity)
        if differs:
            raise ConfigError(f"--resume: {run_file} was made with a different {', '.join(differs)}; "
                              f"use a new --out, or --overwrite")
        check = record_check(dataset, selected, cfg.outputs if cfg.multi else None)
        previous = latest_records(read_ledgers(cfg.out, check), cfg.outputs if cfg.multi else None)
        attempt = next_attempt(cfg.out)
    if not cfg.dry_run:
        config = {"config": {"file": cfg.config, "options": cfg.config_options}} if cfg.config else {}
        write_text(run_file, strict_json({**identity, "dataset": os.path.abspath(cfg.dataset),
                                         "model": os.path.abspath(cfg.model), "version": __version__, **config},
                                        indent=2, default=str))
    done = complete_images(previous, len(cfg.outputs), ok_only=True)  # every model's record, none failed
    previous = [r for r in previous if r["index"] in done]
    outside = outside_paths(dataset, (i for idx in selected.values() for i in idx), strict=cfg.confine_to_dataset)
    if outside and cfg.confine_to_dataset:
        raise DatasetError(f"{dataset.path}: {len(outside)} selected image or mask path(s) lie outside the dataset's "
                           f"folder {dataset.root} (first: image {outside[0][0]}, {clip(outside[0][1], 200)}); "
                           f"refused by --confine-to-dataset")
    if outside:
        warnings.append(f"{len(outside)} selected image or mask path(s) lie outside the dataset's folder "
                        f"{dataset.root} (first: image {outside[0][0]}, {clip(outside[0][1], 200)}); "
                        f"--confine-to-dataset refuses them")
    if dataset.task == "classification":
        for idx in selected.values():
            check_single_labels(dataset, idx)
    if cfg.dry_run:  # every selected file's header, before any rank starts: what the run could not read
        warnings.append(dry_run_files(dataset, selected))
    if part is not None:  # the whole selection's plan, whatever is done: every part computes the same one
        k, n = part
        shards, sharding, fingerprint = part_plan(cfg, dataset, selected, n)
        selected = {s: [int(i) for i in idx] for s, idx in shards[k].parts.items()}
        previous = [r for r in previous if int(r["index"]) in {i for idx in selected.values() for i in idx}]
        done = complete_images(previous, len(cfg.outputs), ok_only=True)
        shards = [Shard(k, {s: np.asarray([i for i in idx if i not in done], np.int64)
                            for s, idx in selected.items()})]
    else:
        todo = {s: [i for i in idx if int(i) not in done] for s, idx in selected.items()} if done else selected
        # The dynamic schedule hands out chunks from one list on rank 0; the static one scatters N shards.
        shards_n = 1 if cfg.schedule == "dynamic" else world
        sharding = shard_rule(cfg, shards_n, sum(len(v) for v in todo.values()))
        weights = ({int(i): dataset.file_bytes(int(i)) for idx in todo.values() for i in idx}
                   if sharding == "bytes" else None)
        shards = plan(todo, shards_n, balance=cfg.balance, weights=weights, groups=dataset.volume_groups())
        fingerprint = ""
    def engine_file(path: str, sha: str, arch: str | None) -> str:
        """The file the engine opens: the cached ONNX conversion of a .bin on the onnx engine, else the model."""
        if model_format(path) == "bin" and engine == "onnx" and not cfg.dry_run:
            return cached_onnx(path, sha, arch, profile.height, profile.width, os.path.join(cfg.out, ".cache"))
        return path

    run_model = engine_file(cfg.model, model_sha, arch)
    for k, info in enumerate(infos):  # each model's file (the first is run_model)
        info["run_model"] = run_model if k == 0 else engine_file(info["path"], info["sha256"], info["arch"])
    payloads = [dataset.work_list(s.parts) for s in shards]
    prepared = Prepared(
        run_model=run_model, model_sha256=model_sha, dataset_sha256=dataset.sha256, splits=splits,
        attempt=attempt, shard_sizes=describe(shards), selected=sum(len(v) for v in selected.values()),
        previous=previous, warnings=list(dataset.warnings) + warnings, prepare_s=time.perf_counter() - t0,
        sharding=sharding,
        fresh_output=fresh, arch=arch, task=dataset.task, classes=list(dataset.classes), profile=profile,
        scoring=score_options(cfg),
        models=infos, plan_sha256=fingerprint, volumes=len(dataset.volume_sizes),
        medical="volumes" if dataset.volume_sizes else medical_files(dataset, selected),
    )
    return prepared, payloads


def part_plan(cfg: RunConfig, dataset: Dataset, selected: dict[str, Any], parts: int
              ) -> tuple[list[Shard], str, str]:
    """The N-way static plan of the whole selection (``--part``, and ``merge`` checking it), its rule and its
    fingerprint (sha256 of every shard's indices): every part, run whenever and wherever, must compute the same
    plan, or an image could run twice or never."""
    rule = shard_rule(cfg, parts, sum(len(v) for v in selected.values()))  # never dynamic: run --part refuses it
    weights = ({int(i): dataset.file_bytes(int(i)) for idx in selected.values() for i in idx}
               if rule == "bytes" else None)
    shards = plan(selected, parts, balance=cfg.balance, weights=weights, groups=dataset.volume_groups())
    text = json.dumps([{s: [int(i) for i in idx] for s, idx in sh.parts.items()} for sh in shards])
    return shards, rule, hashlib.sha256(text.encode()).hexdigest()


