"""Opening what a rank runs with, as a plain function (an MPI rank and a ``--part`` process share it): every
model's engine with its own head, the loader and the rank's ledger."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import RunConfig
from ..engines import open_engine
from ..errors import MpiInferError
from ..loaders import open_loader
from ..outputs.ledger import Ledger
from ..tasks import task_for
from ..tasks.output import OutputSpec
from .prepare import Prepared
from .stack import Stack, pyeddl_available


@dataclass
class Opened:
    """What a rank opened before inference."""

    stack: Stack
    engine: Any
    predictors: list[tuple[str, Any]] | None  # several models: each one's predict
    loader: Any
    ledger: Ledger
    threads: int
    warnings: list[str]  # the heads' (an activation's probe, say), for rank 0 to print once


def open_run(cfg: RunConfig, prepared: Prepared, stack: Stack, *, rank: int, threads: int, device_id: int,
             ledger_dir: str) -> Opened:
    """Open the model(s), the loader and the ledger (``ledger_dir``/ledger/attempt-A-rank-R.jsonl); raises our
    errors, a model's naming it among several."""
    task = task_for(prepared.task)
    fallback = stack.engine_why.startswith("auto") and pyeddl_available()
    heads = []  # each model its own head: its own activation, its own warnings

    def open_model(path: str, arch: str | None, activation: str) -> Any:
        heads.append(task.head(OutputSpec(activation, cfg.cls), prepared.profile, prepared.classes))
        return open_engine(stack.engine, path, prepared.profile, heads[-1], threads=threads, gpu=cfg.gpu,
                           device_id=device_id, arch=arch, eddl_mem=cfg.eddl_mem, output=cfg.output,
                           arena=not prepared.models, fallback=fallback)  # several models: one shared arena

    predictors = None
    if prepared.models:  # several models: each opened once per rank, all on every batch
        engines = []
        for info in prepared.models:
            try:
                engines.append(open_model(info["run_model"], info["arch"], info["activation"]))
            except MpiInferError as exc:
                raise type(exc)(f"model {info['name']} ({info['path']}): {exc}") from None
        engine = engines[0]
        predictors = [(info["name"], e.predict) for info, e in zip(prepared.models, engines)]
    else:
        engine = open_model(prepared.run_model, prepared.arch, cfg.activation)
    if engine.name != stack.engine:  # auto fell back to EDDL's importer
        stack = Stack(stack.loader, engine.name, stack.loader_why, "auto: ONNX Runtime cannot load the model")
    loader = open_loader(stack.loader, prepared.profile, prepared.classes or None, cfg.max_pixels, prepared.medical,
                         cfg.slice_order)
    warnings = [w for head in heads for w in getattr(head, "warnings", [])]
    return Opened(stack, engine, predictors, loader, Ledger(ledger_dir, prepared.attempt, rank), threads, warnings)
