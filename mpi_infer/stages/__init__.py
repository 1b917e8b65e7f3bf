"""One run's stages as plain functions, without MPI: which loader and engine (stack.py), rank 0 before inference
(prepare.py), one rank's inference loop (runner.py), rank 0 after it (finish.py). mpi/job.py calls them."""
