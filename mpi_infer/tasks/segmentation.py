"""The segmentation task: its head, per-image IoU/Dice (the upstream definitions) and their aggregation from
per-image records.

Upstream (deephealthproject/use-case-pipelines python/utils.py, the Evaluator): at network resolution, binarise the
prediction and the ground truth (scaled to [0, 1]) with ``>= threshold``; IoU = (|P&G| + eps) /
(|P|G| + eps), Dice = (2|P&G| + eps) / (|P| + |G| + eps), eps = 1e-6. So an empty ground truth with an
empty prediction scores 1.0, and with any predicted pixel about 0. "MIoU" is the mean over images.

Aggregation always starts from the per-image records, never from per-rank means: the mean over images
and the global (pooled) IoU/Dice from summed pixel counts, per split and overall.

What a reviewer asks next (``statistics``, ``threshold_curve``): per image also the ISIC 2018 Task 1 set
(Jaccard, thresholded Jaccard: J, or 0 where J < 0.65, whose mean is the ISIC score; Dice; sensitivity,
specificity and pixel accuracy, with the same eps so an empty ground truth is defined), each metric's
distribution and a bootstrap 95% CI (tasks/stats.py), and the pixel counts at thresholds 0.05 ... 0.95 from one
joint histogram of (probability, ground-truth value) per image, so the curve's value at 0.3 is exactly what a
separate run with ``--threshold 0.3`` gives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import ModelError, clip
from ..profiles import Profile
from .output import (
    OutputSpec,
    check_probabilities,
    foreground,
    foreground_channel,
    refuse_double_activation,
    slice_maps,
)
from .protocol import MAX_ERROR_CHARS, STATUSES, ScoreOptions
from .stats import bootstrap_sums, describe, percentile_ci

EPS = 1e-6
EMPTY_GT_POLICY = ("upstream: an image whose ground truth and prediction are both empty scores 1.0; "
                   "empty ground truth with any predicted pixel scores about 0")
SCORED = ("ok", "converted")
ISIC_JACCARD_FLOOR = 0.65  # ISIC 2018 Task 1: a per-image Jaccard under this counts as 0
PER_IMAGE = ("iou", "dice", "thresholded_jaccard", "sensitivity", "specificity", "accuracy")
CURVE = tuple(round(k * 0.05, 2) for k in range(1, 20))  # 0.05, 0.10, ... 0.95
_CURVE32 = np.asarray(CURVE, np.float32)
_CURVE_PADDED = np.concatenate([[-np.inf], _CURVE32, [np.inf]]).astype(np.float32)  # index k: the k-th threshold
# how many curve thresholds a mask value passes, with confusion()'s own float32 arithmetic
_MASK_LEVELS = np.array([np.count_nonzero(np.float32(v) / np.float32(255.0) >= _CURVE32) for v in range(256)],
                        np.int64)


def confusion(prob: np.ndarray, mask: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image (tp, fp, fn) pixel counts.

    prob: [N, H, W] probabilities at network resolution. mask: [N, H, W] uint8 0..255 ground truth.
    """
    pred = prob >= np.float32(threshold)
    gt = (mask.astype(np.float32) / np.float32(255.0)) >= np.float32(threshold)
    tp = np.count_nonzero(pred & gt, axis=(1, 2)).astype(np.int64)
    fp = np.count_nonzero(pred & ~gt, axis=(1, 2)).astype(np.int64)
    fn = np.count_nonzero(~pred & gt, axis=(1, 2)).astype(np.int64)
    return tp, fp, fn


def iou_dice(tp: Any, fp: Any, fn: Any) -> tuple[Any, Any]:
    """IoU and Dice from counts (scalars or arrays), with upstream's eps."""
    tp = np.asarray(tp, np.float64)
    fp = np.asarray(fp, np.float64)
    fn = np.asarray(fn, np.float64)
    iou = (tp + EPS) / (tp + fp + fn + EPS)
    dice = (2 * tp + EPS) / (2 * tp + fp + fn + EPS)
    return iou, dice


def thresholds_passed(prob: np.ndarray) -> np.ndarray:
    """How many CURVE thresholds t each probability passes (p >= t, in float32): floor(20 p) is the count up to
    one either way at the thresholds' own float32 values, so one comparison with each neighbour makes it exact
    (five times faster than a binary search over the 19 thresholds)."""
    guess = np.clip(prob * np.float32(len(CURVE) + 1), 0, len(CURVE)).astype(np.int64)
    return guess + (prob >= _CURVE_PADDED[guess + 1]) - (prob < _CURVE_PADDED[guess])


def threshold_counts(prob: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[N, 19, 3] per-image (tp, fp, fn) at each CURVE threshold, prediction and ground truth binarised at it
    (>=, float32, as ``confusion``). One joint histogram of (thresholds passed by the probability, thresholds
    passed by the mask value) per image; suffix sums over it give every threshold's counts."""
    n = len(prob)
    levels = len(CURVE) + 1
    pb = thresholds_passed(prob.reshape(n, -1))
    mb = _MASK_LEVELS[mask.reshape(n, -1)]
    codes = (np.arange(n)[:, None] * levels + pb) * levels + mb
    joint = np.bincount(codes.ravel(), minlength=n * levels * levels).reshape(n, levels, levels)
    suffix = joint[:, ::-1, ::-1].cumsum(axis=1).cumsum(axis=2)[:, ::-1, ::-1]  # [n, a, b] = sum pb>=a, mb>=b
    k = np.arange(1, levels)
    tp = suffix[:, k, k]
    fp = suffix[:, k, 0] - tp
    fn = suffix[:, 0, k] - tp
    return np.stack([tp, fp, fn], axis=2)


CSV_CORE_COLUMNS = ("index", "split", "location", "label", "rank", "iou", "dice", "status", "error")
CSV_COLUMNS = ("index", "split", "location", "label", "rank", "iou", "dice", "thresholded_jaccard", "sensitivity",
               "specificity", "accuracy", "status", "error")
BOUNDARY = ("hd95", "assd", "nsd")
BOUNDARY_POLICY = {
    "worst": "both masks empty: HD95 0, ASSD 0, NSD 1; one empty: HD95 and ASSD the image diagonal, NSD 0",
    "exclude": "both masks empty: HD95 0, ASSD 0, NSD 1; one empty: left out of the boundary means (counted)"}
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)  # 4-connectivity, as medpy's default


def _border(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels: the mask minus its erosion (outside the image counts as background)."""
    import cv2

    eroded = cv2.erode(mask, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return mask.astype(bool) & ~eroded.astype(bool)


def _distances(from_border: np.ndarray, to_border: np.ndarray) -> np.ndarray:
    """Euclidean distance (pixels) of each ``from_border`` pixel to the nearest ``to_border`` pixel (exact EDT)."""
    import cv2

    dt = cv2.distanceTransform((~to_border).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return dt[from_border].astype(np.float64)


def boundary_metrics(pred: np.ndarray, gt: np.ndarray, tolerance: float, policy: str) -> tuple[float | None, ...]:
    """(HD95, ASSD, NSD at ``tolerance``) of two binary masks, in pixels: HD95 and ASSD as medpy defines them
    (the mask minus its 4-connected erosion, exact Euclidean distances, ASSD the mean over both directions'
    distances), NSD as DeepMind's surface-distance does (``surface_dice``). Empty masks follow a named policy, never a
    silent NaN: both empty is perfect (0, 0, 1); one empty is the worst case (the image diagonal, the diagonal,
    0) or, with ``exclude``, (None, None, None)."""
    p, g = pred.astype(np.uint8), gt.astype(np.uint8)
    p_any, g_any = bool(p.any()), bool(g.any())
    if not p_any and not g_any:
        return 0.0, 0.0, 1.0
    if not (p_any and g_any):
        if policy == "exclude":
            return None, None, None
        diagonal = float(np.hypot(*p.shape))
        return diagonal, diagonal, 0.0
    pb, gb = _border(p), _border(g)
    both = np.concatenate([_distances(pb, gb), _distances(gb, pb)])
    return float(np.percentile(both, 95)), float(both.mean()), surface_dice(p, g, tolerance)


def _contour_cells(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The marching-squares cells (every 2x2 window of the zero-padded mask) that the contour crosses, and the
    contour's length in each: between the midpoints of the cell edges whose two corners differ, so 1/sqrt(2) for
    one corner (or three) inside, 1 for two corners on one side, 2/sqrt(2) for a saddle."""
    m = np.pad(mask.astype(bool), 1)
    tl, tr, bl, br = m[:-1, :-1], m[:-1, 1:], m[1:, :-1], m[1:, 1:]
    top, bottom, left, right = tl != tr, bl != br, tl != bl, tr != br
    crossings = top.astype(np.int8) + bottom + left + right
    straight = (top & bottom) | (left & right)  # two crossings on opposite edges
    length = np.where(crossings == 4, np.sqrt(2.0), np.where(straight, 1.0, np.sqrt(0.5)))
    cells = crossings > 0
    return cells, np.where(cells, length, 0.0)


def surface_dice(pred: np.ndarray, gt: np.ndarray, tolerance: float) -> float:
    """Normalized surface Dice at ``tolerance`` pixels, as DeepMind's surface-distance defines it: the share of
    both contours' length (marching-squares cells, weighted by the length crossing each) lying within
    ``tolerance`` of the other contour."""
    pc, pw = _contour_cells(pred)
    gc, gw = _contour_cells(gt)
    d_pg, d_gp = _distances(pc, gc), _distances(gc, pc)
    near = pw[pc][d_pg <= tolerance].sum() + gw[gc][d_gp <= tolerance].sum()
    return float(near / (pw.sum() + gw.sum()))


def score(prob: np.ndarray, mask: np.ndarray, threshold: float, boundary: tuple[float, str] | None = None
          ) -> list[dict[str, Any]]:
    """Each image's record fields from [N, H, W] probabilities and uint8 masks of one size: the counts at the
    threshold, IoU/Dice, the curve's counts, and (``boundary`` = (tolerance, empty policy)) HD95, ASSD, NSD."""
    tp, fp, fn = confusion(prob, mask, threshold)
    iou, dice = iou_dice(tp, fp, fn)
    curve = threshold_counts(prob, mask)
    pixels = mask[0].size
    out = [{"iou": float(iou[j]), "dice": float(dice[j]), "tp": int(tp[j]), "fp": int(fp[j]), "fn": int(fn[j]),
            "tn": int(pixels - tp[j] - fp[j] - fn[j]), "curve": curve[j].ravel().tolist()} for j in range(len(prob))]
    if boundary is not None:
        gt = mask.astype(np.float32) / np.float32(255.0) >= np.float32(threshold)
        pred = prob >= np.float32(threshold)
        for j, fields in enumerate(out):
            fields.update(zip(BOUNDARY, boundary_metrics(pred[j], gt[j], *boundary)))
    return out


def image_metrics(tp: Any, fp: Any, fn: Any, tn: Any) -> dict[str, np.ndarray]:
    """The ISIC 2018 Task 1 per-image set from pixel counts (eps as upstream, so empty classes are defined)."""
    tp, fp, fn, tn = (np.asarray(x, np.float64) for x in (tp, fp, fn, tn))
    iou, dice = iou_dice(tp, fp, fn)
    return {"iou": iou, "dice": dice, "thresholded_jaccard": np.where(iou >= ISIC_JACCARD_FLOOR, iou, 0.0),
            "sensitivity": (tp + EPS) / (tp + fn + EPS), "specificity": (tn + EPS) / (tn + fp + EPS),
            "accuracy": (tp + tn) / np.maximum(tp + fp + fn + tn, 1.0)}


def statistics(records: list[Mapping[str, Any]], key: str, replicates: int, seed: int,
               group_of: Any = None) -> dict[str, Any]:
    """Each per-image metric's distribution and bootstrap CI, and the pooled IoU/Dice with theirs; the
    bootstrap resamples images, or the groups ``group_of(record)`` names (tasks/stats.py)."""
    rs = sorted((r for r in records if r["status"] in SCORED and r.get("tn") is not None), key=lambda r: r["index"])
    if not rs:
        return {}
    tp, fp, fn, tn = (np.array([r[c] for r in rs], np.float64) for c in ("tp", "fp", "fn", "tn"))
    per = image_metrics(tp, fp, fn, tn)
    out: dict[str, Any] = {name: describe(per[name]) for name in PER_IMAGE}
    g_iou, g_dice = iou_dice(tp.sum(), fp.sum(), fn.sum())
    out["global_iou"], out["global_dice"] = {"value": float(g_iou)}, {"value": float(g_dice)}
    if replicates:
        units = unit_index(rs, group_of)
        cols = np.column_stack([per[name] for name in PER_IMAGE] + [tp, fp, fn, np.ones(len(rs))])
        sums = np.zeros((int(units.max()) + 1, cols.shape[1]))
        np.add.at(sums, units, cols)
        reps = bootstrap_sums(sums, replicates, seed, key)
        count = reps[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            for j, name in enumerate(PER_IMAGE):
                out[name]["ci95"] = percentile_ci(reps[:, j] / count)
        k = len(PER_IMAGE)
        b_iou, b_dice = iou_dice(reps[:, k], reps[:, k + 1], reps[:, k + 2])
        out["global_iou"]["ci95"], out["global_dice"]["ci95"] = percentile_ci(b_iou), percentile_ci(b_dice)
    return out


def boundary_statistics(records: list[Mapping[str, Any]], key: str, replicates: int, seed: int) -> dict[str, Any]:
    """HD95, ASSD and NSD's distributions and CIs over the images that have them, each beside the count of
    images set to the worst case (one mask empty) or left out (``--empty-boundary exclude``)."""
    rs = sorted((r for r in records if r["status"] in SCORED and r.get("tn") is not None), key=lambda r: r["index"])
    one_empty = [(r["tp"] + r["fn"] == 0) != (r["tp"] + r["fp"] == 0) for r in rs]
    out = {}
    for name in BOUNDARY:
        have = [r[name] is not None for r in rs]
        values = np.array([r[name] for r, h in zip(rs, have) if h], np.float64)
        d = describe(values)
        d["worst_case_images"] = sum(e and h for e, h in zip(one_empty, have))
        d["excluded_images"] = sum(not h for h in have)
        if replicates and len(values):
            reps = bootstrap_sums(np.column_stack([values, np.ones(len(values))]), replicates, seed,
                                  f"{key}:{name}")
            d["ci95"] = percentile_ci(reps[:, 0] / reps[:, 1])
        out[name] = d
    return out


def unit_index(records: list[Mapping[str, Any]], group_of: Any) -> np.ndarray:
    """The bootstrap unit of each record (in index order): itself, or its group numbered by first appearance."""
    if group_of is None:
        return np.arange(len(records))
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(group_of(r), len(ids)) for r in records], np.int64)


def curve_summary(records: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Mean and global IoU/Dice at every CURVE threshold, and the threshold with the best mean Dice."""
    rs = [r for r in records if r["status"] in SCORED]
    if not rs or any(r.get("curve") is None for r in rs):
        return None
    counts = np.array([r["curve"] for r in rs], np.float64).reshape(len(rs), len(CURVE), 3)
    iou, dice = iou_dice(counts[..., 0], counts[..., 1], counts[..., 2])
    g_iou, g_dice = iou_dice(*(counts[..., j].sum(axis=0) for j in range(3)))
    mean_dice = [math.fsum(dice[:, k]) / len(rs) for k in range(len(CURVE))]
    best = int(np.argmax(mean_dice))
    return {"mean_dice": mean_dice, "mean_iou": [math.fsum(iou[:, k]) / len(rs) for k in range(len(CURVE))],
            "global_dice": [float(x) for x in g_dice], "global_iou": [float(x) for x in g_iou],
            "best": {"threshold": CURVE[best], "mean_dice": mean_dice[best]}}


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts and metrics for a set of per-image records (dicts with status, tp, fp, fn, iou, dice)."""
    counts = {"selected": 0, "scored": 0, "unscored": 0, "failed": 0, "converted": 0}
    ious: list[float] = []
    dices: list[float] = []
    tp = fp = fn = 0
    for r in records:
        counts["selected"] += 1
        status = r["status"]
        if status in SCORED:
            counts["scored"] += 1
            counts["converted"] += status == "converted"
            ious.append(float(r["iou"]))
            dices.append(float(r["dice"]))
            tp += int(r["tp"])
            fp += int(r["fp"])
            fn += int(r["fn"])
        elif status == "unscored":
            counts["unscored"] += 1
        else:
            counts["failed"] += 1
    n = counts["scored"]
    g_iou, g_dice = iou_dice(tp, fp, fn)
    metrics = {
        # fsum is exactly rounded, so the means do not depend on the order records arrive in
        "mean_iou": math.fsum(ious) / n if n else None,
        "mean_dice": math.fsum(dices) / n if n else None,
        "global_iou": float(g_iou) if n else None,
        "global_dice": float(g_dice) if n else None,
        "tp": tp, "fp": fp, "fn": fn,
    }
    return {"images": counts, "metrics": metrics}


def evaluate(records: list[Mapping[str, Any]], key: str, replicates: int, seed: int,
             group_of: Any = None, boundary: bool = False) -> dict[str, Any]:
    """``aggregate`` plus the statistics and the threshold curve, for one split (``key``) or all."""
    out = aggregate(records)
    stats = statistics(records, key, replicates, seed, group_of)
    if stats:
        out["metrics"]["isic_score"] = stats["thresholded_jaccard"]["mean"]
        out["statistics"] = stats
        if boundary:
            stats.update(boundary_statistics(records, key, replicates, seed))
    curve = curve_summary(records)
    if curve:
        out["threshold_curve"] = curve
    return out


def summarise(records: list[Mapping[str, Any]], split_order: Iterable[str], replicates: int = 0, seed: int = 0,
              group_of: Any = None, boundary: bool = False) -> dict[str, Any]:
    """Overall and per-split results, splits in the given (file) order; with ``replicates`` the bootstrap CIs.
    ``threshold_selection`` names the best curve threshold on validation and what it gives on test."""
    out = evaluate(records, "all", replicates, seed, group_of, boundary)
    by_split: dict[str, list[Mapping[str, Any]]] = {s: [] for s in split_order}
    for r in records:
        by_split.setdefault(r["split"], []).append(r)
    out["per_split"] = {s: evaluate(rs, s, replicates, seed, group_of, boundary) for s, rs in by_split.items()}
    if "threshold_curve" in out:
        out["threshold_curve"] = {"thresholds": list(CURVE), **out["threshold_curve"]}
        out["threshold_selection"] = threshold_selection(out["per_split"])
    return out


def threshold_selection(per_split: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Pick the threshold on validation and apply it to test (never pick on the split you report)."""
    best = {s: v["threshold_curve"]["best"] for s, v in per_split.items() if "threshold_curve" in v}
    out: dict[str, Any] = {"best_per_split": best}
    if "validation" in best and "test" in per_split and "threshold_curve" in per_split["test"]:
        t = best["validation"]["threshold"]
        out["picked_on"], out["threshold"] = "validation", t
        out["test_mean_dice_at_it"] = per_split["test"]["threshold_curve"]["mean_dice"][CURVE.index(t)]
        out["note"] = (f"best mean Dice on validation at threshold {t}; applied to test it gives mean Dice "
                       f"{out['test_mean_dice_at_it']:.4f}")
    return out


class SegmentationHead:
    """Raw [N, C, H, W] (or [N, H, W]) output -> [N, H, W] float32 foreground probabilities; a K-slice model's
    [N, K, H, W] -> one map per slice, [N, K, H, W] (the batch picks each slice's own)."""

    def __init__(self, spec: OutputSpec, profile: Profile):
        self.spec, self.profile = spec, profile
        self.source = "model"
        self.warnings: list[str] = []

    def check(self, raw: np.ndarray, source: str) -> None:
        self.source = source
        h, w = self.profile.height, self.profile.width
        spatial = raw.shape[-2:] if raw.ndim in (3, 4) else None
        if spatial != (h, w):
            raise ModelError(f"{source} has shape {list(raw.shape)} for two images; expected [N, C, {h}, {w}] "
                             f"(segmentation at the network's input size)")
        if self.profile.slices > 1:  # one map per slice, never classes: said before any activation check
            slice_maps(raw, self.spec, self.profile.slices, source)
        refuse_double_activation(raw, self.spec, source)
        probe = self(raw)
        channels = raw.shape[1] if raw.ndim == 4 else 1
        check_probabilities(probe, channels, self.spec, source)
        if self.spec.activation == "sigmoid" and channels == 2 and self.profile.slices == 1:
            k = foreground_channel(2, self.spec, source)
            self.warnings.append(
                f"--activation sigmoid on {source}, which has 2 channels: a 2-class (softmax-style) output is "
                f"usually meant for --activation softmax; sigmoid scores channel {k} alone and ignores the other")

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.profile.slices > 1:
            return slice_maps(raw, self.spec, self.profile.slices, self.source)
        return foreground(raw, self.spec, self.source)


def segmentation_row(r: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ISIC per-image set beside IoU (the Jaccard) and Dice, from the record's pixel counts."""
    if r.get("tn") is None:
        return r
    extra = image_metrics(r["tp"], r["fp"], r["fn"], r["tn"])
    return {**r, **{k: float(extra[k]) for k in ("thresholded_jaccard", "sensitivity", "specificity", "accuracy")}}


def scoring_resolution(profile: Profile, score_at: str) -> str:
    if score_at == "network":
        return f"network input ({profile.height}x{profile.width})"
    return "each image's own size (the prediction resized linearly, then thresholded)"


class SegmentationTask:
    """The segmentation task behind the protocol of tasks/__init__.py."""

    name = "segmentation"

    def blank_record(self, loaded: Any, rank: int) -> dict[str, Any]:
        item = loaded.item
        return {"index": item.index, **({"volume": item.volume, "slice": item.slice} if item.slice is not None
                                         else {}),
                "split": item.split, "location": ";".join(item.locations),
                "label": item.label_path or "", "rank": rank, "iou": None, "dice": None, "tp": None, "fp": None,
                "fn": None, "tn": None, "curve": None, "hd95": None, "assd": None, "nsd": None,
                "status": loaded.status, "error": clip("; ".join(loaded.notes), MAX_ERROR_CHARS)}

    def score_batch(self, batch: Any, probs: np.ndarray, records: list[dict[str, Any]], profile: Profile,
                    options: ScoreOptions) -> list[str]:
        import cv2

        from .masks import save_mask

        scored = [k for k in batch.rows if batch.items[k].mask is not None]
        if scored and options.score_at == "original":  # each image at its own size: one at a time
            for k in scored:
                it = batch.items[k]
                h, w = it.original_hw
                full = cv2.resize(probs[batch.rows.index(k)], (w, h), interpolation=cv2.INTER_LINEAR)
                records[k].update(score(full[None], it.full_mask[None], profile.threshold, options.boundary)[0])
        elif scored:
            pos = [batch.rows.index(k) for k in scored]
            masks = np.stack([batch.items[k].mask for k in scored])
            for k, fields in zip(scored, score(probs[pos], masks, profile.threshold, options.boundary)):
                records[k].update(fields)
        saved = []
        if options.masks_dir is not None:
            for j, k in enumerate(batch.rows):
                it = batch.items[k]
                saved.append(save_mask(options.masks_dir, it.item.index, it.item.locations[0], probs[j],
                                       profile.threshold, it.original_hw))
        return saved

    def head(self, spec: OutputSpec, profile: Profile, classes: list[str]) -> SegmentationHead:
        return SegmentationHead(spec, profile)

    def summarise(self, records: list[Mapping[str, Any]], splits: list[str], classes: list[str], profile: Profile,
                  options: ScoreOptions, group_of: Any) -> dict[str, Any]:
        out = {"task": "segmentation",
               **summarise(records, splits, options.bootstrap, options.seed, group_of, bool(options.boundary))}
        resolution = scoring_resolution(profile, options.score_at)
        if options.boundary:
            tolerance, empty = options.boundary
            out["boundary"] = {"tolerance_px": tolerance, "empty_policy": empty, "policy": BOUNDARY_POLICY[empty],
                               "resolution": resolution}
        out.update(threshold=profile.threshold, empty_gt_policy=EMPTY_GT_POLICY, score_at=options.score_at,
                   metric_resolution=resolution)
        return out

    def check_record(self, record: Mapping[str, Any], classes: list[str]) -> str | None:
        if record.get("status") not in STATUSES:
            return f"status {clip(repr(record.get('status')), 40)}: expected one of {', '.join(STATUSES)}"
        if record["status"] not in SCORED:
            return None
        counts = [record.get(k) for k in ("tp", "fp", "fn", "tn")]
        if not all(type(c) is int and 0 <= c < 1 << 40 for c in counts):
            return f"tp, fp, fn, tn {clip(repr(counts), 80)}: expected non-negative integers"
        for key in ("iou", "dice"):
            v = record.get(key)
            if type(v) not in (int, float) or not math.isfinite(v) or not 0 <= v <= 1:
                return f"{key} {clip(repr(v), 40)}: expected a number in [0, 1]"
        iou, dice = (float(x) for x in iou_dice(*counts[:3]))
        if abs(iou - record["iou"]) > 1e-9 or abs(dice - record["dice"]) > 1e-9:
            return (f"iou {record['iou']} and dice {record['dice']} do not follow from its counts (tp {counts[0]}, "
                    f"fp {counts[1]}, fn {counts[2]}: iou {iou:.9g}, dice {dice:.9g})")
        for key in BOUNDARY:
            v = record.get(key)
            if v is not None and (type(v) not in (int, float) or not math.isfinite(v) or v < 0
                                  or (key == "nsd" and v > 1)):
                return f"{key} {clip(repr(v), 40)}: expected a finite non-negative number (nsd at most 1) or null"
        curve = record.get("curve")
        if curve is not None and not (isinstance(curve, list) and all(type(c) is int and c >= 0 for c in curve)):
            return "curve: expected a list of non-negative integer counts"
        return None

    def group_row(self, records: list[Mapping[str, Any]]) -> dict[str, Any]:
        m = aggregate(records)
        return {"images": m["images"]["selected"], "scored": m["images"]["scored"],
                "mean_dice": m["metrics"]["mean_dice"], "mean_iou": m["metrics"]["mean_iou"]}

    def csv_columns(self, records: list[Mapping[str, Any]]) -> tuple[str, ...]:
        if any(r.get("hd95") is not None or r.get("nsd") is not None for r in records):  # --boundary-metrics
            return (*CSV_COLUMNS[:-2], *BOUNDARY, *CSV_COLUMNS[-2:])
        return CSV_COLUMNS

    def csv_row(self, record: Mapping[str, Any], classes: list[str]) -> Mapping[str, Any]:
        return segmentation_row(record)


TASK = SegmentationTask()
