"""Progress output (terminal and log modes) and report.html: figures checked as images, and the page
opened in headless Chromium with no console errors and every figure decoded."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import time

import cv2
import numpy as np
import pytest
from conftest import mpirun

from mpi_infer.outputs.figures import GT_COLOUR, PRED_COLOUR, overlay
from mpi_infer.outputs.progress import ProgressDisplay, format_eta, log, progress_line


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_mode_prints_rate_eta_and_failures_every_interval():
    out = io.StringIO()
    p = ProgressDisplay(10, interval=0.0, stream=out, tty=False)
    p.update(4, 1)
    p.update(10, 1)
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[rank 0] progress: 4/10 images (40.0%)")
    assert "images/s" in lines[0] and "ETA" in lines[0] and "1 failed" in lines[0]
    assert lines[-1].startswith("[rank 0] progress: 10/10 images (100.0%)")


def test_terminal_mode_draws_a_live_bar():
    out = FakeTTY()
    p = ProgressDisplay(10, stream=out)
    assert p.bar is not None
    p.update(5, 0)
    p.update(10, 2)
    p.close()
    text = out.getvalue()
    assert "10/10" in text and "failed=2" in text and "\r" in text


def test_quiet_and_verbose(capsys):
    from mpi_infer.outputs.progress import configure

    configure(quiet=True)
    log(3, "hidden")
    configure(verbose=False)
    log(3, "detail", verbose=True)
    log(3, "shown")
    configure(verbose=True)
    log(4, "detail", verbose=True)
    configure()
    err = capsys.readouterr().err
    assert err == "[rank 3] shown\n[rank 4] detail\n"
    assert format_eta(3725) == "1:02:05" and format_eta(None) == "--:--"
    assert "0/0 images (100.0%)" in progress_line(0, 0, 0, 1.0)


def test_overlay_draws_both_contours(tmp_path):
    img = np.full((100, 150, 3), 200, np.uint8)
    gt = np.zeros((100, 150), np.uint8)
    gt[20:60, 30:90] = 255
    pred = np.zeros_like(gt)
    pred[40:90, 70:140] = 255
    for name, arr in (("i.png", img), ("g.png", gt), ("p.png", pred)):
        cv2.imwrite(str(tmp_path / name), arr)
    tile, empty_gt = overlay(str(tmp_path / "i.png"), str(tmp_path / "g.png"), str(tmp_path / "p.png"))
    assert tile.shape[1] == 220 and not empty_gt
    green = np.all(tile == GT_COLOUR, axis=2)
    magenta = np.all(tile == PRED_COLOUR, axis=2)
    assert green.sum() > 50 and magenta.sum() > 50
    ys, xs = np.nonzero(green)
    scale = 220 / 150
    assert 20 * scale - 3 <= ys.min() and ys.max() <= 60 * scale + 3  # on the mask's border, not elsewhere
    cv2.imwrite(str(tmp_path / "e.png"), np.zeros_like(gt))
    assert overlay(str(tmp_path / "i.png"), str(tmp_path / "e.png"), None)[1] is True  # the tile says why


def test_thumbnail_of_a_large_jpeg_is_decoded_small_and_upright(tmp_path):
    from PIL import Image

    from mpi_infer.outputs.figures import thumbnail_rgb

    rng = np.random.default_rng(1)
    big = cv2.GaussianBlur(rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8), (0, 0), 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise for display
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=90, exif=exif)
    thumb = thumbnail_rgb(str(tmp_path / "big.jpg"))
    assert thumb is not None and max(thumb.shape[:2]) <= 1000  # DCT-scaled, never the full 12 MP
    assert thumb.shape[0] > thumb.shape[1]  # the EXIF rotation applied, as OpenCV's imread applies it


@pytest.fixture(scope="module")
def reported_run(synth_small, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("report") / "run")
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo-onnx", "--out", out, "--split", "all",
                  "--report", "--verbose")
    assert proc.returncode == 0, proc.stderr
    assert "[rank 1] done: " in proc.stderr  # --verbose per-rank lines carry the rank
    return out


def figures(run_dir: str) -> dict[str, np.ndarray]:
    with open(os.path.join(run_dir, "report.html")) as fh:
        html = fh.read()
    out = {}
    for fid, b64 in re.findall(r"<figure id='(\w+)'.*?base64,([A-Za-z0-9+/=]+)'", html):
        out[fid] = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
    return out


def test_report_figures_are_real_images(reported_run):
    figs = figures(reported_run)
    assert set(figs) == {"histograms", "ranks", "worst", "best", "distributions", "curve"}
    for fid, img in figs.items():
        assert img is not None and img.shape[0] > 150 and img.shape[1] > 300, fid
        assert img.std() > 10, f"{fid} looks blank"
    def near(rgb: np.ndarray, colour: tuple) -> int:
        return int((np.abs(rgb - np.array(colour)).sum(axis=2) < 60).sum())

    for fid in ("worst", "best"):
        rgb = cv2.cvtColor(figs[fid], cv2.COLOR_BGR2RGB).astype(int)
        assert near(rgb, GT_COLOUR) > 100 and near(rgb, PRED_COLOUR) > 100, fid
    with open(os.path.join(reported_run, "report.html")) as fh:
        html = fh.read()
    assert "http://" not in html and "https://" not in html  # nothing to fetch
    with open(os.path.join(reported_run, "summary.json")) as fh:
        per_rank = json.load(fh)["timings"]["per_rank"]
    assert all("progress_s" in r and "progress_messages" in r for r in per_rank)


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.skipif(chromium() is None, reason="no Chromium here (scripts/system_deps.sh installs Debian's)")
def test_report_opens_in_headless_chromium(reported_run, tmp_path):
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", "--dump-dom", "file://" + os.path.join(reported_run, "report.html")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-figures-loaded="6/6"' in proc.stdout
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    assert "Content Security Policy" not in proc.stderr


@pytest.fixture(scope="module")
def troubled_run(synth_small, tmp_path_factory):
    """Two good images, one missing, one grey (converted), one whose ground truth is empty; no split (a warning)."""
    base = os.path.dirname(synth_small)
    folder = tmp_path_factory.mktemp("troubled")
    grey = cv2.cvtColor(cv2.imread(os.path.join(base, "images_segmentation", "SYN_007000001.jpg")),
                        cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(folder / "grey.png"), grey)
    cv2.imwrite(str(folder / "empty.png"), np.zeros(grey.shape, np.uint8))
    gt = os.path.join(base, "ground_truth", "SYN_007000001_segmentation.png")
    entries = [(os.path.join(base, "images_segmentation", "SYN_007000000.jpg"),
                os.path.join(base, "ground_truth", "SYN_007000000_segmentation.png")),
               (str(folder / "missing.jpg"), gt), (str(folder / "grey.png"), gt),
               (os.path.join(base, "images_segmentation", "SYN_007000001.jpg"), str(folder / "empty.png"))]
    (folder / "d.yml").write_text("name: troubled\nimages:\n" + "".join(
        f"  - location: {img}\n    label: {mask}\n" for img, mask in entries))
    out = str(folder / "out")
    proc = mpirun(2, "run", "--dataset", str(folder / "d.yml"), "--model", "demo-onnx", "--out", out, "--split",
                  "all", "--report")
    assert proc.returncode == 3, proc.stderr
    return proc, out


def test_console_lists_failed_images_counts_converted_and_owns_the_exit_code(troubled_run):
    proc, _ = troubled_run
    lines = proc.stdout.splitlines()
    assert "failed: 1 image(s)" in lines
    assert any(line.startswith("  #1 ") and "missing.jpg" in line and "not found" in line for line in lines)
    assert "1 image(s) scored after a conversion" in proc.stdout
    assert lines[-1].startswith("exit 3: ") and "mpi_infer's own exit code" in lines[-1]
    assert "prterun detected" in proc.stderr or "prterun" not in proc.stdout  # Open MPI's note comes after ours


def test_report_shows_conversions_warnings_and_empty_ground_truth(troubled_run):
    _, out = troubled_run
    with open(os.path.join(out, "report.html")) as fh:
        page = fh.read()
    assert "Converted images (1)" in page and "image is grey; replicated to RGB" in page
    # the YAML lists images outside its folder: counted in a warning since --confine-to-dataset exists
    assert "Warnings (2)" in page and "no &#x27;split&#x27; mapping" in page and "lie outside the dataset" in page
    assert "Failed images (1)" in page
    assert "None" not in page.split("<h1>")[1].split("<figure")[0]  # the table and the run's facts
    figs = figures(out)
    assert {"worst", "histograms"} <= set(figs)


def test_a_multi_model_grouped_boundary_run_shows_everything_it_computed(synth_small, tmp_path):
    """Several models, an ensemble, --group-by and --boundary-metrics: every model's and the ensemble's groups
    in summary.json and on the console, and a report that says which model its tables and figures show, with the
    groups table, the boundary metrics' CIs, and no number at 16 digits."""
    out = str(tmp_path / "o")
    proc = mpirun(2, "run", "--dataset", synth_small, "--model", "a=demo", "--model", "b=demo-onnx", "--ensemble",
                  "mean", "--group-by", r"SYN_\d{8}(\d)\.jpg", "--boundary-metrics", "--split", "all", "--report",
                  "--out", out)
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(out, "summary.json")) as fh:
        s = json.load(fh)
    for name in ("a", "b", "ensemble"):
        groups = s["models"][name]["groups"]
        assert groups["groups"] == s["groups"]["groups"] == 10
        assert sum(g["images"] for g in groups["per_group"].values()) == 13
    assert s["models"]["a"]["groups"] == s["groups"]  # the first model's are the run's
    assert "groups (--group-by" in proc.stdout and all(f"  {n}: lowest mean dice" in proc.stdout
                                                        for n in ("a", "b", "ensemble"))
    with open(os.path.join(out, "report.html")) as fh:
        page = fh.read()
    shown = s["best_model"]["all"]
    assert f"every figure below show model {shown}" in page and f"(model {shown})</h2>" in page
    assert "<h2>Groups (--group-by" in page and page.count("<td>0.") > 20
    for name in ("a mean dice", "b mean dice", "ensemble mean dice"):
        assert f"<th>{name}</th>" in page
    for label in ("HD95 (px)", "ASSD (px)", "NSD", "mean Dice"):
        assert f"<td>{label}</td>" in page
    assert not re.search(r"\d\.\d{8,}", page.split("<img")[0])  # text before the figures


def test_classification_groups_and_cis_on_the_console_and_in_the_report(tmp_path):
    from mpi_infer.data.synth import SynthSpec, make_classification_dataset

    data = make_classification_dataset(str(tmp_path / "cls"), SynthSpec(n=24, seed=6))
    out = str(tmp_path / "o")
    proc = mpirun(2, "run", "--dataset", data, "--model", "a=demo-classifier", "--model", "b=demo-classifier-onnx",
                  "--out", out, "--split", "all", "--group-by", r"SYNC_\d{8}(\d)\.jpg", "--report")
    assert proc.returncode == 0, proc.stderr
    assert "groups (--group-by" in proc.stdout and "  b: lowest accuracy" in proc.stdout
    with open(os.path.join(out, "report.html")) as fh:
        page = fh.read()
    assert "<h2>95% confidence intervals</h2>" in page and "<td>balanced accuracy</td>" in page
    assert "<th>b accuracy</th>" in page


def test_metrics_file_parses_and_matches_the_summary(tmp_path, synth_small):
    """--metrics-file: a Prometheus text file (parsed here with prometheus-client's own parser) whose counts
    match summary.json; the last-success time only on exit 0."""
    from prometheus_client.parser import text_string_to_metric_families

    def metrics(path):
        with open(path) as fh:
            return {s.name + (f"{{{','.join(f'{k}={v}' for k, v in s.labels.items())}}}" if s.labels else ""): s.value
                    for fam in text_string_to_metric_families(fh.read()) for s in fam.samples}

    out, path = str(tmp_path / "o"), str(tmp_path / "m.prom")
    proc = mpirun(3, "run", "--dataset", synth_small, "--model", "demo", "--out", out, "--split", "all",
                  "--metrics-file", path)
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(out, "summary.json")) as fh:
        s = json.load(fh)
    m = metrics(path)
    assert m["mpi_infer_images_total"] == m["mpi_infer_images_done"] == s["images"]["selected"] == 13
    assert m["mpi_infer_images_failed"] == 0 and m["mpi_infer_exit_code"] == 0 and m["mpi_infer_ranks_lost"] == 0
    assert abs(m["mpi_infer_last_success_timestamp_seconds"] - time.time()) < 120
    assert m["mpi_infer_stage_seconds{stage=total}"] == pytest.approx(s["timings"]["total_s"])
    assert {k for k in m if k.startswith("mpi_infer_rank_images_per_second")} == {
        f"mpi_infer_rank_images_per_second{{rank={r}}}" for r in range(3)}
    broken = tmp_path / "broken"
    shutil.copytree(os.path.dirname(synth_small), broken)
    victim = sorted((broken / "images_segmentation").glob("*.jpg"))[0]
    victim.write_bytes(b"\xff\xd8 not a jpeg")
    path2 = str(tmp_path / "m2.prom")
    assert mpirun(2, "run", "--dataset", str(broken / "dataset.yml"), "--model", "demo", "--out",
                  str(tmp_path / "o2"), "--split", "all", "--metrics-file", path2).returncode == 3
    m2 = metrics(path2)
    assert m2["mpi_infer_images_failed"] == 1 and m2["mpi_infer_exit_code"] == 3
    assert "mpi_infer_last_success_timestamp_seconds" not in m2


def test_metrics_pushed_to_a_real_pushgateway(tmp_path, synth_small):
    """--pushgateway: the same metrics reach a real Prometheus Pushgateway (Debian's prometheus-pushgateway, started
    here on a free port), grouped by job and run; an unreachable gateway is one warning, never the run's end."""
    import socket
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        pytest.skip("no prometheus-pushgateway (apt-get install prometheus-pushgateway: scripts/system_deps.sh)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gateway = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}",
                                f"--persistence.file={tmp_path / 'pg.db'}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/-/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        out = str(tmp_path / "run-a")
        proc = mpirun(2, "run", "--dataset", synth_small, "--model", "demo", "--out", out, "--split", "all",
                      "--pushgateway", url, "--quiet")
        assert proc.returncode == 0, proc.stderr
        text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
        pushed = {(s.name, s.labels.get("run")): s.value for fam in text_string_to_metric_families(text)
                  for s in fam.samples if s.name.startswith("mpi_infer_") and s.labels.get("job") == "mpi_infer"}
        assert pushed[("mpi_infer_images_done", "run-a")] == 13 and pushed[("mpi_infer_exit_code", "run-a")] == 0
    finally:
        gateway.terminate()
        gateway.wait(timeout=20)
    proc = mpirun(1, "run", "--dataset", synth_small, "--model", "demo", "--out", str(tmp_path / "run-b"),
                  "--pushgateway", url, "--quiet")  # the gateway is gone now
    assert proc.returncode == 0 and proc.stderr.count("cannot push") == 1, proc.stderr
