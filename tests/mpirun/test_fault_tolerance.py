"""A lost rank does not end the run: under ``mpirun --with-ft ulfm`` with ``--fault-tolerant``, a rank other than 0
killed mid-run (a real SIGKILL) leaves the survivors to run its unfinished images; the job exits 0 with the same
per-image results as a clean run. A lost rank 0 ends every other rank at once with the retryable code, and
``--resume`` completes the work. Real mpirun, real processes, no mocks."""

from __future__ import annotations

import json
import os
import random
import time

import pytest
from conftest import mpirun, read_rows, read_summary

from mpi_infer.data.synth import SynthSpec, make_dataset
from mpi_infer.errors import EXIT_CONFIG, EXIT_RETRYABLE
from mpi_infer.outputs.ledger import ledger_path, read_ledger_file

pytestmark = pytest.mark.mpi
ULFM = ("--with-ft", "ulfm")


@pytest.fixture(scope="module")
def synth40(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_dataset(str(tmp_path_factory.mktemp("synth40")), SynthSpec(n=40, seed=11))


def run(dataset: str, out: str, n: int, *extra: str, fault: str = "", ft: bool = True):
    args = ["run", "--dataset", dataset, "--model", "demo-onnx", "--out", out, "--split", "all", "--quiet",
            "--batch-size", "2", *extra]
    return mpirun(n, *args, *(["--fault-tolerant"] if ft else []), env={"MPI_INFER_FAULT": fault} if fault else {},
                  flags=ULFM if ft else (), timeout=120)


@pytest.fixture(scope="module")
def clean(synth40: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    out = str(tmp_path_factory.mktemp("clean") / "o")
    assert run(synth40, out, 1, ft=False).returncode == 0
    return read_rows(out)


def same_results(got: list[dict[str, str]], clean: list[dict[str, str]]) -> None:
    """Every column but ``rank`` (which says who ran the image) equals the clean run's, row for row."""
    assert [r["index"] for r in got] == [r["index"] for r in clean]
    for a, b in zip(got, clean):
        assert {k: v for k, v in a.items() if k != "rank"} == {k: v for k, v in b.items() if k != "rank"}


@pytest.mark.parametrize("n, killed, schedule", [
    (2, "1", "static"), (3, "1", "static"), (3, "2", "dynamic"), (4, "1+2", "static"), (4, "3", "dynamic"),
])
def test_survivors_finish_a_killed_ranks_images(synth40, clean, tmp_path, n, killed, schedule):
    out = str(tmp_path / "o")
    lost = [int(r) for r in killed.split("+")]
    fault = ";".join(f"kill:rank={r}:after={2 + 2 * k}" for k, r in enumerate(lost))
    proc = run(synth40, out, n, "--schedule", schedule, fault=fault)
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_results(read_rows(out), clean)
    ft = read_summary(out)["fault_tolerance"]
    assert [x["rank"] for x in ft["lost_ranks"]] == lost
    # the images re-run are exactly the lost ranks' planned images missing from their ledgers
    ledgered = {r["index"] for k in lost for r in read_ledger_file(ledger_path(out, 0, k))}
    rows = read_rows(out)
    by_lost = {int(r["index"]) for r in rows if int(r["rank"]) in lost}
    assert by_lost == ledgered
    assert ft["rerun_images"] == len(ft["rerun_indices"]) > 0
    assert not set(ft["rerun_indices"]) & ledgered
    assert all(int(r["rank"]) not in lost for r in rows if int(r["index"]) in set(ft["rerun_indices"]))
    assert sum(x["images_done"] for x in ft["lost_ranks"]) == len(ledgered)
    assert "was lost after" in proc.stderr


def test_a_lost_rank_0_ends_the_others_with_the_retryable_code_and_resume_completes(synth40, clean, tmp_path):
    out = str(tmp_path / "o")
    t0 = time.monotonic()
    proc = run(synth40, out, 3, fault="kill:rank=0:after=4")
    assert proc.returncode == EXIT_RETRYABLE, proc.stderr[-3000:]
    assert time.monotonic() - t0 < 30
    assert "rank 0 (host " in proc.stderr and "was lost mid-run" in proc.stderr
    again = run(synth40, out, 2, "--resume", ft=False)
    assert again.returncode == 0, again.stderr[-3000:]
    same_results(read_rows(out), clean)


def test_without_the_flag_a_lost_rank_ends_the_job_naming_it(synth40, tmp_path):
    out = str(tmp_path / "o")
    proc = mpirun(3, "run", "--dataset", synth40, "--model", "demo-onnx", "--out", out, "--split", "all",
                  "--quiet", "--batch-size", "2", env={"MPI_INFER_FAULT": "kill:rank=1:after=2"}, flags=ULFM)
    assert proc.returncode == EXIT_RETRYABLE, proc.stderr[-3000:]
    assert "rank 1 (host " in proc.stderr and "--fault-tolerant" in proc.stderr


def test_the_flag_is_refused_without_ulfm(synth40, tmp_path):
    out = str(tmp_path / "o")
    proc = run(synth40, out, 2)  # with ULFM: fine
    assert proc.returncode == 0, proc.stderr[-3000:]
    out2 = str(tmp_path / "o2")
    proc = mpirun(2, "run", "--dataset", synth40, "--model", "demo-onnx", "--out", out2, "--split", "all",
                  "--fault-tolerant")
    assert proc.returncode == EXIT_CONFIG
    assert "mpirun --with-ft ulfm" in proc.stderr and "OMPI_MCA_mpi_ft_enable" in proc.stderr
    assert not os.path.exists(out2)


def test_chaos_random_kills_change_nothing(synth40, clean, tmp_path):
    """Seeded random kills (one or two workers, at random points, either schedule): no restart, same results."""
    rnd = random.Random(2026)
    for trial in range(3):
        n = rnd.choice((3, 4))
        lost = rnd.sample(range(1, n), rnd.choice((1, 2)) if n == 4 else 1)
        fault = ";".join(f"kill:rank={r}:after={rnd.randrange(0, 8)}" for r in lost)
        out = str(tmp_path / f"o{trial}")
        proc = run(synth40, out, n, "--schedule", rnd.choice(("static", "dynamic")), fault=fault)
        assert proc.returncode == 0, (fault, proc.stderr[-3000:])
        same_results(read_rows(out), clean)
        with open(os.path.join(out, "summary.json")) as fh:
            assert sorted(x["rank"] for x in json.load(fh)["fault_tolerance"]["lost_ranks"]) == sorted(lost)


@pytest.mark.parametrize("library, shrink, env, says", [
    ("MPICH Version: 4.2.0", True, {"OMPI_MCA_mpi_ft_enable": "1"}, "needs Open MPI 5"),
    ("Open MPI v4.1.6, package", True, {"OMPI_MCA_mpi_ft_enable": "1"}, "needs Open MPI 5"),
    ("Open MPI v5.0.11, package", False, {"OMPI_MCA_mpi_ft_enable": "1"}, "mpi4py >= 4.0"),
    ("Open MPI v5.0.11, package", True, {}, "mpirun --with-ft ulfm"),
    ("Open MPI v5.0.11, package", True, {"OMPI_MCA_mpi_ft_enable": "1", "OMPI_MCA_pml": "ucx"}, "ob1"),
])
def test_fault_tolerance_preconditions_name_what_is_missing(library, shrink, env, says):
    from mpi_infer.errors import ConfigError
    from mpi_infer.mpi.world import check_fault_tolerance

    with pytest.raises(ConfigError, match=says.replace(".", r"\.")):
        check_fault_tolerance(library, shrink, env)
    check_fault_tolerance("Open MPI v10.0.0", True, {"OMPI_MCA_mpi_ft_enable": "true"})  # a later major is fine


def test_pending_keeps_order_splits_and_targets():
    from mpi_infer.data.worklist import WorkList

    a = WorkList("/p/", [0, 1, 2], [("training", 2), ("test", 1)], ["a", "b", "c"], ["ma", "mb", "mc"], [0, 1, 2])
    b = WorkList("/p/", [7, 8], [("test", 2)], ["h", "i"], [None, "mi"], [1, None])
    got = WorkList.pending([a, b], {1, 8})
    assert got.indices == [0, 2, 7] and got.runs == [("training", 1), ("test", 2)]
    assert got.locations == ["a", "c", "h"] and got.labels == ["ma", "mc", None] and got.targets == [0, 2, 1]
    assert [it.index for it in got] == [0, 2, 7]
    assert len(WorkList.pending([], set())) == 0


def test_supervise_turns_an_exit_0_without_a_finished_run_into_200(tmp_path, capsys):
    from mpi_infer.launch.supervise import run_out_dir, supervise

    out = str(tmp_path / "o")
    assert run_out_dir(["mpirun", "python", "-m", "mpi_infer", "run", "--out", out]) == out
    assert run_out_dir(["x", f"--out={out}"]) == out
    assert supervise(["sh", "-c", "exit 0", "--out", out]) == EXIT_RETRYABLE  # nothing was written
    assert "did not finish" in capsys.readouterr().err
    assert supervise(["sh", "-c", "exit 11", "--out", out]) == 11  # our own codes pass through
    assert supervise(["sh", "-c", "exit 201", "--out", out]) == 201
    assert supervise(["sh", "-c", "exit 255", "--out", out]) == EXIT_RETRYABLE  # mpirun's runtime failed
    assert "exited 255, which is none of mpi_infer's codes" in capsys.readouterr().err
    assert supervise(["sh", "-c", "kill -KILL $$", "--out", out]) == EXIT_RETRYABLE  # 137: killed
    os.makedirs(os.path.join(out, "ledger"))
    open(os.path.join(out, "ledger", "attempt-000-rank-00000.jsonl"), "w").close()  # attempt 0 ran before
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump({"attempt": 0}, fh)
    assert supervise(["sh", "-c", "exit 0", "--out", out]) == EXIT_RETRYABLE  # an old summary is not this attempt's
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump({"attempt": 1}, fh)
    assert supervise(["sh", "-c", "exit 0", "--out", out]) == 0


def test_a_permanent_exit_stays_permanent_across_the_launcher_jobs_retries(tmp_path, capsys, monkeypatch):
    """No MPI Operator accepts restartPolicy ExitCode, so the launcher Job retries every failure: supervise
    records a permanent exit under the Job's uid, and a retry of that Job exits with it at once, running nothing;
    a retryable exit, mpirun's own 1, or a new Job (another uid) runs the command."""
    from mpi_infer.launch.supervise import supervise
    from mpi_infer.outputs.folder import FINAL_FILE

    out = str(tmp_path / "o")
    os.makedirs(out)
    ran = tmp_path / "ran"

    def attempt(code: int) -> int:
        ran.unlink(missing_ok=True)
        return supervise(["sh", "-c", f"touch {ran}; exit {code}", "--out", out])

    monkeypatch.setenv("MPI_INFER_LAUNCH_ID", "uid-1")
    assert attempt(200) == 200 and attempt(1) == 1 and not os.path.exists(os.path.join(out, FINAL_FILE))
    assert attempt(10) == 10 and ran.exists()  # a dataset error: recorded
    assert attempt(0) == 10 and not ran.exists()  # the retry exits 10 at once, running nothing
    assert "already ended with exit 10 (dataset error (permanent))" in capsys.readouterr().err
    monkeypatch.setenv("MPI_INFER_LAUNCH_ID", "uid-2")  # the fixed job, submitted anew
    assert attempt(3) == 3 and ran.exists()
    monkeypatch.delenv("MPI_INFER_LAUNCH_ID")  # outside Kubernetes: nothing recorded, nothing skipped
    assert attempt(12) == 12 and ran.exists()
    from mpi_infer.outputs.folder import remove_outputs

    remove_outputs(out)  # --overwrite removes it with the rest of our files
    assert not os.path.exists(os.path.join(out, FINAL_FILE))


def test_supervise_under_real_mpirun_passes_a_finished_run(synth40, tmp_path):
    import subprocess
    import sys

    from conftest import MPI_ENV, mpirun_path

    out = str(tmp_path / "o")
    cmd = [sys.executable, "-m", "mpi_infer", "supervise", "--", mpirun_path(), "-n", "2", sys.executable, "-m",
           "mpi_infer", "run", "--dataset", synth40, "--model", "demo-onnx", "--out", out, "--split", "all", "--quiet"]
    proc = subprocess.run(cmd, env={**os.environ, **MPI_ENV}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_summary(out)["images"]["scored"] == 40


def test_recovery_reads_the_lost_ranks_ledger_and_splits_the_rest(tmp_path):
    """Plain bookkeeping, no MPI: done = every record of the image in the ledger (a torn line is not), the rest
    queued, handed out contiguously to the survivors, and a survivor's share is its own from then on."""
    from mpi_infer.data.worklist import WorkList
    from mpi_infer.mpi.recovery import Recovery
    from mpi_infer.outputs.ledger import Ledger

    out = str(tmp_path)
    shard = WorkList("/d/", list(range(10, 20)), [("test", 10)], [f"{i}.jpg" for i in range(10, 20)],
                     [None] * 10, None)
    book = Recovery(out, 0, ["h0", "h1", "h2"], outputs_per_image=2)
    book.assign(1, shard)
    ledger = Ledger(out, 0, 1)
    ledger.append([{"index": i, "status": "ok", "model": m} for i in (10, 11, 12) for m in ("a", "b")])
    ledger.append([{"index": 13, "status": "ok", "model": "a"}])  # its "b" record never made it
    ledger.close()
    with open(ledger_path(out, 0, 1), "a") as fh:
        fh.write('{"index": 14, "status"')  # torn
    info = book.lose(1)
    assert (info["images_done"], info["images_rerun"], info["host"]) == (3, 7, "h1")
    assert sorted({r["index"] for r in book.lost_records}) == [10, 11, 12] and len(book.lost_records) == 6
    parts = book.hand_out([0, 2])
    assert [p.indices for p in parts] == [[13, 14, 15, 16], [17, 18, 19]]
    assert book.queue == [] and book.rerun == list(range(13, 20))
    book.lose(2)  # rank 2 lost before running its share: all of it comes back
    assert WorkList.pending(book.queue, set()).indices == [17, 18, 19]
    s = book.summary(True)
    assert [x["rank"] for x in s["lost_ranks"]] == [1, 2] and s["recovery_rounds"] == 1


@pytest.mark.parametrize("guarded", [False, True])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stopped_job_is_a_retry_and_resume_equals_a_clean_run(synth40, clean, tmp_path, sig, guarded):
    """An eviction or a preemption (SIGTERM to the launcher, then to every rank) or Ctrl-C: rank 0 says so, the
    job ends with the retryable exit 202 (under supervise: mpirun itself exits 1 once signalled), the ledger
    holds what finished, and --resume completes it equal to a clean run."""
    import signal
    import subprocess
    import sys

    from conftest import MPI_ENV, mpirun_path

    from mpi_infer.errors import EXIT_INTERRUPTED

    out = tmp_path / "o"
    cmd = [mpirun_path(), "-n", "2", sys.executable, "-m", "mpi_infer", "run", "--dataset", synth40, "--model",
           "demo-onnx", "--out", str(out), "--split", "all", "--batch-size", "2"]
    if guarded:
        cmd = [sys.executable, "-m", "mpi_infer", "supervise", "--", *cmd]
    proc = subprocess.Popen(cmd, env={**os.environ, **MPI_ENV, "MPI_INFER_FAULT": "slow:factor=40"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ledger = out / "ledger" / "attempt-000-rank-00000.jsonl"
    end = time.monotonic() + 60
    while time.monotonic() < end and not (ledger.exists() and ledger.stat().st_size > 0):
        time.sleep(0.05)
    proc.send_signal(getattr(signal, sig))
    _, stderr = proc.communicate(timeout=60)
    if guarded:  # mpirun's own code is 1 once signalled: the launcher's comes from supervise
        assert proc.returncode == EXIT_INTERRUPTED, stderr[-2000:]
        assert f"supervise: interrupted by {sig}" in stderr
    log = (out / "run.log").read_text()  # rank 0's words: mpirun may drop its last output once signalled
    # mpirun passes a SIGINT on to the ranks as SIGTERM
    assert "mpi_infer: interrupted by SIG" in log and "; finished images are in" in log
    assert "exit 202: interrupted" in log
    assert not (out / "summary.json").exists()
    again = run(synth40, str(out), 2, "--resume", ft=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert read_summary(str(out))["resumed_images"] > 0
    same_results(read_rows(str(out)), clean)
