"""mpi_infer: run a trained segmentation model over a whole ECVL dataset in parallel with MPI."""

__version__ = "0.1.0"
