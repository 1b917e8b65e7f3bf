#!/usr/bin/env python3
"""Performance, measured side by side in one run. Prints one JSON line per figure and writes
bench/results.json and bench/scaling.png (throughput against ranks), with the machine recorded.

    python scripts/bench.py                  # everything, sized for a 2-core machine (~5 min)
    python scripts/bench.py --ranks 1 2 4 8 16 --images 256   # on a bigger machine
    python scripts/bench.py --only efficiency scaling

Figures and targets (issue 8):
  efficiency  end-to-end images/s / pure forward images/s (same batch, preloaded tensors) >= 0.9,
              for the full-width SegNet (random weights, 192x192) and the demo model
  scaling     N ranks (threads divided) vs the best single process on the same cores: efficiency >= 0.9
  deephealth  MPI run wall vs N independent single-rank processes on pre-split YAMLs: <= 1.05x
  dynamic     one rank slowed 2x: dynamic makespan within 1.10x of ideal (static printed beside)
  planning    1M-image YAML loaded, validated, planned and scattered at N=2: <= 5 s
  memory      peak RSS per rank flat (within 10%) from 1k to 100k images, apart from the records
  peers       (issue 24) the same model and images through mpi_infer at N=1 and N=2, the plain threads + ONNX
              Runtime script (scripts/baseline_infer.py), the 2-core ideal (single-thread decode+preprocess plus
              single-thread forward per image, over the cores) and Ray Data where installed; on the synthetic set
              and an ISIC-sized one (synth --preset isic). Wall, steady-state images/s, peak RSS per rank;
              targets: N=2 >= 1.0x the script's steady state, >= 0.9x its whole command, >= 0.85 of the ideal
  statistics  (issue 21) wall of the 200-image demo at N=2 with --bootstrap 2000 vs 0 (<= 5% added), the threshold
              curve's cost per image, the mean Dice CI's width, identical from 1, 2 and 3 ranks
  image       the CPU container image's size (scripts/build_images.sh cpu, cached by content hash), its venv and
              the venv's heaviest packages: a figure, not a bound (it drifts with Debian's and PyPI's packages)
  stacks      (issue 12, where pyecvl/pyeddl are installed) loader x engine on the demo model at N=2, same
              images: ECVL loader + ONNX engine wall / OpenCV loader + ONNX engine wall <= 1.10; the EDDL
              engine's wall against the ONNX engine's (the ECVL loader under both); peak RSS per rank of each
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mpi_infer.data.dataset import load_dataset  # noqa: E402
from mpi_infer.data.synth import SynthSpec, make_dataset  # noqa: E402
from mpi_infer.engines.onnx import OnnxEngine  # noqa: E402
from mpi_infer.loaders.opencv import load_item, to_tensor  # noqa: E402
from mpi_infer.models.eddl_bin import write_records  # noqa: E402
from mpi_infer.models.files import demo_model  # noqa: E402
from mpi_infer.models.segnet import build_onnx, random_layers, records_from_layers, segnet_widths  # noqa: E402
from mpi_infer.profiles import get_profile  # noqa: E402
from mpi_infer.tasks.output import OutputSpec  # noqa: E402
from mpi_infer.tasks.segmentation import SegmentationHead  # noqa: E402

MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe",
           "PRTE_MCA_rmaps_default_binding_policy": "none", "MPIEXEC_TIMEOUT": "1200"}
RESULTS: list[dict] = []


def emit(figure: str, **values) -> dict:
    row = {"figure": figure, **values}
    RESULTS.append(row)
    print(json.dumps(row), flush=True)
    return row


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
            model = names[0] if names else model
    except OSError:
        pass
    import onnxruntime

    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "host": platform.node()}


def mpirun(n: int, args: list[str], env: dict | None = None, flags: tuple[str, ...] = (), check: bool = True
           ) -> tuple[float, subprocess.CompletedProcess]:
    mpirun_bin = os.path.join(os.path.dirname(sys.executable), "mpirun")
    if not os.path.exists(mpirun_bin):
        mpirun_bin = shutil.which("mpirun") or "mpirun"
    cmd = [mpirun_bin, *flags, "-n", str(n), sys.executable, "-m", "mpi_infer", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, **MPI_ENV, **(env or {})}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if check and proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, proc


def run_summary(out: str) -> dict:
    with open(os.path.join(out, "summary.json")) as fh:
        return json.load(fh)


def phase_rate(summary: dict) -> float:
    """Images per second of the inference phase: all images / the slowest rank's wall time."""
    per = summary["timings"]["per_rank"]
    return sum(r["images"] for r in per) / max(r["wall_s"] for r in per)


def run_job(work: str, name: str, n: int, dataset: str, model: str, extra: list[str] | None = None,
            env: dict | None = None, flags: tuple[str, ...] = ()) -> tuple[float, dict]:
    out = os.path.join(work, "runs", name)
    shutil.rmtree(out, ignore_errors=True)
    wall, _ = mpirun(n, ["run", "--dataset", dataset, "--model", model, "--out", out, "--split", "all",
                         "--quiet", *(extra or [])], env, flags)
    return wall, run_summary(out)


def pure_forward_rate(model: str, dataset: str, threads: int, batch: int, repeats: int = 2) -> float:
    """Forward-only images/s on preloaded tensors, same batch size and threads as the run."""
    profile = get_profile("segnet-192")
    ds = load_dataset(dataset)
    items = list(ds.work_list({"all": list(range(len(ds)))}))
    loaded = [load_item(it, profile).image for it in items]
    batches = [to_tensor(loaded[k : k + batch], profile) for k in range(0, len(loaded), batch)]
    backend = OnnxEngine(model, profile, SegmentationHead(OutputSpec(), profile), threads=threads)
    backend.predict(batches[0])
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x in batches:
            backend.predict(x)
        best = max(best, len(loaded) / (time.perf_counter() - t0))
    return best


def efficiency(work: str, models: dict, args) -> None:
    cores = os.cpu_count() or 1
    for name, (model, dataset) in models.items():
        pure = pure_forward_rate(model, dataset, cores, args.batch_size)
        wall, s = run_job(work, f"eff-{name}", 1, dataset, model, ["--batch-size", str(args.batch_size),
                                                                   "--threads", str(cores)])
        e2e = phase_rate(s)
        emit("efficiency", model=name, batch_size=args.batch_size, threads=cores, pure_forward_ips=round(pure, 2),
             end_to_end_ips=round(e2e, 2), ratio=round(e2e / pure, 3), target=0.9,
             command_wall_s=round(wall, 2), images=s["images"]["selected"])


def scaling(work: str, models: dict, args) -> list[dict]:
    cores = os.cpu_count() or 1
    model, dataset = models[args.scaling_model]
    rows = []
    singles = []
    for threads in sorted({cores, max(1, cores // 2)}):
        _, s = run_job(work, f"single-t{threads}", 1, dataset, model, ["--threads", str(threads)])
        singles.append((phase_rate(s), threads))
    best, best_threads = max(singles)
    for n in args.ranks:
        wall, s = run_job(work, f"scale-n{n}", n, dataset, model)
        rate = phase_rate(s)
        progress = max(r["progress_s"] / r["wall_s"] for r in s["timings"]["per_rank"] if r["wall_s"] > 0)
        rows.append(emit("scaling", model=args.scaling_model, ranks=n, progress_cost_fraction=round(progress, 6),
                         threads_per_rank=s["timings"]["per_rank"][0]["threads"], images_per_s=round(rate, 2),
                         best_single_process_ips=round(best, 2), best_single_threads=best_threads,
                         parallel_efficiency=round(rate / best, 3), target=0.9, command_wall_s=round(wall, 2)))
    return rows


def deephealth(work: str, models: dict, args) -> None:
    """MPI run vs the DeepHealth way: pre-split YAMLs, N independent single-rank processes at once."""
    cores = os.cpu_count() or 1
    n = args.dh_ranks
    model, dataset = models[args.scaling_model]
    parts = os.path.join(work, "dh-parts")
    shutil.rmtree(parts, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "mpi_infer", "split", dataset, "-n", str(n), "-o", parts],
                   check=True, capture_output=True)
    threads = max(1, cores // n)
    procs = []
    t0 = time.perf_counter()
    for k, part in enumerate(sorted(os.listdir(parts))):
        out = os.path.join(work, "runs", f"dh-{k}")
        shutil.rmtree(out, ignore_errors=True)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mpi_infer", "run", "--dataset", os.path.join(parts, part), "--model", model,
             "--out", out, "--split", "all", "--threads", str(threads), "--quiet"],
            env={**os.environ, **MPI_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"independent process failed: {err.decode()[-2000:]}")
    theirs = time.perf_counter() - t0
    ours, s = run_job(work, "dh-mpi", n, dataset, model)
    emit("deephealth", model=args.scaling_model, ranks=n, mpi_wall_s=round(ours, 2),
         independent_processes_wall_s=round(theirs, 2), ratio=round(ours / theirs, 3), target=1.05,
         note="the MPI run alone writes the combined report")


def dynamic(work: str, models: dict, args) -> None:
    model, dataset = models["demo"]
    common = ["--batch-size", "4"]
    _, base = run_job(work, "dyn-base", 2, dataset, model, common)
    speeds = [r["images"] / r["wall_s"] for r in base["timings"]["per_rank"]]
    slow_env = {"MPI_INFER_FAULT": "slow:rank=1:factor=2"}
    total = base["images"]["selected"]
    ideal = total / (speeds[0] + speeds[1] / 2)
    _, st = run_job(work, "dyn-static", 2, dataset, model, common, slow_env)
    _, dy = run_job(work, "dyn-dynamic", 2, dataset, model,
                    [*common, "--schedule", "dynamic", "--chunk-size", "4"], slow_env)

    def makespan(s: dict) -> float:
        return max(r["wall_s"] for r in s["timings"]["per_rank"])

    same = _same_scores(os.path.join(work, "runs", "dyn-static"), os.path.join(work, "runs", "dyn-dynamic"))
    emit("dynamic", slowed_rank=1, factor=2, ideal_s=round(ideal, 3), dynamic_makespan_s=round(makespan(dy), 3),
         dynamic_over_ideal=round(makespan(dy) / ideal, 3), static_makespan_s=round(makespan(st), 3),
         static_over_ideal=round(makespan(st) / ideal, 3), target=1.10, per_image_identical=same,
         dynamic_images_per_rank=[r["images"] for r in dy["timings"]["per_rank"]])


def stacks(work: str, models: dict, args) -> None:
    """Loader x engine, same images and model (the demo .bin), N=2; the ONNX pairs alternate over repeats."""
    from mpi_infer.stages.stack import ecvl_available

    if not ecvl_available():
        emit("stacks", skipped="pyecvl/pyeddl not installed (run it in a DeepHealth image or your own install)")
        return
    _, dataset = models["demo"]
    n = 2
    walls: dict[tuple[str, str], list[float]] = {}
    phases: dict[tuple[str, str], list[float]] = {}
    rss: dict[tuple[str, str], list[float]] = {}
    pairs = [("opencv", "onnx"), ("ecvl", "onnx")] * args.repeats + [("ecvl", "eddl"), ("opencv", "eddl")]
    for loader, engine in pairs:
        wall, s = run_job(work, f"stack-{loader}-{engine}", n, dataset, "demo",
                          ["--loader", loader, "--engine", engine, "--batch-size", str(args.batch_size)])
        walls.setdefault((loader, engine), []).append(wall)
        phases.setdefault((loader, engine), []).append(max(r["wall_s"] for r in s["timings"]["per_rank"]))
        rss[(loader, engine)] = [r["peak_rss_mb"] for r in s["timings"]["per_rank"]]
    same = all(_same_scores(os.path.join(work, "runs", "stack-opencv-onnx"),
                            os.path.join(work, "runs", f"stack-{a}-{b}"))
               for a, b in (("ecvl", "onnx"), ("ecvl", "eddl"), ("opencv", "eddl")))
    full_model, full_data = models["full"]
    full: dict[str, list[float]] = {}
    for loader in ("opencv", "ecvl") * max(1, args.repeats // 2):  # a compute-heavy model: loading hides
        _, fs = run_job(work, f"stack-full-{loader}", n, full_data, full_model, ["--loader", loader])
        full.setdefault(loader, []).append(max(r["wall_s"] for r in fs["timings"]["per_rank"]))
    med = {k: float(np.median(v)) for k, v in phases.items()}
    cmd = {k: float(np.median(v)) for k, v in walls.items()}
    emit("stacks", ranks=n, images=s["images"]["selected"], repeats=args.repeats,
         inference_wall_s={f"{a}+{b}": round(v, 3) for (a, b), v in med.items()},
         command_wall_s={f"{a}+{b}": round(v, 2) for (a, b), v in cmd.items()},
         peak_rss_mb_per_rank={f"{a}+{b}": v for (a, b), v in rss.items()},
         ecvl_onnx_over_opencv_onnx=round(med[("ecvl", "onnx")] / med[("opencv", "onnx")], 3),
         ecvl_onnx_over_opencv_onnx_command=round(cmd[("ecvl", "onnx")] / cmd[("opencv", "onnx")], 3), target=1.10,
         eddl_engine_over_onnx_engine=round(med[("ecvl", "eddl")] / med[("ecvl", "onnx")], 1),
         full_segnet_ecvl_onnx_over_opencv_onnx=round(float(np.median(full["ecvl"]) / np.median(full["opencv"])), 3),
         per_image_identical=same)


SCORE_KEYS = ("index", "split", "status", "iou", "dice")


def _rows(out: str, keys: tuple[str, ...] | None = None, model: str | None = None) -> list[tuple]:
    """A run's per-image rows as tuples of ``keys`` (default: every column but ``rank``), of one model's rows."""
    with open(os.path.join(out, "per_image.csv"), newline="") as fh:
        return [tuple(r[k] for k in keys) if keys else tuple(v for k, v in r.items() if k != "rank")
                for r in csv.DictReader(fh) if model is None or r["model"] == model]


def _same_scores(a: str, b: str) -> bool:
    return _rows(a, SCORE_KEYS) == _rows(b, SCORE_KEYS)


def baseline(dataset: str, model: str, csv_path: str | None = None) -> tuple[float, dict]:
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "baseline_infer.py"), "--dataset", dataset, "--model", model,
           "--split", "all", *(["--csv", csv_path] if csv_path else [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"baseline failed: {proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout.splitlines()[-1])


def ideal_rate(dataset: str, model: str, cores: int, batch: int) -> dict:
    """The 2-core ideal: single-thread decode + preprocess cost per image (the plain recipe) plus single-thread
    forward cost per image, both measured here, spread over the cores."""
    from baseline_infer import entries, load

    todo = entries(dataset, "all")
    t0 = time.perf_counter()
    loaded = [load(e, (192, 192), None, None) for e in todo]
    decode_s = (time.perf_counter() - t0) / len(todo)
    profile = get_profile("segnet-192")
    engine = OnnxEngine(model, profile, SegmentationHead(OutputSpec(), profile), threads=1)
    xs = [np.stack([b[1] for b in loaded[k : k + batch]]) for k in range(0, len(loaded), batch)]
    engine.raw(xs[0])
    t0 = time.perf_counter()
    for x in xs:
        engine.raw(x)
    forward_s = (time.perf_counter() - t0) / len(todo)
    return {"decode_ms": round(decode_s * 1e3, 2), "forward_ms": round(forward_s * 1e3, 2),
            "ideal_ips": round(cores / (decode_s + forward_s), 2)}


def ray_data_status() -> str:
    import importlib.util

    return "installed, not run here" if importlib.util.find_spec("ray") else "not installed (pip install 'ray[data]')"


def peers(work: str, args) -> None:
    cores = os.cpu_count() or 1
    model = demo_model("onnx")
    sets = {"synthetic": os.path.join(work, "data-peers-small", "dataset.yml"),
            "isic": os.path.join(work, "data-peers-isic", "dataset.yml")}
    if not os.path.exists(sets["synthetic"]):
        make_dataset(os.path.dirname(sets["synthetic"]), SynthSpec(n=args.peer_images, seed=24))
    if not os.path.exists(sets["isic"]):
        make_dataset(os.path.dirname(sets["isic"]), SynthSpec(n=args.isic_images, seed=24, preset="isic"))
    for name, dataset in sets.items():
        walls: dict[str, list[float]] = {"mpi_infer N=1": [], "mpi_infer N=2": [], "script": []}
        steady: dict[str, list[float]] = {k: [] for k in walls}
        rss: dict[str, float] = {}
        check = None
        for r in range(args.repeats):
            for label in walls:
                if label == "script":
                    wall, out = baseline(dataset, model, os.path.join(work, f"peers-{name}.csv") if r == 0 else None)
                    walls[label].append(wall)
                    steady[label].append(out["steady_images_per_s"])
                    rss[label] = out["peak_rss_mb"]
                    continue
                n = int(label[-1])
                wall, s = run_job(work, f"peers-{name}-{n}", n, dataset, model, args.peer_flags)
                walls[label].append(wall)
                steady[label].append(phase_rate(s))
                rss[label] = max(x["peak_rss_mb"] for x in s["timings"]["per_rank"])
                if n == 2 and r == 0:
                    check = os.path.join(work, "runs", f"peers-{name}-{n}")
                    split = {x["rank"]: {k: x.get(k) for k in ("decode_s", "preprocess_s", "predict_s",
                                                               "score_s", "wait_s", "wall_s")}
                             for x in s["timings"]["per_rank"]}
        with open(os.path.join(work, f"peers-{name}.csv")) as fh:
            script_dice = {int(row["index"]): float(row["dice"]) for row in csv.DictReader(fh)}
        with open(os.path.join(check, "per_image.csv")) as fh:
            ours = {int(row["index"]): float(row["dice"]) for row in csv.DictReader(fh)}
        ideal = ideal_rate(dataset, model, cores, args.batch_size)
        med = {k: float(np.median(v)) for k, v in walls.items()}
        ips = {k: float(np.median(v)) for k, v in steady.items()}
        emit("peers", set=name, images=len(ours), repeats=args.repeats,
             wall_s={k: round(v, 2) for k, v in med.items()},
             steady_ips={k: round(v, 2) for k, v in ips.items()},
             peak_rss_mb_per_rank=rss, ideal=ideal, ray_data=ray_data_status(),
             n2_steady_vs_script=round(ips["mpi_infer N=2"] / ips["script"], 3),
             n2_wall_speed_vs_script=round(med["script"] / med["mpi_infer N=2"], 3),
             n2_vs_ideal=round(ips["mpi_infer N=2"] / ideal["ideal_ips"], 3),
             script_vs_ideal=round(ips["script"] / ideal["ideal_ips"], 3),
             n2_time_split_per_rank=split,
             same_dice_as_script=all(abs(ours[i] - script_dice[i]) <= 1e-9 for i in ours),
             targets={"n2_steady_vs_script": 1.0, "n2_wall_speed_vs_script": 0.9, "n2_vs_ideal": 0.85})


def isic_extras(work: str, args) -> None:
    """Issue 24's other figures on the ISIC-sized set: the reduced decode (speed on >= 12 MP JPEGs, Dice against
    exact decoding), cost-balanced shards when the large images come last, and peak RSS on 30 MP images."""
    from mpi_infer.loaders.opencv import read_image

    model = demo_model("onnx")
    dataset = os.path.join(work, "data-peers-isic", "dataset.yml")
    ds = load_dataset(dataset)
    big = [ds.sample(i).locations[0] for i in range(len(ds))]
    big = [p for p in big if os.path.getsize(p) and _pixels(p) >= 12e6]
    timing = {}
    for mode, reduce_for in (("exact", None), ("reduced", (192, 192))):
        t0 = time.perf_counter()
        for p in big:
            read_image(p, [], reduce_for)
        timing[mode] = (time.perf_counter() - t0) / max(1, len(big))
    walls, dice = {}, {}
    for mode in ("exact", "reduced"):
        walls[mode], s = run_job(work, f"decode-{mode}", 2, dataset, model, ["--decode", mode])
        with open(os.path.join(work, "runs", f"decode-{mode}", "per_image.csv")) as fh:
            dice[mode] = {int(r["index"]): float(r["dice"]) for r in csv.DictReader(fh)}
    diff = [abs(dice["exact"][i] - dice["reduced"][i]) for i in dice["exact"]]
    emit("decode", images_12mp_or_more=len(big), exact_ms=round(timing["exact"] * 1e3, 1),
         reduced_ms=round(timing["reduced"] * 1e3, 1), speedup=round(timing["exact"] / timing["reduced"], 2),
         target=1.8, run_wall_s={k: round(v, 2) for k, v in walls.items()},
         dice_abs_diff_mean=round(float(np.mean(diff)), 6), dice_abs_diff_max=round(float(np.max(diff)), 6))

    # the large images last (sorted by bytes): by count, rank 1 gets all of them. Each rank bound to its own core,
    # as a rank per host would be (unbound on one host, the early rank's freed core goes to the other's threads)
    order = sorted(range(len(ds)), key=ds.file_bytes)
    sorted_yml = os.path.join(work, "data-peers-isic", "sorted.yml")
    with open(sorted_yml, "w") as fh:
        fh.write("name: isic-sorted\nimages:\n" + "".join(
            f"  - location: {ds.sample(i).locations[0]}\n    label: {ds.sample(i).label_path}\n" for i in order))
    row = {}
    for rule in ("images", "bytes"):
        wall, s = run_job(work, f"shard-{rule}", 2, sorted_yml, model, ["--shard-by", rule],
                          flags=("--bind-to", "core"))
        per = s["timings"]["per_rank"]
        row[rule] = {"wall_s": round(wall, 2), "rank_wall_s": [r["wall_s"] for r in per],
                     "rank_decode_s": [r["decode_s"] for r in per]}
    emit("sharding", set="isic sorted by size, largest last", ranks=2, binding="a core per rank", **row,
         speedup=round(row["images"]["wall_s"] / row["bytes"]["wall_s"], 2))

    huge = os.path.join(work, "data-30mp", "dataset.yml")
    if not os.path.exists(huge):
        _make_30mp(os.path.dirname(huge), args.huge_images)
    rss = {}
    for mode in ("exact", "reduced"):
        _, s = run_job(work, f"30mp-{mode}", 2, huge, model, ["--decode", mode])
        rss[mode] = max(r["peak_rss_mb"] for r in s["timings"]["per_rank"])
    emit("memory-30mp", images=args.huge_images, size="6688x4439", peak_rss_mb_per_rank=rss, target_mb=600)


def _pixels(path: str) -> float:
    from mpi_infer.loaders.imagefiles import read_header

    h = read_header(path, "image")
    return h.width * h.height


def _make_30mp(folder: str, n: int) -> None:
    """n ISIC-style images all at 6688x4439 (ISIC 2018's largest), for the memory figure."""
    import cv2

    from mpi_infer.data import synth

    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    lines = []
    for i in range(n):
        rgb, mask = synth.isic_sample(30, i, size=(6688, 4439))
        cv2.imwrite(os.path.join(folder, "img", f"{i}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        cv2.imwrite(os.path.join(folder, "img", f"{i}_segmentation.png"), mask)
        lines.append(f"  - location: img/{i}.jpg\n    label: img/{i}_segmentation.png\n")
    with open(os.path.join(folder, "dataset.yml"), "w") as fh:
        fh.write("name: isic-30mp\nimages:\n" + "".join(lines))


def statistics_cost(work: str, args) -> None:
    """Issue 21: the statistics' and threshold curve's cost on the 200-image demo, and the CI from 1, 2, 3 ranks."""
    from mpi_infer.tasks.segmentation import threshold_counts

    data = os.path.join(work, "data-stats", "dataset.yml")
    if not os.path.exists(data):
        make_dataset(os.path.dirname(data), SynthSpec(n=200, seed=0))
    model = demo_model("onnx")
    walls: dict[str, list[float]] = {"bootstrap 0": [], "bootstrap 2000": []}
    for _ in range(args.repeats):
        for label in walls:
            wall, _ = run_job(work, "stats", 2, data, model, ["--bootstrap", label.split()[1]])
            walls[label].append(wall)
    rng = np.random.default_rng(0)
    prob = rng.random((8, 192, 192)).astype(np.float32)
    mask = (rng.random((8, 192, 192)) > 0.7).astype(np.uint8) * 255
    t0 = time.perf_counter()
    for _ in range(20):
        threshold_counts(prob, mask)
    curve_ms = (time.perf_counter() - t0) / (20 * 8) * 1e3
    from mpi_infer.tasks.segmentation import boundary_metrics

    lesion = np.zeros((192, 192), np.uint8)
    import cv2

    cv2.circle(lesion, (96, 96), 50, 1, -1)
    t1 = time.perf_counter()
    for _ in range(50):
        boundary_metrics(np.roll(lesion, 3, axis=1), lesion, 2.0, "worst")
    boundary_ms = (time.perf_counter() - t1) / 50 * 1e3
    cis = {}
    for n in (1, 2, 3):
        _, s = run_job(work, f"stats-{n}", n, data, model)
        cis[n] = s["statistics"]["dice"]["ci95"]
    med = {k: float(np.median(v)) for k, v in walls.items()}
    emit("statistics", images=200, wall_s={k: round(v, 3) for k, v in med.items()},
         bootstrap_added=round(med["bootstrap 2000"] / med["bootstrap 0"] - 1, 4),
         curve_ms_per_image=round(curve_ms, 3),
         curve_share_of_wall=round(curve_ms * 200 / 1e3 / 2 / med["bootstrap 0"], 4), target=0.05,
         boundary_ms_per_image=round(boundary_ms, 2),
         dice_ci95=cis[1], dice_ci_width=round(cis[1][1] - cis[1][0], 5),
         identical_for_n_1_2_3=cis[1] == cis[2] == cis[3])


def _run_allowing(n: int, args: list[str], env: dict | None = None, flags: tuple[str, ...] = ()
                  ) -> tuple[float, int, str]:
    """mpirun that may fail: (wall, exit code, stderr)."""
    wall, proc = mpirun(n, args, env, flags, check=False)
    return wall, proc.returncode, proc.stderr


def faults(work: str, args) -> None:
    """Issue 23: stall detection vs --stall-timeout, the watchdog's cost, --fault-tolerant against a clean run and
    against kill + --resume, and random kills under --fault-tolerant (restarts, identical results)."""
    import random

    from mpi_infer.mpi.watchdog import Watchdog

    data = os.path.join(work, "data-faults", "dataset.yml")
    if not os.path.exists(data):
        make_dataset(os.path.dirname(data), SynthSpec(n=args.peer_images, seed=5))
    model = demo_model("onnx")
    base = ["run", "--dataset", data, "--model", model, "--split", "all", "--quiet", "--batch-size", "8"]

    def out(name: str) -> list[str]:
        path = os.path.join(work, "runs", name)
        shutil.rmtree(path, ignore_errors=True)
        return ["--out", path]

    # 1. a rank stopped after 2 batches: how long until the job ends, against the timeout
    clean_wall, code, _ = _run_allowing(3, [*base, *out("stall-clean")])
    rows = []
    for timeout in (2, 4, 8):
        wall, code, err = _run_allowing(3, [*base, *out(f"stall-{timeout}"), "--stall-timeout", str(timeout)],
                                        env={"MPI_INFER_FAULT": "stop:rank=1:after=16"})
        rows.append({"stall_timeout_s": timeout, "exit": code, "wall_s": round(wall, 2),
                     "named_the_rank": "rank 1 (host" in err})
    # 2. the watchdog's cost per batch (the beat a batch makes) and the progress messages' per batch
    dog = Watchdog(0, 600, abort=lambda code: None)
    t0 = time.perf_counter()
    for _ in range(100_000):
        dog.beat()
    beat_us = (time.perf_counter() - t0) / 100_000 * 1e6
    dog.stop()
    s = run_summary(os.path.join(work, "runs", "stall-clean"))
    per = s["timings"]["per_rank"]
    batches = sum(-(-r["images"] // 8) for r in per)
    emit("stall_detection", images=args.peer_images, ranks=3, clean_wall_s=round(clean_wall, 2), runs=rows,
         watchdog_beat_us=round(beat_us, 3),
         progress_ms_per_batch=round(sum(r["progress_s"] for r in per) / batches * 1e3, 4))

    # 3. one rank killed halfway through its shard: --fault-tolerant vs a clean run vs kill + --resume
    half = args.peer_images // 3 // 2
    walls: dict[str, list[float]] = {"clean": [], "clean_ulfm": [], "fault_tolerant_kill": [],
                                     "kill_then_resume": []}
    for _ in range(args.repeats):
        w, c, _ = _run_allowing(3, [*base, *out("ft-clean")])
        walls["clean"].append(w)
        w, c, _ = _run_allowing(3, [*base, *out("ft-clean-ulfm"), "--fault-tolerant"], flags=("--with-ft", "ulfm"))
        walls["clean_ulfm"].append(w)
        w, c, _ = _run_allowing(3, [*base, *out("ft-kill"), "--fault-tolerant"], flags=("--with-ft", "ulfm"),
                                env={"MPI_INFER_FAULT": f"kill:rank=1:after={half}"})
        assert c == 0, c
        walls["fault_tolerant_kill"].append(w)
        o = out("ft-resume")
        w1, c1, _ = _run_allowing(3, [*base, *o], env={"MPI_INFER_FAULT": f"kill:rank=1:after={half}"})
        w2, c2, _ = _run_allowing(3, [*base, *o, "--resume"])
        assert c1 != 0 and c2 == 0, (c1, c2)
        walls["kill_then_resume"].append(w1 + w2)
    med = {k: round(float(np.median(v)), 2) for k, v in walls.items()}
    same = _rows(os.path.join(work, "runs", "ft-kill")) == _rows(os.path.join(work, "runs", "ft-clean"))
    ft = run_summary(os.path.join(work, "runs", "ft-kill"))["fault_tolerance"]
    emit("fault_tolerant", images=args.peer_images, ranks=3, killed="rank 1 halfway through its shard",
         wall_s=med, ft_over_clean=round(med["fault_tolerant_kill"] / med["clean"], 3),
         ft_over_kill_resume=round(med["fault_tolerant_kill"] / med["kill_then_resume"], 3),
         ulfm_overhead=round(med["clean_ulfm"] / med["clean"] - 1, 3), rerun_images=ft["rerun_images"],
         detected_after_s=ft["lost_ranks"][0]["detected_after_s"], per_image_equal_to_clean=same,
         note="kill + resume counts two mpirun launches here; on an MPIJob each retry also pays pod start-up")

    # 4. chaos: seeded random kills of 1-2 workers at random points, either schedule
    rnd = random.Random(23)
    trials = []
    for trial in range(6):
        n = rnd.choice((3, 4))
        lost = sorted(rnd.sample(range(1, n), rnd.choice((1, 2)) if n == 4 else 1))
        fault = ";".join(f"kill:rank={r}:after={rnd.randrange(0, args.peer_images // n)}" for r in lost)
        schedule = rnd.choice(("static", "dynamic"))
        o = out(f"chaos-{trial}")
        w, c, _ = _run_allowing(n, [*base, *o, "--fault-tolerant", "--schedule", schedule],
                                flags=("--with-ft", "ulfm"), env={"MPI_INFER_FAULT": fault})
        ok = c == 0 and _rows(o[1]) == _rows(os.path.join(work, "runs", "ft-clean"))
        trials.append({"ranks": n, "killed": lost, "schedule": schedule, "exit": c, "identical": ok,
                       "wall_s": round(w, 2)})
    emit("chaos_fault_tolerant", trials=trials, restarts=0, all_identical=all(t["identical"] for t in trials))


def _variants(work: str) -> list[str]:
    """Three real models of one architecture: the demo SegNet and two with its last bias shifted."""
    import onnx
    from onnx import numpy_helper

    folder = os.path.join(work, "models-mm")
    os.makedirs(folder, exist_ok=True)
    paths = [demo_model("onnx")]
    for name, shift in (("low", -1.5), ("high", 1.0)):
        path = os.path.join(folder, f"{name}.onnx")
        if not os.path.exists(path):
            m = onnx.load(demo_model("onnx"))
            for init in m.graph.initializer:
                if init.name == "conv25.bias":
                    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(shift), init.name))
            onnx.save(m, path)
        paths.append(path)
    return paths


def multimodel(work: str, args) -> None:
    """Issue 22: three models in one pass against three separate runs, on the demo set and ISIC-sized JPEGs; the
    decode and forward costs per image that explain the ratio; peak RSS per rank with 3 models and with 1."""
    models = _variants(work)
    sets = {"demo": os.path.join(work, "data-demo", "dataset.yml"),
            "isic": os.path.join(work, "data-peers-isic", "dataset.yml")}
    if not os.path.exists(sets["isic"]):
        make_dataset(os.path.dirname(sets["isic"]), SynthSpec(n=args.isic_images, seed=24, preset="isic"))
    for label, dataset in sets.items():
        one, separate = [], []
        summaries: dict[str, dict] = {}
        for _ in range(args.repeats):
            extra = [a for k, m in enumerate(models[1:]) for a in ("--model", f"m{k + 1}={m}")]
            wall, s = run_job(work, f"mm-{label}-one", 2, dataset, f"m0={models[0]}", extra)
            one.append(wall)
            summaries["one"] = s
            walls = []
            for k, m in enumerate(models):
                w, s1 = run_job(work, f"mm-{label}-sep{k}", 2, dataset, m)
                walls.append(w)
                summaries[f"sep{k}"] = s1
            separate.append(sum(walls))
        s, s1 = summaries["one"], summaries["sep0"]
        per = s1["timings"]["per_rank"]
        images = sum(r["images"] for r in per)
        decode_ms = sum(r["decode_s"] + r["preprocess_s"] for r in per) / images * 1e3
        forward_ms = sum(r["predict_s"] for r in per) / images * 1e3
        ratio = float(np.median(one)) / float(np.median(separate))
        # per image, in one pass: decode once + K forwards; separately: K decodes + K forwards (and K start-ups)
        model_ratio = (decode_ms + 3 * forward_ms) / (3 * (decode_ms + forward_ms))
        emit("several_models", set=label, images=images, models=3, ranks=2,
             one_pass_wall_s=round(float(np.median(one)), 2), three_runs_wall_s=round(float(np.median(separate)), 2),
             ratio=round(ratio, 3), target=0.6,
             decode_ms_per_image=round(decode_ms, 2), forward_ms_per_image_per_model=round(forward_ms, 2),
             ratio_from_costs=round(model_ratio, 3),
             peak_rss_mb_3_models=max(r["peak_rss_mb"] for r in s["timings"]["per_rank"]),
             peak_rss_mb_1_model=max(r["peak_rss_mb"] for r in per),
             same_scores_as_separate=_rows(os.path.join(work, "runs", f"mm-{label}-one"), SCORE_KEYS, "m0")
             == _rows(os.path.join(work, "runs", f"mm-{label}-sep0"), SCORE_KEYS))


def planning(work: str, args) -> None:
    from bench_plan import write_yaml

    path = os.path.join(work, "plan-1m.yml")
    if not os.path.exists(path):
        write_yaml(path, 1_000_000)
    wall, proc = mpirun(2, ["run", "--dataset", path, "--model", "none", "--out", os.path.join(work, "x"),
                            "--split", "all", "--dry-run", "--quiet"])
    m = re.search(r"load\+validate\+plan ([\d.]+) s, scatter ([\d.]+) s", proc.stdout)
    prep, scat = float(m.group(1)), float(m.group(2))
    emit("planning", images=1_000_000, ranks=2, yaml_mb=round(os.path.getsize(path) / 1e6, 1),
         load_validate_plan_s=prep, scatter_s=scat, total_s=round(prep + scat, 3), target_s=5.0,
         command_wall_s=round(wall, 2))


def memory(work: str, args) -> None:
    """Peak RSS per rank for 1k vs 100k images, with a tiny model so the run is bookkeeping-bound."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    tiny = os.path.join(work, "tiny.onnx")
    w = numpy_helper.from_array(np.full((1, 3, 1, 1), 0.3, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["output"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1, 32, 32])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tiny)
    src = make_dataset(os.path.join(work, "tiny-src"), SynthSpec(n=50, seed=5, min_size=(32, 32),
                                                                max_size=(40, 40)))
    base = load_dataset(src)
    results = {}
    for n in (1_000, 100_000):
        lines = ["images:"]
        for i in range(n):
            s = base.sample(i % len(base))
            lines.append(f"  - {{location: {s.locations[0]}, label: {s.label_path}}}")
        lines.append("split:\n  test: [" + ", ".join(map(str, range(n))) + "]")
        path = os.path.join(work, f"mem-{n}.yml")
        with open(path, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        _, s = run_job(work, f"mem-{n}", 2, path, tiny, ["--size", "32", "32", "--batch-size", "64"])
        results[n] = {r["rank"]: r["peak_rss_mb"] for r in s["timings"]["per_rank"]}
    # The per-image state a worker rank must hold: its descriptors (a WorkList) and its results (a
    # RecordTable), measured on this run's own paths. Rank 0 also holds every rank's lists and records.
    import pickle
    import tracemalloc

    from mpi_infer.data.dataset import load_dataset as _load
    from mpi_infer.mpi.gather import RecordTable

    big = _load(os.path.join(work, "mem-100000.yml"))
    half = list(range(50_000))
    sent = pickle.dumps(big.work_list({"test": half}), protocol=pickle.HIGHEST_PROTOCOL)
    tracemalloc.start()
    received = pickle.loads(sent)  # as the scatter delivers it: the message buffer and the objects
    table = RecordTable(1)
    table.extend({"index": i, "status": "ok", "iou": 0.5, "dice": 0.6, "tp": 1, "fp": 2, "fn": 3, "error": ""}
                 for i in half)
    reply = pickle.dumps(table, protocol=pickle.HIGHEST_PROTOCOL)  # the gather's message
    state_mb = (tracemalloc.get_traced_memory()[1] + len(sent)) / 2**20
    tracemalloc.stop()
    del received, table, reply, big, sent
    for rank in (0, 1):
        small, grown = results[1_000][rank], results[100_000][rank]
        emit("memory", rank=rank, peak_rss_1k_mb=small, peak_rss_100k_mb=grown,
             per_image_state_mb=round(state_mb, 1) if rank else None,
             growth_bytes_per_image=round((grown - small) * 2**20 / 49_500),
             rss_less_per_image_state_ratio=round((grown - state_mb) / small, 3) if rank else None,
             raw_ratio=round(grown / small, 3), target="within 10% (ratio <= 1.10), apart from per-image state",
             note=("worker: descriptors + compact results, measured" if rank else
                   "rank 0 also holds the dataset, every descriptor and, after the gather, every full record"))


def image_size() -> None:
    """The CPU image's size and what weighs in it; skipped (saying why) without root and podman."""
    if os.geteuid() != 0 or not shutil.which("podman"):
        emit("image", skipped="needs root and podman (scripts/build_images.sh)")
        return
    built = subprocess.run(["bash", os.path.join(ROOT, "scripts", "build_images.sh"), "cpu"], capture_output=True,
                           text=True)
    if built.returncode != 0:
        emit("image", skipped=f"scripts/build_images.sh cpu -> {built.returncode}: {built.stderr.strip()[-300:]}")
        return
    info = json.loads(built.stdout.strip().splitlines()[-1])
    du = subprocess.run(["podman", "run", "--rm", info["tag"], "sh", "-c",
                         "du -sm /opt/venv; du -sm /opt/venv/lib/python3*/site-packages/* | sort -rn | head -8"],
                        capture_output=True, text=True, check=True).stdout.split("\n")
    sizes = [line.split("\t") for line in du if "\t" in line]
    emit("image", tag=info["tag"], size_mb=info["size_mb"], venv_mb=int(sizes[0][0]),
         heaviest_packages_mb={os.path.basename(path): int(mb) for mb, path in sizes[1:]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench"))
    ap.add_argument("--images", type=int, default=240, help="images for the demo-model runs")
    ap.add_argument("--full-images", type=int, default=64, help="images for the full-width SegNet runs")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--ranks", type=int, nargs="+", default=None)
    ap.add_argument("--dh-ranks", type=int, default=2)
    ap.add_argument("--scaling-model", choices=("full", "demo"), default="full")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats of the ONNX-engine stack runs")
    ap.add_argument("--peer-images", type=int, default=400, help="synthetic images for the peers comparison")
    ap.add_argument("--isic-images", type=int, default=60, help="ISIC-sized images for the peers comparison")
    ap.add_argument("--huge-images", type=int, default=6, help="6688x4439 images for the memory figure")
    ap.add_argument("--peer-flags", nargs="*", default=[], help="extra mpi_infer flags for the peers runs")
    ap.add_argument("--only", nargs="+", default=["efficiency", "scaling", "deephealth", "dynamic", "planning",
                                                    "memory", "stacks", "peers", "statistics", "faults",
                                                    "multimodel", "image"])
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    args.ranks = args.ranks or [n for n in (1, 2, 4, 8, 16) if n <= cores]
    work = args.out
    os.makedirs(work, exist_ok=True)
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    info = machine()
    emit("machine", **info)
    if "image" in args.only:
        image_size()
    if set(args.only) <= {"image"}:
        return

    demo_data = os.path.join(work, "data-demo", "dataset.yml")
    full_data = os.path.join(work, "data-full", "dataset.yml")
    if not os.path.exists(demo_data):
        make_dataset(os.path.dirname(demo_data), SynthSpec(n=args.images, seed=99))
    if not os.path.exists(full_data):
        make_dataset(os.path.dirname(full_data), SynthSpec(n=args.full_images, seed=98))
    full_bin = os.path.join(work, "segnet_full.bin")
    full_onnx = os.path.join(work, "segnet_full.onnx")
    if not os.path.exists(full_onnx):
        layers = random_layers(segnet_widths(1), seed=0)
        write_records(full_bin, records_from_layers(layers))
        with open(full_onnx, "wb") as fh:
            fh.write(build_onnx(layers, 192, 192).SerializeToString())
    models = {"full": (full_onnx, full_data), "demo": (demo_model("onnx"), demo_data)}

    scaling_rows: list[dict] = []
    if "efficiency" in args.only:
        efficiency(work, models, args)
    if "scaling" in args.only:
        scaling_rows = scaling(work, models, args)
    if "deephealth" in args.only:
        deephealth(work, models, args)
    if "dynamic" in args.only:
        dynamic(work, models, args)
    if "planning" in args.only:
        planning(work, args)
    if "memory" in args.only:
        memory(work, args)
    if "stacks" in args.only:
        stacks(work, models, args)
    if "peers" in args.only:
        peers(work, args)
        isic_extras(work, args)
    if "statistics" in args.only:
        statistics_cost(work, args)
    if "faults" in args.only:
        faults(work, args)
    if "multimodel" in args.only:
        multimodel(work, args)

    with open(os.path.join(work, "results.json"), "w") as fh:
        json.dump({"machine": info, "figures": RESULTS}, fh, indent=2)
    if scaling_rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ranks = [r["ranks"] for r in scaling_rows]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(ranks, [r["images_per_s"] for r in scaling_rows], "o-", label="mpi_infer")
        ax.axhline(scaling_rows[0]["best_single_process_ips"], color="grey", linestyle="--",
                   label="best single process")
        ax.set_xlabel("ranks")
        ax.set_ylabel("images/s")
        ax.set_title(f"{args.scaling_model} SegNet 192x192 on {info['cores']} cores\n{info['cpu']}", fontsize=9)
        ax.legend()
        fig.savefig(os.path.join(work, "scaling.png"), dpi=100, bbox_inches="tight")
    print(f"wrote {os.path.join(work, 'results.json')}", flush=True)


if __name__ == "__main__":
    main()
