"""``report.html``: one self-contained page (no network) that shows what a run found.

Figures are matplotlib PNGs embedded as data URIs: Dice and IoU histograms per split, per-rank images
and throughput, and a contact sheet of the worst and best images with the ground-truth (green) and
predicted (magenta) contours drawn over the image. Predicted contours need the run's ``--save-masks``
(``run --report`` turns it on).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from ..atomic import read_input, write_text
from ..errors import clip
from ..tasks import task_for
from ..tasks.classification import CLASSIFICATION_COLUMNS
from ..tasks.segmentation import CSV_CORE_COLUMNS
from .results import MASK_DIR, mask_file_name

GT_COLOUR = (0, 200, 0)  # RGB
PRED_COLOUR = (230, 0, 230)
TILE = 220


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)  # the figures are laid out with tight_layout: one draw, not two
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def histograms(rows: list[dict[str, str]], splits: list[str]) -> str:
    plt = _plt()
    scored = [r for r in rows if r["dice"] != ""]
    present = [s for s in splits if any(r["split"] == s for r in scored)] or ["(none)"]
    fig, axes = plt.subplots(len(present), 2, figsize=(10, 2.6 * len(present)), squeeze=False)
    bins = np.linspace(0, 1, 41)
    for k, split in enumerate(present):
        for j, metric in enumerate(("dice", "iou")):
            ax = axes[k][j]
            values = [float(r[metric]) for r in scored if r["split"] == split]
            ax.hist(values, bins=bins, color="#3b75af" if metric == "dice" else "#e1812c", edgecolor="white")
            mean = float(np.mean(values)) if values else float("nan")
            ax.axvline(mean, color="black", linestyle="--", linewidth=1)
            ax.set_title(f"{split}: {'IoU' if metric == 'iou' else 'Dice'} "
                         f"(n={len(values)}, mean {mean:.3f})", fontsize=10)
            ax.set_xlim(0, 1)
            ax.set_ylabel("images")
    fig.tight_layout()
    return _png(fig)


def rank_chart(per_rank: list[dict[str, Any]]) -> str:
    plt = _plt()
    ranks = [r["rank"] for r in per_rank]
    images = [r["images"] for r in per_rank]
    rate = [r["images"] / r["wall_s"] if r.get("wall_s") else 0.0 for r in per_rank]
    fig, axes = plt.subplots(1, 3, figsize=(14, 2.8))
    axes[0].bar(ranks, images, color="#3b75af")
    axes[0].set_title("images per rank", fontsize=10)
    axes[0].set_xlabel("rank")
    axes[1].bar(ranks, rate, color="#55a868")
    axes[1].set_title("throughput per rank (images/s of its own wall time)", fontsize=10)
    axes[1].set_xlabel("rank")
    # where each rank's time went: the loader threads' CPU (decode, preprocess) beside the main thread's
    # forward, scoring and waiting for images (seconds; the loader's run alongside the others)
    parts = (("decode_s", "decode (loader CPU)", "#8c564b"), ("preprocess_s", "preprocess (loader CPU)", "#c49c94"),
             ("predict_s", "forward", "#3b75af"), ("score_s", "scoring", "#55a868"), ("wait_s", "waiting", "#bbbbbb"))
    width = 0.16
    for k, (key, label, colour) in enumerate(parts):
        axes[2].bar(np.asarray(ranks) + (k - 2) * width, [r.get(key) or 0.0 for r in per_rank], width=width,
                    color=colour, label=label)
    axes[2].set_title("time per rank (s)", fontsize=10)
    axes[2].set_xlabel("rank")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xticks(ranks if len(ranks) <= 32 else ranks[:: max(1, len(ranks) // 16)])
    fig.tight_layout()
    return _png(fig)


def segmentation_figures(summary: dict[str, Any], rows: list[dict[str, str]], run_dir: str, k: int
                         ) -> tuple[list[tuple[str, str, str]], bool]:
    """Histograms, every image's scores with the means' CIs, the threshold curve, and the worst and best images
    (and whether predicted masks were saved for their contours)."""
    scored = sorted((r for r in rows if r["dice"] != ""), key=lambda r: (float(r["dice"]), int(r["index"])))
    worst = scored[:k]
    best = list(reversed(scored[-k:])) if len(scored) > k else []
    figures = [("Dice and IoU per image, by split", histograms(rows, summary.get("splits", [])), "histograms")]
    for title, png, fid in (("Every image's scores, and the means' 95% CIs", distribution_figure(summary, rows),
                             "distributions"),
                            ("The threshold curve", threshold_curve_figure(summary), "curve")):
        if png:
            figures.append((title, png, fid))
    for title, picked, fid in ((f"Worst {len(worst)} images", worst, "worst"),
                               (f"Best {len(best)} images", best, "best")):
        png = contact_sheet(run_dir, picked, title)
        if png:
            figures.append((title, png, fid))
    return figures, os.path.isdir(os.path.join(run_dir, MASK_DIR))


def thumbnail_rgb(image_path: str) -> np.ndarray | None:
    """The image as RGB, decoded no larger than a tile needs: a JPEG is scaled in the DCT domain (PIL's draft,
    libjpeg's 1/2..1/8 decode), so a 12-megapixel photograph costs a few milliseconds, not a full decode."""
    try:
        from PIL import Image, ImageOps

        with Image.open(image_path) as im:
            im.draft("RGB", (TILE, TILE))
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))  # displayed as OpenCV decodes it
    except Exception:  # noqa: BLE001 - a format PIL does not read: OpenCV's full decode
        img = cv2.imread(image_path, cv2.IMREAD_COLOR)
        return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def overlay(image_path: str, gt_path: str, pred_path: str | None) -> tuple[np.ndarray | None, bool]:
    """The image (RGB) with ground-truth and predicted contours, scaled to a TILE-wide tile, and whether the
    ground truth is empty (such a tile has no green contour, and upstream's policy scores it 1 or about 0)."""
    rgb = thumbnail_rgb(image_path)
    if rgb is None:
        return None, False
    empty_gt = False
    scale = TILE / max(rgb.shape[:2])
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    tile = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    for path, colour in ((gt_path, GT_COLOUR), (pred_path, PRED_COLOUR)):
        if not path or not os.path.exists(path):
            continue
        mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if mask is None:
            continue
        binary = (mask >= 128).astype(np.uint8)
        if path == gt_path:
            empty_gt = not binary.any()
        mask = cv2.resize(binary, size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(tile, contours, -1, colour, 2)
    return tile, empty_gt


def contact_sheet(run_dir: str, picked: list[dict[str, str]], title: str) -> str | None:
    plt = _plt()
    if not picked:
        return None
    cols = min(4, len(picked))
    rows_n = (len(picked) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 3.0 * rows_n), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    def tile_for(r: dict[str, str]) -> tuple[np.ndarray | None, bool]:
        loc = r["location"].split(";")[0]
        return overlay(loc, r["label"], os.path.join(run_dir, MASK_DIR, mask_file_name(int(r["index"]), loc)))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # OpenCV decodes without the GIL
        tiles = list(pool.map(tile_for, picked))
    for ax, r, (tile, empty_gt) in zip(axes.ravel(), picked, tiles):
        if tile is not None:
            ax.imshow(tile)
        note = "\nempty ground truth: 1 if nothing is predicted" if empty_gt else ""
        ax.set_title(f"#{r['index']} {r['split']}  Dice {float(r['dice']):.3f}{note}", fontsize=9)
    fig.suptitle(title + "   (green: ground truth, magenta: prediction)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _table(summary: dict[str, Any]) -> str:
    def cell(v: Any) -> str:
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    head = ("split", "selected", "scored", "unscored", "failed", "mean IoU", "mean Dice", "global IoU",
            "global Dice")
    body = []
    for name, s in [*summary.get("per_split", {}).items(), ("all", summary)]:
        im, m = s["images"], s["metrics"]
        vals = (name, im["selected"], im["scored"], im["unscored"], im["failed"], m["mean_iou"], m["mean_dice"],
                m["global_iou"], m["global_dice"])
        cls = ' class="total"' if name == "all" else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in vals) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(body) + "</tbody></table>")


def load_run(run_dir: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """summary.json and per_image.csv of a finished run, checked: anything else is a ConfigError (exit 12)
    naming the file and what was expected, never a traceback."""
    from ..errors import ConfigError

    if not os.path.isdir(run_dir):
        what = "does not exist" if not os.path.exists(run_dir) else "is not a folder"
        raise ConfigError(f"{run_dir}: {what}; point `report` at a finished run's --out folder")
    path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(path):
        raise ConfigError(f"{run_dir}: no summary.json here; point `report` at a finished run's --out")
    try:
        summary = json.loads(read_input(path, ConfigError, "summary.json", max_bytes=1 << 30).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not the JSON mpi_infer writes ({clip(str(exc), 120)})") from None
    if not isinstance(summary, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(summary).__name__}")
    for name, s in [("(top level)", summary), *((f"per_split.{k}", v) for k, v in
                                                 (summary.get("per_split") or {}).items())]:
        if not (isinstance(s, dict) and isinstance(s.get("images"), dict) and isinstance(s.get("metrics"), dict)):
            raise ConfigError(f"{path}: {clip(name, 80)} lacks the 'images' and 'metrics' objects of a summary")
    if not isinstance(summary.get("per_split", {}), dict):
        raise ConfigError(f"{path}: 'per_split' is not an object")
    csv_path = os.path.join(run_dir, "per_image.csv")
    try:
        text = read_input(csv_path, ConfigError, "per_image.csv", max_bytes=1 << 32).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{csv_path}: not UTF-8 text (byte {exc.start}); "
                          f"not a per_image.csv mpi_infer wrote") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    classification = summary.get("task") == "classification"
    columns = CLASSIFICATION_COLUMNS if classification else CSV_CORE_COLUMNS  # runs of 0.2 still report
    numbers = ("index", "probability", "true_probability") if classification else ("index", "iou", "dice")
    if reader.fieldnames is None or not set(columns) <= set(reader.fieldnames):
        raise ConfigError(f"{csv_path}: expected the columns {', '.join(columns)}")
    rows = list(reader)
    for line, r in enumerate(rows, start=2):
        try:
            int(r["index"])
            for key in numbers[1:]:
                float(r[key] or 0)
        except (TypeError, ValueError):
            raise ConfigError(f"{csv_path}: line {line}: {', '.join(numbers)} must be numbers") from None
    if classification and not (isinstance(summary.get("classes"), list) and summary["classes"]):
        raise ConfigError(f"{path}: a classification summary without its 'classes'")
    return summary, rows


def write_report(run_dir: str, k: int = 8) -> str:
    """Write ``<run_dir>/report.html`` from summary.json and per_image.csv; return its path."""
    summary, rows = load_run(run_dir)
    all_rows = rows
    if summary.get("models"):  # several models: the page is the first model's, plus a section comparing them
        first = next(iter(summary["models"]))
        rows = [r for r in rows if r.get("model") == first]
    task = task_for(summary.get("task", "segmentation"))
    classification = task.name == "classification"
    per_rank = summary.get("timings", {}).get("per_rank", [])
    figures, has_masks = task.report_figures(summary, rows, run_dir, k)
    if per_rank:
        figures.insert(1, ("Ranks", rank_chart(per_rank), "ranks"))
    failed = [r for r in rows if r["status"] == "failed"]
    prof = summary.get("profile", {})
    norm = f"mean {prof.get('mean')}, std {prof.get('std')}" if prof.get("mean") else "RGB/255, no mean/std"
    meta = [
        ("dataset", summary.get("dataset")), ("model", summary.get("model")),
        ("model sha256", summary.get("model_sha256", "")[:16]), ("backend", summary.get("backend", {}).get("backend")),
        ("profile", f"{prof.get('name')}: {prof.get('height')}x{prof.get('width')} {prof.get('interpolation')}, "
                    f"{norm}"),
        ("model output", ", ".join(f"{k} {v}" for k, v in (summary.get("output") or {}).items() if v is not None)),
        ("arch", summary.get("arch") or "(from the ONNX file)"),
        *([("classes", ", ".join(summary.get("classes", [])))] if classification else
          [("threshold", summary.get("threshold")), ("empty ground truth", summary.get("empty_gt_policy"))]),
        ("ranks / hosts", f"{summary.get('world_size')} / {len(summary.get('hosts', []))}"),
        ("wall time", f"{summary.get('timings', {}).get('total_s', 0):.2f} s"),
        ("exit code", f"{summary.get('exit_code')}: {summary.get('exit_meaning')}"),
    ]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        # self-contained: nothing may be fetched from anywhere
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        "<title>mpi_infer report</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}",
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}",
        "td:first-child,th:first-child{text-align:left}tr.total{font-weight:bold;background:#f4f4f4}",
        "dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px}dt{font-weight:bold}",
        "figure{margin:1.5em 0}img{max-width:100%}.note{color:#a33}",
        "</style></head><body>",
        "<h1>mpi_infer report</h1>",
        task.report_table(summary),
        "<dl>" + "".join(f"<dt>{html.escape(str(a))}</dt><dd>{html.escape(str(b))}</dd>" for a, b in meta) + "</dl>",
    ]
    parts.extend(models_section(summary, all_rows))
    if not has_masks:
        parts.append("<p class='note'>Predicted masks were not saved (run with --save-masks or --report); "
                     "the contact sheets show ground truth only.</p>")
    for title, png, fid in figures:
        parts.append(f"<figure id='{fid}'><figcaption><h2>{html.escape(title)}</h2></figcaption>"
                     f"<img alt='{html.escape(title)}' src='data:image/png;base64,{png}'></figure>")
    if summary.get("warnings"):
        parts.append(f"<h2>Warnings ({len(summary['warnings'])})</h2><ul>" + "".join(
            f"<li>{html.escape(str(w))}</li>" for w in summary["warnings"][:200]) + "</ul>")
    converted = [r for r in rows if r["status"] == "converted"]
    if converted:
        parts.append(f"<h2>Converted images ({len(converted)})</h2><p>Scored after a conversion ECVL would make "
                     "too (the note says which).</p><table><tr><th>index</th><th>location</th><th>note</th></tr>"
                     + "".join(f"<tr><td>{r['index']}</td><td>{html.escape(r['location'])}</td>"
                               f"<td>{html.escape(r['error'])}</td></tr>" for r in converted[:200]) + "</table>")
    if failed:
        parts.append(f"<h2>Failed images ({len(failed)})</h2><table><tr><th>index</th><th>location</th>"
                     "<th>error</th></tr>" + "".join(
                         f"<tr><td>{r['index']}</td><td>{html.escape(r['location'])}</td>"
                         f"<td>{html.escape(r['error'])}</td></tr>" for r in failed[:200]) + "</table>")
    # marks the page once every figure has decoded (the browser test reads it back from the DOM)
    parts.append("<script>window.addEventListener('load',function(){var im=document.images,n=0;"
                 "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)n++;}"
                 "document.body.setAttribute('data-figures-loaded',n+'/'+im.length);});</script>")
    parts.append("</body></html>")
    path = os.path.join(run_dir, "report.html")
    write_text(path, "\n".join(parts))
    return path


def _cell(v: Any) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else html.escape(str(v)))


def models_section(summary: dict[str, Any], rows: list[dict[str, str]]) -> list[str]:
    """Several models: their table (overall and per split), the paired comparisons, a scatter of the per-image
    headline metric of the two best; with --tta, the least certain images."""
    parts: list[str] = []
    models = summary.get("models") or {}
    classification = summary.get("task") == "classification"
    if models:
        best = summary.get("best_model", {})
        metric = best.get("metric", "mean_dice")
        splits = list(next(iter(models.values())).get("per_split", {}))
        head = "".join(f"<th>{html.escape(s)}</th>" for s in ["model", "all", *splits])
        body = "".join(
            f"<tr><td>{html.escape(n)}{' (best)' if n == best.get('all') else ''}</td>"
            f"<td>{_cell(m['metrics'].get(metric))}</td>"
            + "".join(f"<td>{_cell(m['per_split'].get(s, {}).get('metrics', {}).get(metric))}</td>" for s in splits)
            + "</tr>" for n, m in models.items())
        parts.append(f"<h2>Models ({html.escape(metric.replace('_', ' '))})</h2><table><tr>{head}</tr>{body}"
                     "</table><ul>" + "".join(f"<li>{html.escape(c['verdict'])}</li>"
                                             for c in summary.get("comparison", [])) + "</ul>")
        ranked = sorted(models, key=lambda n: -(models[n]["metrics"].get(metric) or -1))
        if len(ranked) >= 2 and not classification:
            png = scatter_figure(rows, ranked[0], ranked[1])
            if png:
                parts.append(f"<figure id='models-scatter'><figcaption><h2>Per-image Dice: {html.escape(ranked[0])}"
                             f" against {html.escape(ranked[1])}</h2></figcaption><img alt='scatter' "
                             f"src='data:image/png;base64,{png}'></figure>")
    uncertain = sorted((r for r in rows if r.get("uncertainty")), key=lambda r: -float(r["uncertainty"]))[:10]
    if uncertain:
        last = "predicted" if classification else "dice"
        parts.append("<h2>Least certain images (--tta flip)</h2><table><tr><th>index</th><th>model</th>"
                     "<th>location</th><th>uncertainty</th><th>" + ("class" if classification else "Dice")
                     + "</th></tr>" + "".join(
                         f"<tr><td>{r['index']}</td><td>{html.escape(r.get('model', ''))}</td>"
                         f"<td>{html.escape(r['location'])}</td><td>{float(r['uncertainty']):.4f}</td>"
                         f"<td>{html.escape(r.get(last, ''))}</td></tr>"
                         for r in uncertain) + "</table>")
    return parts


def scatter_figure(rows: list[dict[str, str]], a: str, b: str) -> str | None:
    da = {r["index"]: float(r["dice"]) for r in rows if r.get("model") == a and r["dice"] != ""}
    db = {r["index"]: float(r["dice"]) for r in rows if r.get("model") == b and r["dice"] != ""}
    both = sorted(set(da) & set(db), key=int)
    if not both:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter([da[i] for i in both], [db[i] for i in both], s=10, alpha=0.6)
    lo = min(min(da[i] for i in both), min(db[i] for i in both))
    ax.plot([lo, 1], [lo, 1], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(f"{a} Dice")
    ax.set_ylabel(f"{b} Dice")
    ax.set_title(f"{len(both)} images; above the line: {b} better", fontsize=9)
    return _png(fig)


def _classification_table(summary: dict[str, Any]) -> str:
    def cell(v: Any) -> str:
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    head = ("split", "selected", "scored", "unscored", "failed", "accuracy", "balanced accuracy", "macro F1",
            "weighted F1", "top-2")
    body = []
    for name, s in [*summary.get("per_split", {}).items(), ("all", summary)]:
        im, m = s["images"], s["metrics"]
        vals = (name, im.get("selected"), im.get("scored"), im.get("unscored"), im.get("failed"), m.get("accuracy"),
                m.get("balanced_accuracy"), m.get("macro_f1"), m.get("weighted_f1"),
                (m.get("top_k_accuracy") or {}).get("2"))
        cls = ' class="total"' if name == "all" else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in vals) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(body) + "</tbody></table>")


def classification_figures(summary: dict[str, Any], rows: list[dict[str, str]], k: int) -> list[tuple[str, str, str]]:
    """The confusion matrix, per-class precision/recall/F1, and the images the model was least sure of."""
    plt = _plt()
    classes = summary["classes"]
    metrics = summary["metrics"]
    cm = np.asarray(metrics.get("confusion_matrix") or np.zeros((len(classes), len(classes))), float)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2.5, 1.0 * len(classes) + 2))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (counts; colour: share of the true class)", fontsize=9)
    figures = [("Confusion matrix", _png(fig), "confusion")]
    png = roc_and_reliability_figure(summary)
    if png:
        figures.append(("ROC curves and the reliability diagram", png, "roc"))
    per = metrics.get("per_class") or {}
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(classes)), 3))
    x = np.arange(len(classes))
    for off, key, colour in ((-0.27, "precision", "#3b75af"), (0, "recall", "#e1812c"), (0.27, "f1", "#55a868")):
        ax.bar(x + off, [per.get(c, {}).get(key, 0) for c in classes], width=0.26, label=key, color=colour)
    ax.set_xticks(x, [f"{c}\n({per.get(c, {}).get('support', 0)})" for c in classes], fontsize=8)
    ax.set_ylim(0, 1.3)
    ax.legend(fontsize=8, ncol=3, loc="upper center")
    ax.set_title("per class (support in brackets)", fontsize=9)
    figures.append(("Per-class precision, recall and F1", _png(fig), "per-class"))
    unsure = sorted((r for r in rows if r["true_probability"] != ""),
                    key=lambda r: (float(r["true_probability"]), int(r["index"])))[:k]
    if unsure:
        cols = min(4, len(unsure))
        fig, axes = plt.subplots((len(unsure) + cols - 1) // cols, cols, figsize=(3.2 * cols, 3.0 *
                                 ((len(unsure) + cols - 1) // cols)), squeeze=False)
        for a in axes.ravel():
            a.axis("off")
        for a, r in zip(axes.ravel(), unsure):
            img = thumbnail_rgb(r["location"].split(";")[0])
            if img is not None:
                a.imshow(img)
            a.set_title(f"#{r['index']} {r['label']} -> {r['predicted']}\np(true) {float(r['true_probability']):.3f}",
                        fontsize=8, color="#a33" if r["label"] != r["predicted"] else "black")
        fig.suptitle(f"The {len(unsure)} images the model was least sure of (lowest probability of the true class)",
                     fontsize=10)
        fig.tight_layout()
        figures.append((f"Least confident {len(unsure)} images", _png(fig), "worst"))
    return figures


SEGMENTATION_METRICS = (("dice", "Dice"), ("iou", "IoU (Jaccard)"), ("thresholded_jaccard", "thresholded Jaccard"),
                        ("sensitivity", "sensitivity"), ("specificity", "specificity"))


def distribution_figure(summary: dict[str, Any], rows: list[dict[str, str]]) -> str | None:
    """Box plots of each per-image metric with every image's point over them, and the mean's bootstrap 95% CI."""
    values = [[float(r[m]) for r in rows if r.get(m, "") != ""] for m, _ in SEGMENTATION_METRICS]
    if not any(values):
        return None
    plt = _plt()
    stats = summary.get("statistics", {})
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.boxplot(values, showfliers=False, widths=0.5)
    jitter = np.random.default_rng(0)
    for k, (v, (key, _)) in enumerate(zip(values, SEGMENTATION_METRICS), start=1):
        ax.scatter(k + jitter.uniform(-0.18, 0.18, len(v)), v, s=6, alpha=0.45, color="#3b75af", zorder=3)
        st = stats.get(key, {})
        ci, mean = st.get("ci95"), st.get("mean")
        if ci and None not in ci and mean is not None:
            ax.errorbar(k + 0.33, mean, yerr=[[mean - ci[0]], [ci[1] - mean]], fmt="o", color="black", capsize=4,
                        markersize=4, zorder=4)
    ax.set_xticks(range(1, len(SEGMENTATION_METRICS) + 1), [label for _, label in SEGMENTATION_METRICS])
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("per image (points), quartiles (boxes), and each mean with its bootstrap 95% CI (black)",
                 fontsize=9)
    fig.tight_layout()
    return _png(fig)


def threshold_curve_figure(summary: dict[str, Any]) -> str | None:
    """Mean and global Dice/IoU against the threshold, per split, with the run's threshold and the best one."""
    curve = summary.get("threshold_curve")
    if not curve:
        return None
    plt = _plt()
    t = curve["thresholds"]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    ax.plot(t, curve["mean_dice"], color="#3b75af", label="mean Dice (all)")
    ax.plot(t, curve["mean_iou"], color="#e1812c", label="mean IoU (all)")
    ax.plot(t, curve["global_dice"], color="#3b75af", linestyle="--", label="global Dice (all)")
    for name, split in summary.get("per_split", {}).items():
        if "threshold_curve" in split:
            ax.plot(t, split["threshold_curve"]["mean_dice"], linewidth=0.8, alpha=0.7, label=f"mean Dice ({name})")
    ax.axvline(summary.get("threshold", 0.5), color="grey", linewidth=1, label="the run's threshold")
    sel = summary.get("threshold_selection", {})
    if sel.get("threshold") is not None:
        ax.axvline(sel["threshold"], color="black", linestyle=":", label=f"best on {sel['picked_on']}")
    ax.set_xlabel("threshold")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("the threshold curve (the same pass; every point exact)", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def roc_and_reliability_figure(summary: dict[str, Any]) -> str | None:
    """One-vs-rest ROC curves per class, and the reliability diagram of the top-class probability."""
    metrics = summary.get("metrics", {})
    per = metrics.get("per_class") or {}
    if not any(v.get("roc") for v in per.values()):
        return None
    plt = _plt()
    fig, (roc, rel) = plt.subplots(1, 2, figsize=(10, 4))
    for name, v in per.items():
        if v.get("roc"):
            roc.plot(v["roc"]["fpr"], v["roc"]["tpr"], label=f"{name} (AUC {v['roc_auc']:.3f})")
    roc.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    roc.set_xlabel("false positive rate")
    roc.set_ylabel("true positive rate")
    roc.legend(fontsize=8)
    roc.set_title(f"ROC, one vs rest (macro AUC {metrics.get('macro_auc') or 0:.3f})", fontsize=9)
    bins = (metrics.get("calibration") or {}).get("bins", [])
    width = 1 / max(1, len(bins))
    centres = [(k + 0.5) * width for k in range(len(bins))]
    rel.bar(centres, [b["accuracy"] or 0 for b in bins], width=width * 0.9, color="#55a868", label="accuracy")
    rel.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    rel.set_xlabel("top-class probability")
    rel.set_ylabel("accuracy in the bin")
    rel.legend(fontsize=8)
    rel.set_title(f"reliability diagram (ECE {(metrics.get('calibration') or {}).get('ece', 0):.3f}, "
                  f"{len(bins)} bins)", fontsize=9)
    fig.tight_layout()
    return _png(fig)
