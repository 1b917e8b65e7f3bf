"""The Python API: run a dataset from a notebook or a pipeline step, in one process or under mpirun, and read
a finished run back. ``mpi_infer run`` is built on the same entry (cli.parse, cli.run_config, mpi.job.run_job):
an option means the same, and is checked the same, from Python, a ``--config`` file or the command line.

    import mpi_infer
    summary = mpi_infer.run(dataset="data/dataset.yml", models={"a": "a.onnx", "b": "b.onnx"}, out="out",
                            split="all", batch_size=4, activation={"b": "sigmoid"})
    summary, rows = mpi_infer.load_results("out")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import EXIT_CODES, EXIT_OK, EXIT_PARTIAL, MpiInferError


class RunFailed(MpiInferError):
    """The run ended with a non-zero exit code other than 3 (some images failed): ``exit_code`` says which;
    what went wrong was printed on stderr and, once the output folder was in use, appended to OUT/run.log."""

    def __init__(self, exit_code: int, out: str):
        self.exit_code = exit_code
        super().__init__(f"the run ended with exit {exit_code}: {EXIT_CODES.get(exit_code, 'unknown')} "
                         f"(see stderr, or {out}/run.log)")


def run(dataset: str, models: str | Sequence[str] | Mapping[str, str], out: str, *, comm: Any = None,
        **options: Any) -> dict[str, Any]:
    """Run the models over the dataset and return summary.json's content. ``models``: a path (or demo alias),
    a list of them, or a mapping name -> path. ``options``: any ``run`` flag, named like it (``batch_size=4``,
    ``split=["test", "validation"]``, ``boundary_metrics=True``, ``activation={"b": "sigmoid"}``). ``comm``: the
    communicator to run on (default MPI.COMM_WORLD: one process, or every rank under mpirun; every rank calls
    this and gets the summary, read from the shared output folder). Raises UsageError (bad options) or RunFailed
    (a non-zero exit other than 3: the summary then says which images failed)."""
    from .argtypes import RAISE_USAGE_ERRORS
    from .cli import build_parser, parse, run_config
    from .mpi.job import run_job
    from .options import options_argv

    if isinstance(models, str):
        models = [models]
    token = RAISE_USAGE_ERRORS.set(True)
    try:
        argv = options_argv(build_parser().run_parser, {"dataset": dataset, "model": models, "out": out, **options},
                            "mpi_infer.run()")
        args = parse(["run", *argv])
    finally:
        RAISE_USAGE_ERRORS.reset(token)
    code = run_job(run_config(args), comm)
    if code not in (EXIT_OK, EXIT_PARTIAL):
        raise RunFailed(code, out)
    if args.dry_run:
        return {}
    return load_results(out)[0]


def load_results(out: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """A finished run's summary.json and per_image.csv (one dict a row, values as written), checked as
    ``mpi_infer report`` checks them: a damaged or foreign folder is a ConfigError naming the file."""
    from .outputs.report import load_run

    return load_run(out)
