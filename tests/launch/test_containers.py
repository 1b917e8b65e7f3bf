"""The container images, built and run: an MPIJob rehearsed in real containers (scripts/container_rehearsal.py).

Where podman works and we are root, the CPU image is built by scripts/build_images.sh (cached by content hash;
.ci/run builds it first) and rehearsed: on 3 workers (results equal a local run of the same image, image for
image) and without --hostfile (exit 13). The ECVL image is a thin layer over a site's own DeepHealth image: its
rehearsal (2 workers, auto picks the ECVL loader, results equal the CPU image's local run) runs only where
$MPI_INFER_ECVL_BASE names such an image, and otherwise skips saying why, even under
MPI_INFER_REQUIRE_CONTAINERS=1. Its Dockerfile's refusals (no base named, a base without pyecvl) are tested
always. Elsewhere the tests skip, saying why; with MPI_INFER_REQUIRE_CONTAINERS=1 (.ci/run sets it where
podman is installed) a skip of the CPU image's tests is a failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

REQUIRE = "MPI_INFER_REQUIRE_CONTAINERS"
ECVL_BASE = "MPI_INFER_ECVL_BASE"
pytestmark = [pytest.mark.slow]


def skip(why: str) -> None:
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{REQUIRE}=1 but {why}")
    pytest.skip(why)


def build_images(which: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "build_images.sh"), which], capture_output=True, text=True,
                          cwd=ROOT, timeout=3000, env={**os.environ, **env})


def built(proc: subprocess.CompletedProcess) -> dict[str, dict]:
    return {r["image"]: r for r in map(json.loads, proc.stdout.splitlines()) if r.get("figure") == "image"}


@pytest.fixture(scope="module")
def images() -> dict[str, dict]:
    if os.geteuid() != 0 or not shutil.which("podman"):
        skip("needs root and podman (apt-get install podman buildah debootstrap runc uidmap)")
    proc = build_images("cpu")
    if proc.returncode == 77:
        skip(f"images cannot be built here: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return built(proc)


@pytest.fixture(scope="module")
def ecvl_image(images) -> dict:
    base = os.environ.get(ECVL_BASE)
    if not base:
        pytest.skip(f"${ECVL_BASE} names no DeepHealth base image (one where python3 -c 'import pyecvl.ecvl, "
                    "pyeddl.eddl' works: a site's DeepHealth image or the user's own build), so the ECVL image "
                    "is not built here")
    proc = build_images("ecvl", DEEPHEALTH_BASE=base)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return built(proc)["mpi-infer-ecvl"]


def podman_build_ecvl(*build_args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", "build", *build_args, "-f", "docker/ecvl.Dockerfile", "."], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_ecvl_dockerfile_without_a_base_fails_at_once_naming_the_argument(images):
    proc = podman_build_ecvl()
    assert proc.returncode != 0
    assert "DEEPHEALTH_BASE" in proc.stderr, proc.stderr[-2000:]
    script = build_images("ecvl", DEEPHEALTH_BASE="")
    assert script.returncode == 2 and "DEEPHEALTH_BASE is not set" in script.stderr, script.stderr[-2000:]


@pytest.mark.parametrize("base, says", [
    ("localhost/debian:trixie-slim", "has no python3 on PATH"),    # a plain Debian: no Python at all
    ("localhost/mpi-infer:latest", "has no working pyecvl/pyeddl"),  # Python 3 and our package, no DeepHealth
])
def test_ecvl_dockerfile_refuses_a_base_without_pyecvl_in_seconds(images, base, says):
    proc = podman_build_ecvl("--build-arg", f"DEEPHEALTH_BASE={base}")
    assert proc.returncode != 0
    assert says in proc.stderr + proc.stdout and f"DEEPHEALTH_BASE={base}" in proc.stderr + proc.stdout, \
        proc.stderr[-2000:]
    assert "pyecvl" in proc.stderr + proc.stdout


def rehearse(*args: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "container_rehearsal.py"), *args],
                          capture_output=True, text=True, timeout=900)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    result = lines[-1]
    if "skipped" in result:
        skip(result["skipped"])
    return result


def test_cpu_image_is_self_checked_and_runs_as_uid_1000(images):
    # Its size is a figure (scripts/bench.py --only image, docs/containers.md), not a bound: it drifts with
    # Debian's and PyPI's packages.
    assert images["mpi-infer"]["size_mb"] > 0, images
    out = subprocess.run(["podman", "run", "--rm", images["mpi-infer"]["tag"], "sh", "/usr/local/bin/check_image.sh"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Open MPI" in out.stdout, out.stderr
    who = subprocess.run(["podman", "run", "--rm", images["mpi-infer"]["tag"], "id", "-u"], capture_output=True,
                         text=True, timeout=120)
    assert who.stdout.strip() == "1000"
    # the build machine's proxy CA is not trusted by the image it ships; sshd forwards nothing
    ca = subprocess.run(["podman", "run", "--rm", images["mpi-infer"]["tag"], "sh", "-c",
                         "ls /usr/local/share/ca-certificates | wc -l; grep -c 'Forwarding no' "
                         "/home/mpiuser/.sshd_config"], capture_output=True, text=True, timeout=120)
    assert ca.stdout.split() == ["0", "4"], ca


def test_mpijob_rehearsal_on_three_workers_equals_a_local_run(images):
    r = rehearse("--image", images["mpi-infer"]["tag"], "--workers", "3", "--images", "24")
    assert r["returncode"] == 0, r
    assert r["hosts"] == [f"rehearsal-worker-{k}" for k in range(3)] and r["world_size"] == 3
    assert r["images"]["selected"] == 24 and r["images"]["failed"] == 0
    assert r["equal_to_local_run"] is True, r


def test_trainjob_rehearsal_on_two_workers_equals_a_local_run(images):
    """Kubeflow Trainer's layout: its worker names and hostfile of endpoints, its ECDSA key pair with the private
    key mode 0640 (group fsGroup), the launcher container's command from the rendered TrainingRuntime."""
    r = rehearse("--image", images["mpi-infer"]["tag"], "--kind", "trainjob", "--workers", "2", "--slots", "2",
                 "--images", "24")
    assert r["returncode"] == 0, r
    assert r["hosts"] == ["rehearsal-node-0-0", "rehearsal-node-0-1"] and r["world_size"] == 4
    assert r["images"]["selected"] == 24 and r["equal_to_local_run"] is True, r


def test_a_killed_rank_in_a_worker_pod_is_survived(images):
    """--fault-tolerant in containers: the rank in worker container 2 is SIGKILLed mid-run (an OOM kill); the
    survivors finish its images with no restart, the same per-image results as one local process."""
    r = rehearse("--image", images["mpi-infer"]["tag"], "--workers", "3", "--images", "96", "--kill-rank", "2")
    assert r["returncode"] == 0 and "restarts" not in r, r
    assert "--with-ft ulfm" in r["command"] and r["killed"] == "rank"
    assert [x["rank"] for x in r["fault_tolerance"]["lost_ranks"]] == [2]
    assert r["equal_to_local_run"] is True, r


def test_a_killed_worker_container_is_a_retry_that_completes(images):
    """Worker container 2 itself is killed (a lost pod): Open MPI's runtime cannot go on without its daemon; the
    launcher exits with a retryable code; after the container restarts, the launcher's retry completes."""
    r = rehearse("--image", images["mpi-infer"]["tag"], "--workers", "3", "--images", "96", "--kill-worker", "2")
    assert r["first_attempt"]["returncode"] >= 128 and r["restarts"] == 1, r
    assert r["returncode"] == 0 and r["images"]["scored"] == 96, r
    assert r["equal_to_local_run"] is True, r


def test_without_hostfile_the_run_exits_13(images):
    r = rehearse("--image", images["mpi-infer"]["tag"], "--workers", "2", "--images", "6", "--drop-hostfile")
    assert r["returncode"] == 13, r


def test_ecvl_image_on_two_workers_loads_with_ecvl_and_equals_the_cpu_image(images, ecvl_image):
    r = rehearse("--image", ecvl_image["tag"], "--reference-image", images["mpi-infer"]["tag"],
                 "--workers", "2", "--images", "24")
    assert r["returncode"] == 0, r
    assert r["loader"] == "ecvl" and r["engine"] == "onnx"  # auto's picks in the DeepHealth image
    assert r["hosts"] == ["rehearsal-worker-0", "rehearsal-worker-1"]
    assert r["equal_to_local_run"] is True, r


def test_indexed_job_rehearsal_with_a_killed_part_equals_a_local_run(images):
    """The Indexed Job in containers, as rendered: three part pods and the merge pod start together; part 1's
    container is killed mid-run and started anew (the Job's retry of that index, --resume); the merge waits for
    every part and equals one local process image for image."""
    r = rehearse("--image", images["mpi-infer"]["tag"], "--kind", "indexed-job", "--workers", "3", "--images", "48",
                 "--kill-worker", "1")
    assert r["returncode"] == 0, r
    assert r["part_exit_codes"][1] == 137 and r["retried_part_exit_code"] == 0, r
    assert [p["attempts"] for p in r["parts_summary"]] == [1, 2, 1]
    assert r["images"]["selected"] == 48 and r["equal_to_local_run"] is True, r


def test_an_evicted_job_stops_as_a_retry_and_the_retry_resumes(images):
    """Every container of the job is stopped at once, as a node drain or a preemption stops its pods (SIGTERM, a
    grace period): the launcher ends with a retryable code (no rank reports a crash), new workers start and the
    Job's retry (a new launcher, --resume) completes with the local run's results."""
    r = rehearse("--image", images["mpi-infer"]["tag"], "--workers", "3", "--images", "96", "--evict-launcher")
    assert r["killed"] == "evict" and r["first_attempt"]["returncode"] in (200, 202), r
    assert r["returncode"] == 0 and r["restarts"] == 1, r
    assert r["equal_to_local_run"] is True, r


def test_gpu_image_carries_cuda_and_refuses_a_missing_device_clearly():
    """The GPU image (scripts/build_images.sh gpu: a few GB, so built on demand, not in CI): its ONNX Runtime has
    the CUDA provider, and `run --gpu` where no GPU is (this machine) ends with the clear exit 12, never a silent CPU
    run. Skips where the image has not been built."""
    tag = "localhost/mpi-infer-gpu:latest"
    if os.geteuid() != 0 or not shutil.which("podman") or subprocess.run(
            ["podman", "image", "exists", tag]).returncode != 0:
        pytest.skip(f"{tag} is not built here (sudo bash scripts/build_images.sh gpu; a few GB of CUDA wheels)")
    providers = subprocess.run(["podman", "run", "--rm", tag, "python", "-c", "import onnxruntime as o; "
                                "print(o.get_available_providers())"], capture_output=True, text=True, timeout=120)
    assert "CUDAExecutionProvider" in providers.stdout, providers
    proc = subprocess.run(["podman", "run", "--rm", "--network=none", tag, "sh", "-c",
                           "mpi_infer synth /tmp/d --n 4 >/dev/null && mpi_infer run --dataset /tmp/d/dataset.yml "
                           "--model demo-onnx --out /tmp/o --gpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 12 and "--gpu" in proc.stderr, proc.stderr[-2000:]
