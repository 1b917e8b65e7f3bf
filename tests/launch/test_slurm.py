"""``mpi_infer sbatch`` under a real Slurm (slurmctld, slurmd and munge from Debian's packages, started here):
the array mode (parts + merge), the MPI mode (srun --mpi=pmix, and mpirun inside the allocation) and a requeue
after Slurm's USR1 each give results equal, image for image, to a local ``mpirun`` run. Skips where Slurm is not
installed or we are not root, saying why; MPI_INFER_REQUIRE_SLURM=1 (.ci/run sets it as root) makes that a
failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import MPI_ENV, ROOT, mpirun, read_rows, read_summary

sys.path.insert(0, str(ROOT / "scripts"))
from slurm_cluster import SlurmCluster, missing  # noqa: E402

REQUIRE = "MPI_INFER_REQUIRE_SLURM"
pytestmark = [pytest.mark.slow, pytest.mark.mpi]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = missing()
    if why:
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"{REQUIRE}=1 but {why}")
        pytest.skip(why)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def local(synth_small, tmp_path_factory) -> dict[int, str]:
    """The same set run locally with mpirun -n 2 and -n 3."""
    outs = {}
    for n in (2, 3):
        out = str(tmp_path_factory.mktemp(f"local{n}") / "out")
        mpirun(n, "run", "--dataset", synth_small, "--model", "demo", "--out", out, "--split", "all",
               "--batch-size", "2", "--quiet", check=True)
        outs[n] = out
    return outs


def sbatch(slurm, tmp_path, *args: str, env: dict[str, str] | None = None) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "mpi_infer", "sbatch", "-o", str(tmp_path / "scripts"),
                           "--time", "10", "--submit", *args], capture_output=True, text=True, timeout=120,
                          env={**slurm.env, **MPI_ENV, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return [w.rstrip(",") for w in proc.stdout.split() if w.rstrip(",").isdigit()]


def logs(tmp_path) -> str:
    folder = tmp_path / "scripts" / "logs"
    return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(folder.glob("*")))


def same_rows(a: str, b: str) -> None:
    assert read_rows(a) == read_rows(b)


def test_array_mode_parts_and_merge_equal_a_local_run(slurm, local, synth_small, tmp_path):
    out = str(tmp_path / "out")
    t0 = time.perf_counter()
    ids = sbatch(slurm, tmp_path, "--dataset", synth_small, "--model", "demo", "--out", out, "-n", "3",
                 "--parallel", "2", "--run-args", "--split all --batch-size 2", "--report")
    assert len(ids) == 2
    slurm.wait_idle()
    wall = time.perf_counter() - t0
    assert os.path.isfile(os.path.join(out, "summary.json")), logs(tmp_path) + slurm.logs()
    same_rows(out, local[3])
    summary = read_summary(out)
    assert summary["parts"]["n"] == 3 and summary["exit_code"] == 0
    assert os.path.isfile(os.path.join(out, "report.html"))
    print(json.dumps({"figure": "slurm-array", "parts": 3, "wall_s": round(wall, 2),
                      "merge_s": summary["parts"]["merge_s"]}))


@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_mpi_mode_equals_a_local_run(slurm, local, synth_small, tmp_path, launcher):
    out = str(tmp_path / "out")
    sbatch(slurm, tmp_path, "--mode", "mpi", "--launcher", launcher, "--dataset", synth_small, "--model", "demo",
           "--out", out, "-n", "2", "--run-args", "--split all --batch-size 2")
    slurm.wait_idle()
    assert os.path.isfile(os.path.join(out, "summary.json")), logs(tmp_path) + slurm.logs()
    same_rows(out, local[2])
    assert read_summary(out)["world_size"] == 2


def test_plain_srun_without_pmix_is_refused(slurm, synth_small, tmp_path):
    """srun --mpi=none starts 2 singletons: each would run everything; run refuses (exit 14) before any write."""
    out = str(tmp_path / "out")
    proc = subprocess.run(["srun", "--mpi=none", "-n", "2", sys.executable, "-m", "mpi_infer", "run", "--dataset",
                           synth_small, "--model", "demo", "--out", out], capture_output=True, text=True,
                          timeout=120, env={**slurm.env, **MPI_ENV})
    assert proc.returncode == 14, proc.stderr
    assert "srun --mpi=pmix" in proc.stderr and not os.path.exists(out)


def test_usr1_stops_requeues_and_resumes_a_part(slurm, local, synth_small, tmp_path):
    out = str(tmp_path / "out")
    ids = sbatch(slurm, tmp_path, "--name", "rq", "--dataset", synth_small, "--model", "demo", "--out", out,
                 "-n", "2", "--run-args", "--split all --batch-size 1",
                 env={"MPI_INFER_FAULT": "slow:rank=0:factor=40"})  # part 0 runs slowly: it is still running
    ledger = os.path.join(out, "parts", "part-000-of-002", "ledger")
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.isdir(ledger) and any(
            os.path.getsize(os.path.join(ledger, f)) for f in os.listdir(ledger))):
        time.sleep(0.2)
    # what --signal=B:USR1@S sends before the time limit, sent now
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{ids[0]}_0"], check=True, env=slurm.env)
    slurm.wait_idle(300)
    text = logs(tmp_path)
    assert "stopping part 0 and requeueing" in text and "exit 202" in text, text
    assert sorted(os.listdir(ledger)) == ["attempt-000-rank-00000.jsonl", "attempt-001-rank-00000.jsonl"]
    same_rows(out, local[2])
    assert [p["attempts"] for p in read_summary(out)["parts"]["per_part"]] == [2, 1]
