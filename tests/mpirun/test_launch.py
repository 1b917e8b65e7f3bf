"""Launch pre-flight: a world that is not what the launcher started (srun without PMI support starts N
singletons) is refused at once, before anything is read or written; mpirun's own world passes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import mpirun

from mpi_infer.errors import EXIT_LAUNCH, LaunchError
from mpi_infer.mpi.world import check_launch, check_one_process, check_pmi_clash, name_launcher


def plain(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI", "SLURM_"))}
    return subprocess.Popen([sys.executable, "-m", "mpi_infer", *args], env={**clean, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_singletons_that_srun_started_are_refused_and_write_nothing(synth_small, tmp_path):
    out = tmp_path / "o"
    args = ["run", "--dataset", synth_small, "--model", "demo-onnx", "--out", str(out), "--split", "all", "--resume"]
    t0 = time.monotonic()
    procs = [plain(args, {"SLURM_NTASKS": "2", "SLURM_PROCID": str(k), "SLURM_JOB_ID": "7"}) for k in range(2)]
    results = [p.communicate(timeout=60) for p in procs]
    assert time.monotonic() - t0 < 30
    for p, (_, err) in zip(procs, results):
        assert p.returncode == EXIT_LAUNCH, err
        assert "MPI started a world of 1" in err and "Slurm started 2 task(s)" in err and "srun --mpi=pmix" in err
    assert not out.exists()  # no ledger, no run.json: the double count cannot happen


def test_a_singleton_claiming_an_mpirun_world_is_refused(synth_small, tmp_path):
    p = plain(["run", "--dataset", synth_small, "--model", "demo-onnx", "--out", str(tmp_path / "o")],
              {"OMPI_COMM_WORLD_SIZE": "3", "OMPI_COMM_WORLD_RANK": "2"})
    _, err = p.communicate(timeout=60)
    assert p.returncode == EXIT_LAUNCH and "Open MPI's mpirun started 3 task(s)" in err


def test_mpirun_inside_an_allocation_passes(synth_small, tmp_path):
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", str(tmp_path / "o"),
                  "--quiet", env={"SLURM_NTASKS": "4", "SLURM_PROCID": "0"})
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("env, ok", [
    ({}, True),
    ({"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"}, True),
    ({"SLURM_NTASKS": "4"}, True),  # a batch script's allocation, no task of a step: not a claim
    ({"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"}, False),
    ({"PMI_SIZE": "2", "PMI_RANK": "0"}, False),
])
def test_check_launch_rules(env, ok):
    if ok:
        check_launch(1, 0, env)
    else:
        with pytest.raises(LaunchError, match="MPI started a world of 1"):
            check_launch(1, 0, env)


@pytest.mark.parametrize("env, says", [
    ({}, "no launcher"),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "Open MPI's mpirun (prterun), 4"),
    ({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2", "PMIX_NAMESPACE": "slurm.pmix.7.0"}, "srun (pmix), 2"),
    ({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2"}, "srun (no MPI plugin)"),
    ({"PMI_SIZE": "3"}, "MPICH's Hydra"),
    ({"SLURM_JOB_ID": "9", "SLURM_ARRAY_TASK_ID": "2"}, "array task 2"),
    ({"JOB_COMPLETION_INDEX": "5"}, "Indexed Job's pod (index 5)"),
])
def test_the_launcher_is_named(env, says):
    assert says in name_launcher(env)


def test_mpich_pmi_and_pmix_clash_is_refused_before_mpi_starts():
    both = {"PMI_SIZE": "2", "PMIX_NAMESPACE": "x"}
    with pytest.raises(LaunchError, match="mpich#7957"):
        check_pmi_clash(both, "mpich")
    check_pmi_clash(both, "openmpi")  # Open MPI speaks PMIx and ignores PMI_*
    check_pmi_clash({"PMI_SIZE": "2"}, "mpich")


def test_a_part_under_a_launcher_of_several_processes_is_refused(synth_small, tmp_path):
    with pytest.raises(LaunchError, match="--part runs one process"):
        check_one_process({"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "0"})
    check_one_process({"SLURM_NTASKS": "4", "SLURM_JOB_ID": "3"})  # an array task's batch script: one process
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", str(tmp_path / "o"),
                  "--part", "0/2")
    assert proc.returncode == EXIT_LAUNCH and "each would run the same part" in proc.stderr
