"""``report.html``: one self-contained page (no network) that shows what a run found.

Figures are matplotlib PNGs embedded as data URIs: Dice and IoU histograms per split, per-rank images
and throughput, and a contact sheet of the worst and best images with the ground-truth (green) and
predicted (magenta) contours drawn over the image. Predicted contours need the run's ``--save-masks``
(``run --report`` turns it on).
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
from typing import Any

from ..atomic import read_input, write_text
from ..errors import clip
from ..tasks.classification import CLASSIFICATION_COLUMNS
from ..tasks.segmentation import CSV_CORE_COLUMNS
from .figures import classification_figures, rank_chart, scatter_figure, segmentation_figures


def segmentation_table(summary: dict[str, Any]) -> str:
    head = ("split", "selected", "scored", "unscored", "failed", "mean IoU", "mean Dice", "global IoU",
            "global Dice")
    body = []
    for name, s in [*summary.get("per_split", {}).items(), ("all", summary)]:
        im, m = s["images"], s["metrics"]
        vals = (name, im["selected"], im["scored"], im["unscored"], im["failed"], m["mean_iou"], m["mean_dice"],
                m["global_iou"], m["global_dice"])
        cls = ' class="total"' if name == "all" else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_cell(v)}</td>" for v in vals) + "</tr>")
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
    shown, view = shown_model(summary)
    if shown is not None:  # several models: the tables and figures are the best model's; the models table all
        rows = [r for r in rows if r.get("model") == shown]
    classification = summary.get("task", "segmentation") == "classification"
    per_rank = summary.get("timings", {}).get("per_rank", [])
    if classification:  # no masks to speak of
        figures, has_masks = classification_figures(view, rows, k), True
    else:
        figures, has_masks = segmentation_figures(view, rows, run_dir, k)
    if per_rank:
        figures.insert(1, ("Ranks", rank_chart(per_rank), "ranks"))
    failed = [r for r in rows if r["status"] == "failed"]
    prof = summary.get("profile", {})
    scale = {"255": "/255", "minmax": "each image's min-max to 0..255, /255", "raw": "raw values"}[
        prof.get("intensity", "255")]
    norm = (f"{'grey' if prof.get('channels', 3) == 1 else 'RGB'}, {scale}, "
            + (f"mean {number(prof.get('mean'))}, std {number(prof.get('std'))}" if prof.get("mean")
               else "no mean/std"))
    meta = [
        ("dataset", summary.get("dataset")),
        *([("models", ", ".join(summary["models"]) + " (paths, hashes and activations in the models table)")]
          if shown is not None else
          [("model", summary.get("model")), ("model sha256", summary.get("model_sha256", "")[:16])]),
        ("backend", summary.get("backend", {}).get("backend")),
        ("profile", f"{prof.get('name')}: {prof.get('height')}x{prof.get('width')} {prof.get('interpolation')}, "
                    f"{norm}"),
        ("model output", ", ".join(f"{k} {v}" for k, v in (summary.get("output") or {}).items()
                                   if v is not None and not (shown is not None and k == "activation"))),
        ("arch", summary.get("arch") or "(from the ONNX file)"),
        *([("classes", ", ".join(summary.get("classes", [])))] if classification else
          [("threshold", number(summary.get("threshold"))), ("empty ground truth", summary.get("empty_gt_policy"))]),
        *([("boundary metrics", boundary_text(summary["boundary"]))] if summary.get("boundary") else []),
        *([("bootstrap", f"{summary['bootstrap'].get('replicates')} resamples of "
                         f"{summary['bootstrap'].get('unit', 'image')}s, 95% percentile CIs, seed "
                         f"{summary['bootstrap'].get('seed')}")] if summary.get("bootstrap") else []),
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
        "body{font-family:system-ui,sans-serif;margin:2em auto;padding:0 1em;max-width:1100px;color:#222}",
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}",
        "td:first-child,th:first-child{text-align:left}tr.total{font-weight:bold;background:#f4f4f4}",
        "dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px}dt{font-weight:bold}",
        "figure{margin:1.5em 0}img{max-width:100%}.note{color:#a33}.caption{font-style:italic}",
        "</style></head><body>",
        "<h1>mpi_infer report</h1>",
        *([f"<p class='caption'>{html.escape(shown_caption(summary, shown))}</p>"] if shown is not None else []),
        classification_table(view) if classification else segmentation_table(view),
        statistics_table(view, classification),
        "<dl>" + "".join(f"<dt>{html.escape(str(a))}</dt><dd>{html.escape(str(b))}</dd>" for a, b in meta) + "</dl>",
    ]
    parts.extend(models_section(summary, all_rows))
    parts.extend(groups_section(summary))
    parts.extend(levels_section(summary, run_dir))
    if not has_masks:
        parts.append("<p class='note'>Predicted masks were not saved (run with --save-masks or --report); "
                     "the contact sheets show ground truth only.</p>")
    for title, png, fid in figures:
        title = title if shown is None or fid == "ranks" else f"{title} (model {shown})"
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
    return html.escape(number(v))


def number(v: Any, digits: int = 4) -> str:
    """A value as the page shows it: floats at ``digits`` decimals (lists of them too), never 16 digits."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, list | tuple):
        return "(" + ", ".join(number(x, digits) for x in v) + ")"
    return str(v)


def shown_model(summary: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """Several models: the one the page's tables and figures show (the best over all splits, else the first),
    and the summary as that model's; one model: (None, the summary)."""
    models = summary.get("models") or {}
    if not models:
        return None, summary
    name = summary.get("best_model", {}).get("all")
    name = name if name in models else next(iter(models))
    return name, {**summary, **models[name]}


def shown_caption(summary: dict[str, Any], shown: str) -> str:
    metric = summary.get("best_model", {}).get("metric", "mean_dice").replace("_", " ")
    why = (f"the best by {metric} over all splits" if shown == summary.get("best_model", {}).get("all")
           else "the first model")
    ran = len(summary["models"]) - (1 if summary.get("ensemble") else 0)
    return (f"{ran} models ran" + (" and their ensemble" if summary.get("ensemble") else "")
            + ". The results table, the confidence intervals and every figure "
            f"below show model {shown} ({why}); the models table compares every model"
            + (" and the ensemble" if summary.get("ensemble") else "") + ", and the groups table shows each.")


def boundary_text(b: dict[str, Any]) -> str:
    return (f"HD95, ASSD and NSD at {number(b.get('tolerance_px'), 2)} px tolerance, "
            f"{b.get('resolution', '')}; one mask empty: {b.get('policy', b.get('empty_policy', ''))}")


STATISTICS_ROWS = {  # summary.json statistics key: label
    "segmentation": (("dice", "mean Dice"), ("iou", "mean IoU"), ("thresholded_jaccard", "ISIC score"),
                     ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("global_dice", "global Dice"),
                     ("hd95", "HD95 (px)"), ("assd", "ASSD (px)"), ("nsd", "NSD")),
    "classification": (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
                       ("macro_f1", "macro F1"), ("macro_auc", "macro ROC AUC")),
}


def statistics_table(view: dict[str, Any], classification: bool) -> str:
    """Each headline metric with its bootstrap 95% CI (and, for boundary metrics, the images counted, at the
    worst case, or excluded)."""
    st = view.get("statistics") or {}
    rows = []
    for key, label in STATISTICS_ROWS["classification" if classification else "segmentation"]:
        s = st.get(key)
        if not s:
            continue
        value = view.get("metrics", {}).get(key) if classification else s.get("mean", s.get("value"))
        lo, hi = s.get("ci95") or (None, None)
        digits = 2 if key in ("hd95", "assd") else 4
        extra = (f"n {s.get('n')}, worst case {s['worst_case_images']}, excluded {s['excluded_images']}"
                 if "worst_case_images" in s else (f"n {s['n']}" if "n" in s else ""))
        rows.append(f"<tr><td>{html.escape(label)}</td><td>{number(value, digits)}</td>"
                    f"<td>{number(lo, digits)} to {number(hi, digits)}</td><td>{html.escape(extra)}</td></tr>")
    if not rows:
        return ""
    return ("<h2>95% confidence intervals</h2><table><thead><tr><th>metric</th><th>value</th><th>95% CI</th>"
            "<th>images</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def levels_section(summary: dict[str, Any], run_dir: str, limit: int = 300) -> list[str]:
    """Volumes (3D scores, per_volume.csv) and patients (--patient-by, patients.csv): their headlines with CIs and
    their rows (the first ``limit``)."""
    out = []
    for key, title, name, metrics in (
            ("volumes", "Volumes (3D scores; the tables above count slices)", "per_volume.csv",
             ("mean_dice_3d", "mean_iou_3d")),
            ("patients", "Patients (--patient-by {by})", "patients.csv",
             ("accuracy", "balanced_accuracy") if summary.get("task") == "classification" else
             ("mean_dice", "mean_iou"))):
        block = summary.get(key)
        if not block:
            continue
        heads = "".join(
            f"<tr><td>{html.escape(m.replace('_', ' '))}</td><td>{_cell(block['metrics'].get(m))}</td><td>"
            + (" - ".join(number(x) for x in ci) if (ci := block.get("statistics", {}).get(m, {}).get("ci95"))
               else "") + "</td></tr>" for m in metrics)
        path = os.path.join(run_dir, name)
        rows: list[dict[str, str]] = []
        if os.path.isfile(path):
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        cols = [c for c in (rows[0] if rows else {}) if c != "location"]
        table = ("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr></thead><tbody>"
                 + "".join("<tr>" + "".join(f"<td>{html.escape(r[c])}</td>" for c in cols) + "</tr>"
                           for r in rows[:limit]) + "</tbody></table>")
        more = f" (the first {limit} of {len(rows)} shown; {name} has all)" if len(rows) > limit else ""
        out.append(f"<h2>{html.escape(title.format(by=block.get('by', '')))}</h2><table><thead><tr><th>metric</th>"
                   f"<th>value</th><th>95% CI</th></tr></thead><tbody>{heads}</tbody></table><p>{len(rows)} "
                   f"row(s){more}</p>{table}")
    return out


def groups_section(summary: dict[str, Any], limit: int = 500) -> list[str]:
    """--group-by: every group (patient) with each model's headline metric (and the ensemble's)."""
    groups = summary.get("groups")
    if not groups:
        return []
    metric = "accuracy" if summary.get("task") == "classification" else "mean_dice"
    models = {n: (m.get("groups") or {}).get("per_group", {}) for n, m in (summary.get("models") or {}).items()}
    models = models or {"": groups.get("per_group", {})}
    names = list(next(iter(models.values())))[:limit]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["group", "images", *(f"{n} {metric.replace('_', ' ')}" if n else metric.replace("_", " ")
                                         for n in models)])
    body = "".join(
        f"<tr><td>{html.escape(g)}</td><td>{next(iter(models.values()))[g].get('images')}</td>"
        + "".join(f"<td>{_cell(per.get(g, {}).get(metric))}</td>" for per in models.values()) + "</tr>"
        for g in names)
    more = f" (the first {limit} shown)" if groups["groups"] > limit else ""
    return [f"<h2>Groups (--group-by {html.escape(groups['pattern'])})</h2><p>{groups['groups']} groups{more}; "
            f"{groups['unmatched_images']} image(s) matched no group (each is a group of its own). The bootstrap "
            f"resamples groups.</p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"]


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
        head = "".join(f"<th>{html.escape(s)}</th>" for s in ["model", "all", *splits, "activation", "file"])
        body = "".join(
            f"<tr><td>{html.escape(n)}{' (best)' if n == best.get('all') else ''}</td>"
            f"<td>{_cell(m['metrics'].get(metric))}</td>"
            + "".join(f"<td>{_cell(m['per_split'].get(s, {}).get('metrics', {}).get(metric))}</td>" for s in splits)
            + f"<td>{_cell(m.get('activation', '-'))}</td><td>"
            + (html.escape(f"{os.path.basename(m['path'])} ({m.get('sha256', '')[:12]})") if m.get("path") else
               html.escape(f"{summary.get('ensemble')} of " + ", ".join((m.get("combines") or {}).get("models", []))))
            + "</td></tr>" for n, m in models.items())
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


def classification_table(summary: dict[str, Any]) -> str:
    head = ("split", "selected", "scored", "unscored", "failed", "accuracy", "balanced accuracy", "macro F1",
            "weighted F1", "top-2")
    body = []
    for name, s in [*summary.get("per_split", {}).items(), ("all", summary)]:
        im, m = s["images"], s["metrics"]
        vals = (name, im.get("selected"), im.get("scored"), im.get("unscored"), im.get("failed"), m.get("accuracy"),
                m.get("balanced_accuracy"), m.get("macro_f1"), m.get("weighted_f1"),
                (m.get("top_k_accuracy") or {}).get("2"))
        cls = ' class="total"' if name == "all" else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_cell(v)}</td>" for v in vals) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(body) + "</tbody></table>")


