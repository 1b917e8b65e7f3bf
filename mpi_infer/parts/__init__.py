"""Runs without MPI: ``run --part K/N`` (one process, shard K of the exact N-way plan) and ``merge`` (every
part checked, one summary as one MPI run writes it). For Slurm arrays and Kubernetes Indexed Jobs."""
