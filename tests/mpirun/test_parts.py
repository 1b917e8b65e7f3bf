"""``run --part K/N`` and ``merge``: N single processes, no MPI, give the same per-image scores and summary as one
``mpirun -n N`` run; the merge names what has not finished (exit 200), and a part resumes alone."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import mpirun, read_rows, read_summary

pytestmark = pytest.mark.mpi


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpi_infer", *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def run_part(dataset: str, out: str, k: int, n: int, *extra: str, env: dict[str, str] | None = None):
    return cli("run", "--dataset", dataset, "--model", "demo", "--out", out, "--split", "all", "--part", f"{k}/{n}",
               "--batch-size", "2", "--quiet", *extra, env=env)


def same_results(a: str, b: str) -> None:
    assert read_rows(a) == read_rows(b)  # every column, the rank (= the part) included
    sa, sb = read_summary(a), read_summary(b)
    for key in ("images", "metrics", "per_split", "statistics", "profile", "model_sha256", "dataset_sha256",
                "sharding", "exit_code"):
        assert sa[key] == sb[key], key


def test_parts_then_merge_equal_one_mpirun_run_image_for_image(synth_small, tmp_path):
    mpi, parts = str(tmp_path / "mpi"), str(tmp_path / "parts")
    proc = mpirun(3, "run", "--dataset", synth_small, "--model", "demo", "--out", mpi, "--split", "all",
                  "--batch-size", "2", "--save-masks", "--quiet")
    assert proc.returncode == 0, proc.stderr
    for k in (2, 0, 1):  # any order, one process each, no MPI launcher
        proc = run_part(synth_small, parts, k, 3, "--save-masks")
        assert proc.returncode == 0, proc.stderr
    proc = cli("merge", parts, "--report")
    assert proc.returncode == 0, proc.stderr
    assert "merged 3 part(s)" in proc.stdout
    same_results(mpi, parts)
    assert sorted(os.listdir(os.path.join(mpi, "masks"))) == sorted(os.listdir(os.path.join(parts, "masks")))
    summary = read_summary(parts)
    assert summary["world_size"] == 3 and summary["parts"]["n"] == 3
    assert [p["images"] for p in summary["parts"]["per_part"]] == [
        s["images"] for s in read_summary(mpi)["timings"]["per_rank"]]
    assert os.path.isfile(os.path.join(parts, "report.html"))


def test_merge_names_unfinished_parts_and_a_part_resumes_alone(synth_small, tmp_path):
    out = str(tmp_path / "out")
    assert run_part(synth_small, out, 0, 3).returncode == 0
    killed = run_part(synth_small, out, 1, 3, env={"MPI_INFER_FAULT": "kill:rank=1:after=2"})
    assert killed.returncode == -signal.SIGKILL
    proc = cli("merge", out)
    assert proc.returncode == 200, proc.stderr  # retryable: the parts can still finish
    assert re.search(r"part 1/3: (\d+) of \1 image\(s\) not finished;", proc.stderr) is None  # 2 were done
    assert re.search(r"part 1/3: \d+ of \d+ image\(s\) not finished;", proc.stderr)
    assert re.search(r"part 2/3: (\d+) of \1 image\(s\) not finished \(never started\)", proc.stderr)
    assert "--part K/3 --resume" in proc.stderr
    assert not os.path.exists(os.path.join(out, "summary.json"))  # nothing half-merged
    resumed = run_part(synth_small, out, 1, 3, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    ledgers = os.listdir(os.path.join(out, "parts", "part-001-of-003", "ledger"))
    assert len(ledgers) == 2  # the killed attempt's records were kept; the resume ran only the rest
    assert run_part(synth_small, out, 2, 3).returncode == 0
    assert cli("merge", out, "--quiet").returncode == 0
    whole = str(tmp_path / "whole")
    assert mpirun(3, "run", "--dataset", synth_small, "--model", "demo", "--out", whole, "--split", "all",
                  "--batch-size", "2", "--quiet").returncode == 0
    same_results(whole, out)


def test_parts_must_agree(synth_small, tmp_path):
    out = str(tmp_path / "out")
    assert run_part(synth_small, out, 0, 2).returncode == 0
    other = run_part(synth_small, out, 0, 3)
    assert other.returncode == 12 and "2-way split" in other.stderr  # another N cannot join the folder
    assert run_part(synth_small, out, 1, 2, "--threshold", "0.4").returncode == 0
    proc = cli("merge", out)
    assert proc.returncode == 12 and "part 1/2 ran with other options than part 0/2" in proc.stderr
    assert cli("merge", str(tmp_path / "nothing")).returncode == 12
    bad = cli("run", "--dataset", synth_small, "--model", "demo", "--out", out, "--part", "3/3")
    assert bad.returncode == 2 and "0 <= K < N" in bad.stderr


def test_a_part_stopped_by_sigterm_exits_202_and_resumes(synth_small, tmp_path):
    out = str(tmp_path / "out")
    proc = subprocess.Popen([sys.executable, "-m", "mpi_infer", "run", "--dataset", synth_small, "--model", "demo",
                             "--out", out, "--split", "all", "--part", "0/1", "--batch-size", "1", "--quiet"],
                            env={**os.environ, "MPI_INFER_FAULT": "slow:rank=0:factor=40"},
                            stderr=subprocess.PIPE, text=True)
    ledger = os.path.join(out, "parts", "part-000-of-001", "ledger")
    deadline = time.time() + 60
    while time.time() < deadline and not (os.path.isdir(ledger) and any(
            os.path.getsize(os.path.join(ledger, f)) for f in os.listdir(ledger))):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 202, err
    assert "rerun the part with --resume" in err
    assert run_part(synth_small, out, 0, 1, "--resume").returncode == 0
    assert cli("merge", out, "--quiet").returncode == 0
    assert read_summary(out)["images"]["scored"] == 13
    folder = Path(out) / "parts" / "part-000-of-001"
    log = (folder / "run.log").read_text()
    assert "exit 202" in log and log.count("=== ") == 2
    part = json.loads((folder / "part.json").read_text())
    assert part["part"] == [0, 1] and len(part["plan_sha256"]) == 64
