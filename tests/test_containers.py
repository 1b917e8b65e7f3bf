"""The container images, built and run: an MPIJob rehearsed in real containers (scripts/container_rehearsal.py).

Where podman works and we are root, the images are built by scripts/build_images.sh (cached by content hash;
.ci/run builds them first) and three rehearsals run: the CPU image on 3 workers (results equal a local run of
the same image, image for image), the same command without --hostfile (exit 13), and the ECVL image on 2
workers (auto picks the ECVL loader; results equal the CPU image's local run). Elsewhere they skip, saying why;
with MPI_INFER_REQUIRE_CONTAINERS=1 (.ci/run sets it where podman is installed) a skip is a failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIRE = "MPI_INFER_REQUIRE_CONTAINERS"
pytestmark = [pytest.mark.slow]


def skip(why: str) -> None:
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{REQUIRE}=1 but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def images() -> dict[str, dict]:
    if os.geteuid() != 0 or not shutil.which("podman"):
        skip("needs root and podman (apt-get install podman buildah debootstrap runc uidmap)")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_images.sh"), "all"], capture_output=True,
                          text=True, cwd=ROOT, timeout=3000)
    if proc.returncode == 77:
        skip(f"images cannot be built here: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    built = {r["image"]: r for r in map(json.loads, proc.stdout.splitlines()) if r.get("figure") == "image"}
    assert set(built) == {"mpi-infer", "mpi-infer-ecvl"}
    return built


def rehearse(*args: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "container_rehearsal.py"), *args],
                          capture_output=True, text=True, timeout=900)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    result = lines[-1]
    if "skipped" in result:
        skip(result["skipped"])
    return result


def test_cpu_image_is_small_and_self_checked(images):
    assert images["mpi-infer"]["size_mb"] <= 700, images
    out = subprocess.run(["podman", "run", "--rm", images["mpi-infer"]["tag"], "sh", "/usr/local/bin/check_image.sh"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Open MPI" in out.stdout, out.stderr
    who = subprocess.run(["podman", "run", "--rm", images["mpi-infer"]["tag"], "id", "-u"], capture_output=True,
                         text=True, timeout=120)
    assert who.stdout.strip() == "1000"


def test_mpijob_rehearsal_on_three_workers_equals_a_local_run(images):
    r = rehearse("--image", images["mpi-infer"]["tag"], "--workers", "3", "--images", "24")
    assert r["returncode"] == 0, r
    assert r["hosts"] == [f"rehearsal-worker-{k}" for k in range(3)] and r["world_size"] == 3
    assert r["images"]["selected"] == 24 and r["images"]["failed"] == 0
    assert r["equal_to_local_run"] is True, r


def test_without_hostfile_the_run_exits_13(images):
    r = rehearse("--image", images["mpi-infer"]["tag"], "--workers", "2", "--images", "6", "--drop-hostfile")
    assert r["returncode"] == 13, r


def test_ecvl_image_on_two_workers_loads_with_ecvl_and_equals_the_cpu_image(images):
    r = rehearse("--image", images["mpi-infer-ecvl"]["tag"], "--reference-image", images["mpi-infer"]["tag"],
                 "--workers", "2", "--images", "24")
    assert r["returncode"] == 0, r
    assert r["loader"] == "ecvl" and r["engine"] == "onnx"  # auto's picks in the DeepHealth image
    assert r["hosts"] == ["rehearsal-worker-0", "rehearsal-worker-1"]
    assert r["equal_to_local_run"] is True, r
