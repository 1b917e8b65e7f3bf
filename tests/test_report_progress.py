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

import cv2
import numpy as np
import pytest
from conftest import mpirun

from mpi_infer.progress import ProgressDisplay, format_eta, log, progress_line
from mpi_infer.report import GT_COLOUR, PRED_COLOUR, overlay


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
    from mpi_infer.progress import configure

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
    tile = overlay(str(tmp_path / "i.png"), str(tmp_path / "g.png"), str(tmp_path / "p.png"))
    assert tile.shape[1] == 220
    green = np.all(tile == GT_COLOUR, axis=2)
    magenta = np.all(tile == PRED_COLOUR, axis=2)
    assert green.sum() > 50 and magenta.sum() > 50
    ys, xs = np.nonzero(green)
    scale = 220 / 150
    assert 20 * scale - 3 <= ys.min() and ys.max() <= 60 * scale + 3  # on the mask's border, not elsewhere


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
    assert set(figs) == {"histograms", "ranks", "worst", "best"}
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
    assert 'data-figures-loaded="4/4"' in proc.stdout
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    assert "Content Security Policy" not in proc.stderr
