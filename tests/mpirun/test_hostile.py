"""Hostile but realistic input: every row of issue 16's table ends with a clear message naming the file, field or
option, the documented exit code, no traceback, no hang and no runaway memory; and what held up stays so.

Each command runs in a subprocess under an address-space limit (an unbounded read fails fast instead of
exhausting the machine) and a timeout (a hang fails the test instead of the CI run)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MPI_ENV, mpirun, read_rows

from mpi_infer.data.dataset import load_dataset

MEMORY_LIMIT = 6 << 30  # bytes of address space per process: far below the machine, far above a real run


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m mpi_infer ARGS``, memory-limited, with a timeout."""
    return subprocess.run([sys.executable, "-m", "mpi_infer", *args], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=_limit, env={**os.environ, **MPI_ENV})


def clean(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    """The documented code, each needle in stderr, no Python traceback, and a short message."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(proc.stderr) < 20_000


@pytest.fixture()
def data(synth_small, tmp_path) -> Path:
    """A private copy of the small synthetic set (13 images, 9/1/3 training/validation/test)."""
    root = tmp_path / "data"
    shutil.copytree(os.path.dirname(synth_small), root)
    return root


def with_entries(root: Path, entries: dict[int, dict[str, str]]) -> str:
    """The copy's YAML with some images' location/label replaced (absolute paths)."""
    ds = load_dataset(str(root / "dataset.yml"))
    lines = ["images:"]
    for i in range(len(ds)):
        e = {"location": ds.sample(i).locations[0], "label": ds.sample(i).label_path, **entries.get(i, {})}
        lines += [f"  - location: {json.dumps(e['location'])}", f"    label: {json.dumps(e['label'])}"]
    lines.append("split:\n  test: [" + ", ".join(str(i) for i in range(len(ds))) + "]")
    path = root / "hostile.yml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def rows(out: str) -> dict[int, dict[str, str]]:
    import csv

    with open(os.path.join(out, "per_image.csv"), newline="") as fh:
        return {int(r["index"]): r for r in csv.DictReader(fh)}


# -- rows 1, 2: devices and FIFOs as inputs ---------------------------------------------------------------

def test_device_and_fifo_images_and_masks_fail_alone(data, tmp_path):
    fifo = str(tmp_path / "fifo.png")
    os.mkfifo(fifo)
    ds = with_entries(data, {0: {"location": "/dev/zero"}, 1: {"label": "/dev/urandom"}, 2: {"location": fifo},
                             3: {"label": fifo}})
    out = str(tmp_path / "o")
    proc = mpirun(2, "run", "--dataset", ds, "--model", "demo-onnx", "--out", out, timeout=120)
    clean(proc, 3)
    got = rows(out)
    for i, needle in ((0, "/dev/zero"), (1, "/dev/urandom"), (2, fifo), (3, fifo)):
        assert got[i]["status"] == "failed" and "not a regular file" in got[i]["error"] and needle in got[i]["error"]
    assert all(got[i]["status"] == "ok" for i in range(4, 13))


def test_model_or_dataset_that_is_a_device_or_fifo(data, tmp_path):
    clean(cli("run", "--dataset", str(data / "dataset.yml"), "--model", "/dev/zero", "--out", str(tmp_path / "a")),
          11, "/dev/zero: model path is a character device, not a regular file")
    fifo = str(tmp_path / "d.yml")
    os.mkfifo(fifo)
    clean(cli("run", "--dataset", fifo, "--model", "demo", "--out", str(tmp_path / "b")),
          10, f"{fifo}: dataset path is a FIFO (named pipe), not a regular file")
    clean(cli("run", "--dataset", "/dev/zero", "--model", "demo", "--out", str(tmp_path / "c")),
          10, "/dev/zero: dataset path is a character device")  # row 4
    clean(cli("split", fifo, "-n", "2", "-o", str(tmp_path / "p")), 10, "FIFO")


# -- rows 3, 5, 12, 13: sizes and numbers out of range -----------------------------------------------------

def test_absurd_part_count_is_a_usage_error(data, tmp_path):
    clean(cli("split", str(data / "dataset.yml"), "-n", "99999999999999999999", "-o", str(tmp_path / "p")),
          2, "-n/--parts", "from 1 to 100000")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("index", [2**70, 2**63, -(2**70)])
def test_split_index_beyond_64_bits(data, tmp_path, index):
    (data / "big.yml").write_text(f"images: [images_segmentation/a.jpg]\nsplit:\n  test: [0, {index}]\n")
    for proc in (cli("run", "--dataset", str(data / "big.yml"), "--model", "demo", "--out", str(tmp_path / "o")),
                 cli("split", str(data / "big.yml"), "-n", "2", "-o", str(tmp_path / "p"))):
        clean(proc, 10, "split 'test'[1]: index", "is out of range")


def test_yaml_error_on_a_huge_line_is_capped(data, tmp_path):
    path = tmp_path / "huge.yml"
    path.write_text("images: [" + "x" * 20_000_000 + "\nsplit: {")
    proc = cli("run", "--dataset", str(path), "--model", "demo", "--out", str(tmp_path / "o"))
    clean(proc, 10, "not valid YAML")
    assert len(proc.stderr) < 2000


# -- rows 13, 14, 17: command-line values, checked once, exit 2 --------------------------------------------

@pytest.mark.parametrize("bad", [["--split", ""], ["--split", "test,"], ["--threads", "-3"],
                                 ["--loader-threads", "-1"], ["--chunk-size", "0"], ["--chunk-size", "-5"],
                                 ["--expect-hosts", "-1"], ["--batch-size", "0"], ["--threshold", "2"],
                                 ["--threshold", "nan"], ["--profile", "nope"], ["--size", "0", "10"],
                                 ["--std", "0", "1", "1"], ["--progress-interval", "-1"]])
def test_bad_option_values_are_usage_errors_printed_once(data, tmp_path, bad):
    out = str(tmp_path / "o")
    proc = mpirun(2, "run", "--dataset", str(data / "dataset.yml"), "--model", "demo", "--out", out, *bad)
    clean(proc, 2, bad[0])
    assert proc.stderr.count("error:") == 1, proc.stderr  # rank 0 alone says it
    assert not os.path.exists(out)


# -- rows 6, 7, 8, 16: our own files and folders, damaged or in the way -------------------------------------

def test_resume_with_a_damaged_run_json(data, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "run.json").write_text('{"model_sha256": "ab')
    clean(cli("run", "--dataset", str(data / "dataset.yml"), "--model", "demo", "--out", str(out), "--resume"),
          12, f"{out / 'run.json'} is damaged")
    (out / "run.json").write_text("[1, 2]")
    clean(cli("run", "--dataset", str(data / "dataset.yml"), "--model", "demo", "--out", str(out), "--resume"),
          12, "expected a JSON object")


@pytest.fixture(scope="module")
def finished_run(synth_small, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("finished") / "o")
    proc = subprocess.run([sys.executable, "-m", "mpi_infer", "run", "--dataset", synth_small, "--model",
                           "demo-onnx", "--out", out, "--save-masks"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("damage", ["file", "truncated", "list", "no_metrics", "split_no_metrics", "binary_csv",
                                    "csv_columns", "csv_values"])
def test_report_on_anything_but_a_finished_run(finished_run, tmp_path, damage):
    target = tmp_path / "run"
    shutil.copytree(finished_run, target)
    summary = json.loads((target / "summary.json").read_text())
    needle = "summary.json"
    if damage == "file":
        target = target / "per_image.csv"
        needle = "is not a folder"
    elif damage == "truncated":
        (target / "summary.json").write_text((target / "summary.json").read_text()[:100])
    elif damage == "list":
        (target / "summary.json").write_text("[]")
    elif damage == "no_metrics":
        del summary["metrics"]
        (target / "summary.json").write_text(json.dumps(summary))
    elif damage == "split_no_metrics":
        summary["per_split"]["test"] = {"images": {}}
        (target / "summary.json").write_text(json.dumps(summary))
    elif damage == "binary_csv":
        (target / "per_image.csv").write_bytes(os.urandom(2000) + b"\xff\xfe")
        needle = "per_image.csv: not UTF-8"
    elif damage == "csv_columns":
        (target / "per_image.csv").write_text("a,b\n1,2\n")
        needle = "per_image.csv: expected the columns"
    elif damage == "csv_values":
        text = (target / "per_image.csv").read_text().splitlines()
        text[1] = "x" + text[1]
        (target / "per_image.csv").write_text("\n".join(text) + "\n")
        needle = "per_image.csv: line 2"
    clean(cli("report", str(target)), 12, needle)


def test_split_into_an_existing_file(data, tmp_path):
    (tmp_path / "taken").write_text("x")
    clean(cli("split", str(data / "dataset.yml"), "-n", "2", "-o", str(tmp_path / "taken")),
          12, "exists and is not a folder")


def test_early_failure_leaves_no_output_folder_behind(data, tmp_path):
    out = tmp_path / "fresh"
    clean(cli("run", "--dataset", str(data / "dataset.yml"), "--model", "demo", "--out", str(out), "--size",
              "100", "100"), 12, "multiple of 32")
    assert not out.exists()


# -- rows 9, 10, 11: full and read-only volumes, --overwrite --------------------------------------------------

@pytest.fixture()
def small_volume(tmp_path):
    """A 1 MiB tmpfs of our own (root only; the test skips elsewhere, saying why)."""
    mnt = tmp_path / "vol"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs (a full or read-only volume)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_volume_mid_run_then_resume(data, small_volume):
    out = small_volume / "o"
    filler = small_volume / "filler"
    st = os.statvfs(small_volume)
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 24 * 1024))  # leave 24 KiB: a few batches fit
    proc = mpirun(2, "run", "--dataset", str(data / "dataset.yml"), "--model", "demo-onnx", "--out", str(out),
                  "--split", "all", "--save-masks", "--batch-size", "1", timeout=120)
    clean(proc, 200, "No space left on device", str(out), "--resume")
    from mpi_infer.outputs.ledger import read_ledgers

    recorded = {r["index"] for r in read_ledgers(str(out))}
    masks = {int(n.split("_")[0]) for n in os.listdir(out / "masks") if n.endswith(".png")}
    assert masks <= recorded  # no mask without its record
    filler.unlink()
    proc = mpirun(2, "run", "--dataset", str(data / "dataset.yml"), "--model", "demo-onnx", "--out", str(out),
                  "--split", "all", "--save-masks", "--resume", timeout=120)
    clean(proc, 0)
    assert sorted(rows(str(out))) == list(range(13))


def test_overwrite_on_a_read_only_volume(data, small_volume):
    out = small_volume / "o"
    proc = mpirun(1, "run", "--dataset", str(data / "dataset.yml"), "--model", "demo-onnx", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_volume)]).returncode == 0
    clean(cli("run", "--dataset", str(data / "dataset.yml"), "--model", "demo-onnx", "--out", str(out),
              "--overwrite"), 12, "cannot write there")


def test_overwrite_removes_only_what_the_run_wrote(data, tmp_path):
    out = tmp_path / "o"
    args = ["run", "--dataset", str(data / "dataset.yml"), "--model", "demo-onnx", "--out", str(out), "--save-masks"]
    assert cli(*args).returncode == 0
    mine = [out / "masks" / "my-notes.txt", out / "ledger" / "keep.jsonl", out / "notes.md"]
    for p in mine:
        p.write_text("precious")
    stale = out / "masks" / "0000099_gone.png"
    stale.write_bytes(b"x")  # looks like ours: --overwrite may remove it
    clean(cli(*args, "--overwrite"), 0)
    assert all(p.read_text() == "precious" for p in mine)
    assert not stale.exists() and len(list((out / "masks").glob("*.png"))) == 3


# -- row 15: manifests the API server would reject ------------------------------------------------------------

MANIFEST = ["manifest", "--name", "isic", "--workers", "2", "--image", "r/m:1", "--pvc", "data", "--dataset",
            "/data/d.yml", "--model", "/data/m.bin", "--out", "/data/o"]


@pytest.mark.parametrize("option,value", [("--name", "Bad_Name"), ("--name", "UPPER"), ("--name", "a" * 80),
                                          ("--name", "-lead"), ("--namespace", "Bad_NS"), ("--slots", "-1"),
                                          ("--memory", "lots"), ("--cpu", "-3"), ("--cpu", "0"),
                                          ("--deadline", "-5"), ("--workers", "0"), ("--storage", "1Zi"),
                                          ("--pvc", "Data!"), ("--image", "has space"), ("--run-args", "'open")])
def test_manifest_refuses_what_kubernetes_would(option, value):
    args = list(MANIFEST)
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    clean(cli(*args), 2, option)


def test_manifest_still_renders_valid_values():
    proc = cli(*MANIFEST, "--cpu", "500m", "--memory", "512Mi", "--namespace", "deep-health")
    assert proc.returncode == 0, proc.stderr
    assert "kind: MPIJob" in proc.stdout


# -- what held up: keep it so ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text,needle", [
    ("a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: &d [*c, *c]\nimages: *d\n", ""),  # alias fan-out
    ("images: [a.png]\nimages: [b.png]\n", ""),  # duplicate keys
    ("\0\1\2binary", ""), ("", ""),
    ("images: [a.png]\nsplit: {test: [0.5]}\n", "expected an integer image index"),
])
def test_held_up_yaml_stays_a_dataset_error(tmp_path, text, needle):
    path = tmp_path / "d.yml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    clean(cli("run", "--dataset", str(path), "--model", "demo", "--out", str(tmp_path / "o")), 10, needle)
    assert not (tmp_path / "o").exists()


def test_held_up_unicode_space_and_symlink_paths(data, tmp_path):
    """Paths with spaces, non-ASCII letters and symlinks are opened as the files they name."""
    odd = tmp_path / "données d'essai ü"
    odd.mkdir()
    ds = load_dataset(str(data / "dataset.yml"))
    first = Path(ds.sample(0).locations[0])
    shutil.copy(first, odd / "bild 1 ✓.jpg")
    os.symlink(ds.sample(1).locations[0], odd / "lien.jpg")
    path = with_entries(data, {0: {"location": str(odd / "bild 1 ✓.jpg")}, 1: {"location": str(odd / "lien.jpg")}})
    out = str(tmp_path / "sortie é")
    proc = mpirun(2, "run", "--dataset", path, "--model", "demo-onnx", "--out", out, "--save-masks")
    clean(proc, 0)
    got = rows(out)
    assert got[0]["status"] == got[1]["status"] == "ok" and "bild 1 ✓.jpg" in got[0]["location"]
    assert len(os.listdir(os.path.join(out, "masks"))) == 13


@pytest.mark.parametrize("planted", ["write-test", "ledger", "masks", "run.log"])
def test_nothing_in_out_is_written_through_a_planted_symlink(planted, synth_small, tmp_path):
    """A colleague's symlinks in a shared --out (to a file of yours, or a folder) are never written through:
    --resume and --overwrite (every rendered MPIJob passes --resume) leave the target as it was."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine\n")
    out = tmp_path / "o"
    first = mpirun(2, "run", "--dataset", synth_small, "--model", "demo", "--out", str(out), "--save-masks")
    assert first.returncode == 0, first.stderr
    if planted == "write-test":
        os.symlink(victim / "notes.txt", out / ".write-test")
    elif planted == "run.log":
        os.unlink(out / "run.log")
        os.symlink(victim / "notes.txt", out / "run.log")
    else:
        shutil.rmtree(out / planted)
        os.symlink(victim, out / planted)
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo", "--out", str(out), "--resume",
                  "--save-masks")
    assert (victim / "notes.txt").read_text() == "mine\n" and sorted(os.listdir(victim)) == ["notes.txt"]
    if planted in ("ledger", "masks"):
        assert proc.returncode == 12 and f"{planted}/ is a symlink" in proc.stderr, proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr


def test_a_dollar_in_a_split_name_is_drawn_not_parsed(synth_small, tmp_path):
    """matplotlib parses '$...$' as mathtext: a name from the dataset or the command line must reach the
    figures as plain text, or the report (written after the results) is lost."""
    root = tmp_path / "data"
    shutil.copytree(os.path.dirname(synth_small), root)
    text = (root / "dataset.yml").read_text()
    assert "\n  test:" in text
    (root / "dataset.yml").write_text(text.replace("\n  test:", "\n  'te$t_{$x^2':"))
    out = str(tmp_path / "o")
    proc = mpirun(2, "run", "--dataset", str(root / "dataset.yml"), "--model", "demo", "--split", "all", "--report",
                  "--out", out)
    assert proc.returncode == 0, proc.stderr
    page = Path(out, "report.html").read_text()
    assert "te$t_{$x^2" in page and page.count("data:image/png;base64,") >= 5


@pytest.mark.parametrize("text", ["images:\n" + "- " * 12000 + "x\n", "images: " + "[" * 3000 + "\n",
                                  "".join(" " * i + f"k{i}:\n" for i in range(200))])
def test_nesting_deeper_than_a_dataset_needs_is_refused_naming_the_file(text, tmp_path):
    """A few kB of nesting overflowed rank 0's stack (exit 139, retried by Kubernetes): refused first, exit 10."""
    path = tmp_path / "deep.yml"
    path.write_text(text)
    clean(cli("run", "--dataset", str(path), "--model", "demo", "--out", str(tmp_path / "o"), "--dry-run"), 10,
          str(path), "levels deep")
    config = tmp_path / "deep-run.yaml"
    config.write_text("split:\n" + "- " * 5000 + "x\n")
    clean(cli("run", "--config", str(config), "--dataset", str(path), "--model", "demo", "--out",
              str(tmp_path / "o")), 2, str(config), "nested deeper")


def test_a_jpeg_cut_short_is_converted_with_a_note_not_scored_ok(synth_small, tmp_path):
    """libjpeg decodes a JPEG cut inside its scan (grey rows; a warning on stderr only), as ECVL does: its record
    must say so."""
    root = tmp_path / "data"
    shutil.copytree(os.path.dirname(synth_small), root)
    image = sorted((root / "images_segmentation").glob("*.jpg"))[0]
    data = image.read_bytes()
    image.write_bytes(data[: len(data) * 6 // 10])
    out = str(tmp_path / "o")
    proc = mpirun(2, "run", "--dataset", str(root / "dataset.yml"), "--model", "demo", "--split", "all", "--out", out)
    assert proc.returncode == 0, proc.stderr
    rows = {r["location"]: r for r in read_rows(out)}
    cut = rows[str(image)]
    assert cut["status"] == "converted" and "cut short (no end-of-image marker)" in cut["error"]
    assert sum(r["status"] == "ok" for r in rows.values()) == len(rows) - 1


@pytest.mark.parametrize("forge,says", [
    (lambda r: {**r, "dice": 1.0}, "do not follow from its counts"),
    (lambda r: {**r, "dice": 57}, "expected a number in [0, 1]"),
    (lambda r: {**r, "iou": "NaN-marker"}, "expected a number in [0, 1]"),
    (lambda r: {**r, "tp": -3}, "expected non-negative integers"),
    (lambda r: {**r, "index": 10 ** 6}, "not an image of split"),
    (lambda r: {**r, "location": "/etc/passwd"}, "not image"),
    (lambda r: {**r, "status": "great"}, "expected one of"),
    ("nan", "not JSON"),
])
def test_resume_refuses_a_forged_ledger_line_naming_it(forge, says, synth_small, tmp_path):
    """--resume reads records a colleague could have written: each must be one this run could have written
    (exit 12, naming the file and the line), never a result; a torn last line stays a crash's, ignored."""
    out = tmp_path / "o"
    assert mpirun(2, "run", "--dataset", synth_small, "--model", "demo", "--out", str(out)).returncode == 0
    ledger = out / "ledger" / "attempt-000-rank-00001.jsonl"
    lines = ledger.read_text().splitlines()
    record = json.loads(lines[0])
    forged = (json.dumps(record).replace(str(record["dice"]), "NaN", 1) if forge == "nan"
              else json.dumps(forge(record)))
    ledger.write_text("\n".join([forged, *lines[1:]]) + "\n")
    (out / "summary.json").unlink()
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo", "--out", str(out), "--resume")
    assert proc.returncode == 12, proc.stderr
    assert f"{ledger}: line 1: " in proc.stderr and says in proc.stderr, proc.stderr
    assert not (out / "summary.json").exists()


def test_a_planted_conversion_in_the_cache_never_runs(synth_small, tmp_path):
    """OUT/.cache/ holds the .bin's ONNX conversion under a predictable name: a file planted there (another
    model) must not run in its place while summary.json names the .bin."""
    out = tmp_path / "o"
    clean_run = mpirun(2, "run", "--dataset", synth_small, "--model", "demo", "--out", str(out), "--split", "all")
    assert clean_run.returncode == 0, clean_run.stderr
    want = [(r["index"], r["dice"]) for r in read_rows(str(out))]
    (cached,) = [p for p in (out / ".cache").iterdir() if p.suffix == ".onnx"]
    from mpi_infer.models.files import demo_model

    shutil.copy(demo_model("onnx", "demo_lenet"), cached)  # another model, under the conversion's name
    shutil.rmtree(out / "ledger")  # every image runs again, on --resume (which keeps the cache)
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo", "--out", str(out), "--split", "all",
                  "--resume")
    assert proc.returncode == 0, proc.stderr
    assert [(r["index"], r["dice"]) for r in read_rows(str(out))] == want


def declared_size_bomb(src: Path, dst: Path, size: int = 30000) -> None:
    """A small JPEG whose frame header (SOF0) declares ``size`` x ``size``: a few hundred bytes that would
    decode to gigabytes."""
    data = bytearray(src.read_bytes())
    at = data.find(b"\xff\xc0")
    assert at > 0
    data[at + 5: at + 9] = size.to_bytes(2, "big") * 2
    dst.write_bytes(bytes(data[:4096]))


def test_a_pixel_bomb_is_refused_from_its_header_before_decoding(synth_small, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(os.path.dirname(synth_small), root)
    image = sorted((root / "images_segmentation").glob("*.jpg"))[0]
    declared_size_bomb(image, image)
    out = str(tmp_path / "o")
    proc = mpirun(2, "run", "--dataset", str(root / "dataset.yml"), "--model", "demo", "--split", "all", "--out", out,
                  "--save-masks", "--report")
    assert proc.returncode == 3, proc.stderr
    bomb = {r["location"]: r for r in read_rows(out)}[str(image)]
    assert bomb["status"] == "failed" and "30000x30000 (900 megapixels), over --max-megapixels 64" in bomb["error"]
    with open(os.path.join(out, "summary.json")) as fh:
        s = json.load(fh)
    assert max(r["peak_rss_mb"] for r in s["timings"]["per_rank"]) < 1000
    small = mpirun(1, "run", "--dataset", str(root / "dataset.yml"), "--model", "demo", "--split", "all", "--out",
                   str(tmp_path / "o2"), "--max-megapixels", "0.01")  # 100x100: every synthetic image is larger
    assert small.returncode == 3 and all(r["status"] == "failed" for r in read_rows(str(tmp_path / "o2")))


def test_paths_outside_the_datasets_folder_are_counted_or_refused(synth_small, tmp_path):
    """A colleague's YAML can name any file you can read: counted in a warning, refused (exit 10) with
    --confine-to-dataset, symlinks included."""
    root = tmp_path / "data"
    shutil.copytree(os.path.dirname(synth_small), root)
    images = sorted((root / "images_segmentation").glob("*.jpg"))
    elsewhere = tmp_path / "elsewhere.jpg"
    shutil.move(images[0], elsewhere)
    os.symlink(elsewhere, images[0])  # inside by name, outside in fact
    text = (root / "dataset.yml").read_text().replace(images[1].name, f"../../{images[1].name}")
    shutil.copy(images[1], tmp_path / images[1].name)
    (root / "dataset.yml").write_text(text)
    args = ["run", "--dataset", str(root / "dataset.yml"), "--model", "demo", "--split", "all"]
    warned = mpirun(1, *args, "--out", str(tmp_path / "o"))
    assert warned.returncode == 0, warned.stderr
    with open(tmp_path / "o" / "summary.json") as fh:
        assert any("1 selected image or mask path(s) lie outside" in w for w in json.load(fh)["warnings"])
    refused = mpirun(1, *args, "--out", str(tmp_path / "o2"), "--confine-to-dataset")
    clean(refused, 10, "2 selected image or mask path(s) lie outside", "--confine-to-dataset")
    assert not os.path.exists(tmp_path / "o2")
