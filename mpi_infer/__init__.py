"""mpi_infer: run a trained segmentation or classification model over a whole ECVL dataset in parallel with MPI."""

__version__ = "0.4.0"
