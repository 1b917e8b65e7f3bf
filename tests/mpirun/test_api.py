"""The Python API (mpi_infer.run, mpi_infer.load_results), run --config and @args files, and OUT/run.log: one
entry under all of them, so each gives the command line's exact per-image scores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import MPI_ENV, mpirun, mpirun_path, read_rows, read_summary

from mpi_infer.data.dataset import load_dataset

pytestmark = pytest.mark.mpi
API_SCRIPT = textwrap.dedent("""
    import json, sys
    import mpi_infer
    from mpi4py import MPI

    dataset, out = sys.argv[1], sys.argv[2]
    summary = mpi_infer.run(dataset=dataset, models={"a": "demo", "b": "demo-onnx"}, out=out, comm=MPI.COMM_WORLD,
                            split="all", batch_size=4, quiet=True)
    loaded, rows = mpi_infer.load_results(out)
    assert loaded == summary and len(rows) == 2 * summary["images"]["selected"]
    print(json.dumps({"rank": MPI.COMM_WORLD.rank, "dice": summary["models"]["a"]["metrics"]["mean_dice"]}))
""")


def scores(out: str) -> list[tuple[str, str, str]]:
    return [(r["index"], r.get("model", ""), r["dice"]) for r in read_rows(out)]


@pytest.mark.parametrize("n", [1, 2])
def test_python_api_under_mpirun_equals_the_command_line(n, synth_small, tmp_path):
    script = tmp_path / "api.py"
    script.write_text(API_SCRIPT)
    cmd = [mpirun_path(), "-n", str(n), sys.executable, str(script), synth_small, str(tmp_path / "api")]
    proc = subprocess.run(cmd, env={**os.environ, **MPI_ENV}, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    said = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(s["rank"] for s in said) == list(range(n)) and len({s["dice"] for s in said}) == 1  # every rank
    cli = mpirun(2, "run", "--dataset", synth_small, "--model", "a=demo", "--model", "b=demo-onnx", "--out",
                 str(tmp_path / "cli"), "--split", "all", "--batch-size", "4")
    assert cli.returncode == 0, cli.stderr
    assert scores(str(tmp_path / "api")) == scores(str(tmp_path / "cli"))


def test_python_api_in_one_process_raises_on_bad_options_and_failed_runs(synth_small, tmp_path):
    code = textwrap.dedent(f"""
        import mpi_infer
        from mpi_infer.api import RunFailed
        from mpi_infer.errors import UsageError
        for bad in ({{"batch_sizze": 4}}, {{"batch_size": 0}}, {{"boundary_metrics": "yes"}}):
            try:
                mpi_infer.run({synth_small!r}, "demo", {str(tmp_path / "x")!r}, **bad)
            except UsageError as exc:
                print("usage", exc.exit_code, str(exc)[:60])
        try:
            mpi_infer.run({str(tmp_path / "missing.yml")!r}, "demo", {str(tmp_path / "y")!r})
        except RunFailed as exc:
            print("failed", exc.exit_code)
    """)
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **MPI_ENV}, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines] == [["usage", "2"]] * 3 + [["failed", "10"]], lines
    assert "unknown option 'batch_sizze'" in lines[0]
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")


def test_config_file_and_args_file_give_the_command_lines_run(synth_small, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"dataset: {synth_small}\nmodel: {{a: demo, b: demo-onnx}}\nsplit: [all]\nbatch-size: 4\n"
                      f"boundary_metrics: true\nout: {tmp_path / 'ignored'}\n")
    args = tmp_path / "args.txt"
    args.write_text(f"run\n--config\n{config}\n# the command line wins over the file\n--out\n{tmp_path / 'cfg'}\n"
                    f"--batch-size\n2\n")
    proc = mpirun(2, f"@{args}")
    assert proc.returncode == 0, proc.stderr
    cli = mpirun(2, "run", "--dataset", synth_small, "--model", "a=demo", "--model", "b=demo-onnx", "--out",
                 str(tmp_path / "cli"), "--split", "all", "--batch-size", "2", "--boundary-metrics")
    assert cli.returncode == 0, cli.stderr
    assert not os.path.exists(tmp_path / "ignored")
    assert scores(str(tmp_path / "cfg")) == scores(str(tmp_path / "cli"))
    assert read_summary(str(tmp_path / "cfg"))["batch_size"] == 2
    with open(tmp_path / "cfg" / "run.json") as fh:
        recorded = json.load(fh)["config"]
    assert recorded["file"] == str(config) and recorded["options"]["batch-size"] == 4


@pytest.mark.parametrize("text,says", [
    ("batch-sise: 4\n", "unknown option 'batch-sise'"),
    ("- a\n- b\n", "expected a mapping of run options"),
    ("save-masks: maybe\n", "expected true or false"),
    ("dataset: [\n", "is not valid YAML"),
])
def test_a_bad_config_file_names_the_file_and_the_key(text, says, synth_small, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    proc = mpirun(1, "run", "--config", str(config), "--dataset", synth_small, "--model", "demo", "--out",
                  str(tmp_path / "o"))
    assert proc.returncode == 2 and says in proc.stderr and str(config) in proc.stderr, proc.stderr
    assert not os.path.exists(tmp_path / "o")


def test_run_log_keeps_what_rank_0_said_per_attempt(synth_small, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(os.path.dirname(synth_small), root)
    image = load_dataset(str(root / "dataset.yml")).sample(2).locations[0]
    with open(image, "rb") as fh:
        good = fh.read()
    with open(image, "wb") as fh:
        fh.write(b"\xff\xd8 truncated jpeg")  # undecodable: image #2 fails, the run exits 3
    out, dataset = str(tmp_path / "o"), str(root / "dataset.yml")
    first = mpirun(2, "run", "--dataset", dataset, "--model", "demo", "--out", out, "--split", "all")
    assert first.returncode == 3, first.stderr
    refused = mpirun(1, "run", "--dataset", dataset, "--model", "demo", "--out", out)  # not empty: refused
    assert refused.returncode == 12
    with open(image, "wb") as fh:
        fh.write(good)
    again = mpirun(2, "run", "--dataset", dataset, "--model", "demo", "--out", out, "--split", "all", "--resume")
    assert again.returncode == 0, again.stderr
    with open(os.path.join(out, "run.log")) as fh:
        log = fh.read()
    attempts = log.split("=== ")[1:]
    assert [a.split("\n", 1)[0].endswith(f"attempt {k} ===") for k, a in enumerate(attempts)] == [True, True]
    assert "exit 3: finished, but some images failed" in attempts[0] and "#2" in attempts[0]
    assert attempts[1].rstrip().endswith("exit 0: every selected image was scored (or predicted, where it has no "
                                         "mask)")
    assert "folder is not empty" not in log  # a refused run never writes in a folder it did not take
