"""mpi_infer: run a trained segmentation or classification model over a whole ECVL dataset in parallel with MPI.

From Python: ``mpi_infer.run(dataset=..., models=..., out=..., **options)`` and ``mpi_infer.load_results(out)``
(api.py; MPI and the engines load only when a run starts)."""

__version__ = "0.4.0"

from .api import load_results, run  # noqa: E402 - after __version__, which the modules below import

__all__ = ["__version__", "load_results", "run"]
