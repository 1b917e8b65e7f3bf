"""A run that never hangs: a rank stopped with SIGSTOP (rank 1, or rank 0) or blocked in a read that never
returns (a FUSE file we mount) ends the job within --stall-timeout plus a few seconds, naming the rank, with
the retryable exit code 201, under a real mpirun."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HELPERS, mpirun

from mpi_infer.mpi.watchdog import EXIT_STALLED, Watchdog

pytestmark = pytest.mark.mpi


def run_stopped(dataset: str, out: str, n: int, fault: str, timeout: float = 3
                ) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    proc = mpirun(n, "run", "--dataset", dataset, "--model", "demo-onnx", "--out", out, "--split", "all", "--quiet",
                  "--batch-size", "2", "--stall-timeout", str(timeout), env={"MPI_INFER_FAULT": fault}, timeout=90)
    return time.monotonic() - t0, proc


@pytest.mark.parametrize("n, stopped, says", [
    (2, 1, "sent nothing for"), (3, 1, "sent nothing for"),  # rank 0 names a silent worker
    (3, 0, "sent no heartbeat"), (4, 0, "sent no heartbeat"),  # the others name a silent rank 0
])
def test_a_stopped_rank_is_named_and_the_job_ends(synth_small, tmp_path, n, stopped, says):
    took, proc = run_stopped(synth_small, str(tmp_path / "o"), n, f"stop:rank={stopped}:after=2")
    assert proc.returncode == EXIT_STALLED, proc.stderr[-2000:]
    assert f"rank {stopped} (host " in proc.stderr and says in proc.stderr and "stopped or blocked" in proc.stderr
    assert took < 3 + 15, took


def test_finished_work_survives_a_stall_and_resume_completes_it(synth_small, tmp_path):
    out = str(tmp_path / "o")
    _, proc = run_stopped(synth_small, out, 2, "stop:rank=1:after=2")
    assert proc.returncode == EXIT_STALLED
    again = mpirun(2, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", out, "--split", "all",
                   "--quiet", "--resume")
    assert again.returncode == 0, again.stderr


@pytest.fixture()
def stuck_file(tmp_path, synth_small):
    """A mounted FUSE file whose reads never return."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("needs root and /dev/fuse to mount a FUSE filesystem")
    try:
        import fuse  # noqa: F401 - fusepy, with libfuse2
    except (ImportError, OSError) as exc:
        pytest.skip(f"fusepy with libfuse2 is needed (pip install fusepy; apt-get install libfuse2): {exc}")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    source = next((Path(synth_small).parent / "images_segmentation").glob("*.jpg"))
    server = subprocess.Popen([sys.executable, str(HELPERS / "stuck_fuse.py"), str(mnt), str(source)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for _ in range(100):
        if (mnt / "stuck.jpg").exists():
            break
        time.sleep(0.05)
    else:
        server.kill()
        pytest.skip(f"the FUSE mount did not come up: {server.stderr.read1(2000) if server.stderr else ''}")
    yield mnt / "stuck.jpg"
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    server.kill()
    server.wait(timeout=10)


def test_a_read_that_never_returns_ends_the_job_with_the_stacks(synth_small, tmp_path, stuck_file):
    root = Path(synth_small).parent
    yml = tmp_path / "d.yml"
    images = sorted((root / "images_segmentation").glob("*.jpg"))[:3]
    yml.write_text("name: stuck\nimages:\n" + "".join(f"  - {p}\n" for p in images) + f"  - {stuck_file}\n")
    t0 = time.monotonic()
    proc = mpirun(1, "run", "--dataset", str(yml), "--model", "demo-onnx", "--out", str(tmp_path / "o"),
                  "--split", "all", "--quiet", "--batch-size", "2", "--stall-timeout", "3", timeout=90)
    took = time.monotonic() - t0
    assert proc.returncode == EXIT_STALLED, proc.stderr[-2000:]
    assert "stalled: no batch finished for" in proc.stderr and "stuck.jpg" in proc.stderr  # the image in flight
    assert "Thread 0x" in proc.stderr  # every thread's stack (faulthandler), the blocked loader's among them
    assert took < 3 + 15, took


def test_the_watchdog_fires_only_while_armed():
    fired: list[int] = []
    dog = Watchdog(0, 0.2, fired.append, poll_s=0.02)
    dog.arm(False)
    time.sleep(0.4)
    assert not fired  # waiting for the others is not a stall
    dog.arm()
    time.sleep(0.5)
    assert fired == [EXIT_STALLED]
    dog.stop()


def endless_loop_model(path: str) -> str:
    """An ONNX model whose graph runs a Loop of 10^12 steps: loading succeeds, the start-up probe never ends."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])])
    inits = [numpy_helper.from_array(np.array(10 ** 12, np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "go"), numpy_helper.from_array(np.array(0.5, np.float32), "v0")]
    nodes = [helper.make_node("Loop", ["trips", "go", "v0"], ["v"], body=body),
             helper.make_node("ReduceMean", ["input"], ["grey"], axes=[1], keepdims=1),
             helper.make_node("Mul", ["grey", "v"], ["output"])]
    graph = helper.make_graph(nodes, "endless", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                               ["batch", 3, 192, 192])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_model_that_never_finishes_its_probe_ends_the_job_naming_the_phase(synth_small, tmp_path):
    """The watchdog covers model loading and the start-up probe, not only inference."""
    model = endless_loop_model(str(tmp_path / "endless.onnx"))
    t0 = time.monotonic()
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", model, "--out", str(tmp_path / "o"),
                  "--stall-timeout", "4", timeout=90)
    assert proc.returncode == EXIT_STALLED, proc.stderr[-2000:]
    assert "stalled: still opening the model (loading it and the start-up probe) after" in proc.stderr
    assert time.monotonic() - t0 < 4 + 25
