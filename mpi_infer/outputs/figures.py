"""report.html's figures, drawn with matplotlib (headless) and inlined as base64 PNGs."""

from __future__ import annotations

import base64
import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from ..loaders.imagefiles import DEFAULT_MAX_PIXELS, ImageFault, check_pixels
from ..tasks.masks import MASK_DIR, mask_file_name

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
    # Names come from the dataset and the command line (classes, splits, models, groups): a '$' in one must be
    # drawn as it is, never parsed as mathtext (which raised and lost the report).
    matplotlib.rcParams["text.parse_math"] = False
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
    except Exception as exc:  # noqa: BLE001 - a format PIL does not read: OpenCV's full decode, within budget
        if type(exc).__name__ == "DecompressionBombError":
            return None
        try:
            check_pixels(image_path, "image", DEFAULT_MAX_PIXELS)  # never a bomb's full decode for a thumbnail
        except (ImageFault, OSError):
            return None
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
    fig.tight_layout()  # the axis labels inside the picture
    return _png(fig)


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
    fig.tight_layout()  # the rotated class names inside the picture
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
    fig.tight_layout()
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
