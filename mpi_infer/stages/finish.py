"""Rank 0 after inference, as plain functions: merge every record (this attempt's and kept earlier ones),
aggregate through the task, write summary.json and per_image.csv, pick the exit code."""

from __future__ import annotations

import os
import re
import socket
from typing import Any

from .. import __version__
from ..config import RunConfig
from ..errors import EXIT_CODES, EXIT_OK, EXIT_PARTIAL
from ..outputs.results import PATIENTS_FILE, VOLUMES_FILE, write_per_image_csv, write_rows, write_summary
from ..tasks import task_for
from .prepare import Prepared


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


def models_summary(by_model: dict[str, list[dict[str, Any]]], first: dict[str, Any], prepared: Prepared,
                   cfg: RunConfig, task: Any, group_of: Any) -> dict[str, Any]:
    """Several models: each one's results as the run's own (``models``; ``first`` is the first model's summary,
    the run's top level), the best per split, and every pair compared image for image."""
    from ..tasks.compare import best_models, comparisons

    files = {m["name"]: m for m in prepared.models}
    models: dict[str, Any] = {}
    for k, (name, recs) in enumerate(by_model.items()):
        s = first if k == 0 else task.summarise(recs, prepared.splits, prepared.classes, prepared.profile,
                                                prepared.scoring, group_of)
        models[name] = {k: s[k] for k in ("images", "metrics", "per_split", "statistics") if k in s}
        if group_of:  # every model's and the ensemble's groups, not the first model's alone
            models[name]["groups"] = per_group(recs, group_of, cfg.group_by, task)
        if name in files:
            models[name].update(path=os.path.abspath(files[name]["path"]), sha256=files[name]["sha256"],
                                arch=files[name]["arch"], activation=files[name]["activation"])
        else:
            models[name]["combines"] = {"how": cfg.ensemble, "models": [m["name"] for m in prepared.models]}
    return {"models": models, "best_model": best_models(models, prepared.task),
            "comparison": comparisons(by_model, prepared.task, cfg.bootstrap, cfg.seed),
            "tta": cfg.tta, "ensemble": cfg.ensemble}


def patient_results(cfg: RunConfig, prepared: Prepared, records: list[dict[str, Any]]
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """--patient-by: summary.json's ``patients`` and patients.csv's rows (tasks/patients.py)."""
    from ..tasks.patients import classification_patients, patient_namer, segmentation_patients

    patient_of = patient_namer(cfg.patient_by)
    if prepared.task == "classification":
        block, rows = classification_patients(records, prepared.classes, patient_of, cfg.patient_vote,
                                              cfg.bootstrap, cfg.seed)
    else:
        block, rows = segmentation_patients(records, patient_of, cfg.bootstrap, cfg.seed)
    return {"by": cfg.patient_by, **block}, rows


def finish_run(
    cfg: RunConfig,
    prepared: Prepared,
    records: list[dict[str, Any]],
    topology: list[dict[str, Any]],
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
    summary = task.summarise(primary, prepared.splits, prepared.classes, prepared.profile, prepared.scoring,
                             group_of)
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
        "hosts": sorted({t["host"] for t in topology}),
        "backend": backend_info,
        "profile": prepared.profile.to_dict(),
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
        "topology": topology,
        "warnings": prepared.warnings,
        "exit_code": exit_code,
        "exit_meaning": EXIT_CODES[exit_code],
        "version": __version__,
        "launcher_host": socket.gethostname(),
        **(extra or {}),
    })
    if any("slice" in r for r in primary):  # volumes: each one's 3D scores beside the per-slice rows
        from ..tasks.volumes import volume_results

        summary["volumes"], volume_rows = volume_results(primary, cfg.bootstrap, cfg.seed)
        write_rows(os.path.join(cfg.out, VOLUMES_FILE), volume_rows)
    if cfg.patient_by:
        summary["patients"], rows = patient_results(cfg, prepared, primary)
        write_rows(os.path.join(cfg.out, PATIENTS_FILE), rows)
    write_per_image_csv(cfg.out, all_records, task, prepared.classes)
    write_summary(cfg.out, summary)
    return summary, exit_code
