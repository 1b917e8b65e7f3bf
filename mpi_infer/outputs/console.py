"""What the console shows: the plan of a --dry-run, the summary table, the CIs, the models, the problems and
the exit line."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..atomic import open_append
from ..errors import EXIT_CODES, clip
from .folder import LOG_FILE, RUN_FILE


def _num(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def summary_table(summary: Mapping[str, Any], notes: Iterable[str] = ()) -> str:
    """A one-screen table: counts and metrics per split and overall, then ``notes`` (the failed images), then the
    exit line."""
    if summary.get("task") == "classification":
        return _classification_table(summary, notes)
    rows = [("split", "selected", "scored", "unscored", "failed", "mean IoU", "mean Dice", "global IoU",
             "global Dice")]
    parts = list(summary.get("per_split", {}).items()) + [("all", summary)]
    for name, s in parts:
        im, m = s["images"], s["metrics"]
        rows.append((name, str(im["selected"]), str(im["scored"]), str(im["unscored"]), str(im["failed"]),
                     _num(m["mean_iou"]), _num(m["mean_dice"]), _num(m["global_iou"]), _num(m["global_dice"])))
    head = (f"mpi_infer: {summary.get('world_size')} rank(s) on {len(summary.get('hosts', []))} host(s), "
            f"backend {summary.get('backend', {}).get('backend', '?')}, profile "
            f"{summary.get('profile', {}).get('name', '?')}, threshold {summary.get('threshold')}")
    return _render(rows, head, summary, [*ci_lines(summary), *volume_lines(summary), *model_lines(summary),
                                         *group_lines(summary), *patient_lines(summary), *notes])


def group_lines(summary: Mapping[str, Any], worst: int = 3) -> list[str]:
    """--group-by: how many groups, and each model's (or the run's) worst groups by its headline metric."""
    groups = summary.get("groups")
    if not groups:
        return []
    metric = "accuracy" if summary.get("task") == "classification" else "mean_dice"
    label = metric.replace("_", " ")
    models = summary.get("models") or {"": {"groups": groups}}
    lines = [f"groups (--group-by {groups['pattern']}): {groups['groups']}, {groups['unmatched_images']} "
             f"image(s) matched none"]
    for name, m in models.items():
        rows = (m.get("groups") or {}).get("per_group", {})
        ranked = sorted((g for g in rows if rows[g].get(metric) is not None), key=lambda g: rows[g][metric])
        shown = "; ".join(f"{g} {_num(rows[g][metric])} (n {rows[g]['images']})" for g in ranked[:worst])
        lines.append(f"  {name + ': ' if name else ''}lowest {label}: {shown or '-'}")
    return lines


def volume_lines(summary: Mapping[str, Any]) -> list[str]:
    """Volumes: how many, and the mean 3D Dice and IoU with their CIs (per_volume.csv has every volume)."""
    v = summary.get("volumes")
    if not v:
        return []
    shown = ", ".join(f"{k.replace('_', ' ').replace(' 3d', ' (3D)')} {_num(v['metrics'].get(k))}"
                      + (" [{}, {}]".format(*(_num(x) for x in ci)) if (ci := v.get("statistics", {}).get(k, {})
                                                                        .get("ci95")) else "")
                      for k in ("mean_dice_3d", "mean_iou_3d"))
    return [f"volumes: {v['scored_volumes']} scored of {v['volumes']} (the rows above are slices); {shown}"]


def patient_lines(summary: Mapping[str, Any]) -> list[str]:
    """--patient-by: the patient-level headline with its CI (patients.csv has every patient)."""
    p = summary.get("patients")
    if not p:
        return []
    keys = ("accuracy", "balanced_accuracy") if summary.get("task") == "classification" else ("mean_dice", "mean_iou")
    shown = ", ".join(f"{k.replace('_', ' ')} {_num(p['metrics'].get(k))}"
                      + (" [{}, {}]".format(*(_num(x) for x in ci)) if (ci := p.get("statistics", {}).get(k, {})
                                                                        .get("ci95")) else "") for k in keys)
    extra = (f", {p['vote']} vote; slice accuracy after the vote {_num(p.get('slice_accuracy_after_vote'))}"
             if "vote" in p else "")
    return [f"patients (--patient-by {p['by']}): {p['scored_patients']} scored of {p['patients']}; {shown}{extra}"
            + (f"; {p['unmatched_images']} image(s) matched no patient" if p["unmatched_images"] else "")]


def model_lines(summary: Mapping[str, Any]) -> list[str]:
    """Several models: each one's headline with its CI, the best per split, and each pair's verdict."""
    models = summary.get("models")
    if not models:
        return []
    best = summary.get("best_model", {})
    metric = best.get("metric", "mean_dice")
    key = {"mean_dice": "dice", "accuracy": "accuracy"}.get(metric, metric)

    def one(name: str, m: Mapping[str, Any]) -> str:
        lo, hi = (m.get("statistics", {}).get(key) or {}).get("ci95") or (None, None)
        return f"{name} {_num(m['metrics'].get(metric))}" + (f" [{_num(lo)}, {_num(hi)}]" if lo is not None else "")
    per = ", ".join(f"{s} {n}" for s, n in best.get("per_split", {}).items())
    return [f"models ({metric.replace('_', ' ')}): " + "; ".join(one(n, m) for n, m in models.items()),
            f"best: {best.get('all')} (per split: {per})", *(c["verdict"] for c in summary.get("comparison", []))]


def ci_lines(summary: Mapping[str, Any]) -> list[str]:
    """The headline means with their bootstrap 95% CIs, and the ISIC score, in one line."""
    st = summary.get("statistics") or {}
    if not st.get("dice", {}).get("ci95"):
        return []

    def cited(key: str, label: str) -> str:
        s = st[key]
        value = s.get("mean", s.get("value"))
        lo, hi = s.get("ci95") or (None, None)
        return f"{label} {_num(value)} [{_num(lo)}, {_num(hi)}]"

    boot = summary.get("bootstrap", {})
    boundary = [f"{label} {_num(st[k]['mean'], 2)} [{_num((st[k].get('ci95') or [None])[0], 2)}, "
                f"{_num((st[k].get('ci95') or [None, None])[1], 2)}] (n {st[k]['n']}, worst case "
                f"{st[k]['worst_case_images']}, excluded {st[k]['excluded_images']})"
                for k, label in (("hd95", "HD95 px"), ("assd", "ASSD px"), ("nsd", "NSD")) if k in st]
    policy = summary.get("boundary", {}).get("empty_policy", "")
    head = f"95% CI ({boot.get('replicates')} bootstrap resamples of {boot.get('unit', 'image')}s): "
    return [*([f"boundary ({policy}): " + "; ".join(boundary)] if boundary else []), head
            + ", ".join(cited(k, label) for k, label in (("dice", "mean Dice"), ("iou", "mean IoU"),
                                                          ("thresholded_jaccard", "ISIC score"),
                                                          ("global_dice", "global Dice")))]


def _render(rows: list[tuple[str, ...]], head: str, summary: Mapping[str, Any], notes: Iterable[str] = ()) -> str:
    """Aligned columns, rules around the body, the head line above and the timing and exit line below."""
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    t = summary.get("timings", {})
    converted = summary.get("images", {}).get("converted", 0)
    tail = (f"wall {t.get('total_s', 0):.2f} s, {t.get('images_per_s', 0):.1f} images/s"
            + (f"; {converted} image(s) scored after a conversion (per_image.csv says which)" if converted else ""))
    return "\n".join([head, *lines, tail, *notes, exit_line(summary.get("exit_code"), summary.get("exit_meaning", ""))])


def exit_line(code: Any, meaning: str) -> str:
    """The last line a run prints. Under mpirun a non-zero exit is followed by Open MPI's own "prterun detected
    that one or more processes exited with non-zero status" block: say here that the code is ours."""
    line = f"exit {code}: {meaning}"
    if code:
        line += (" (mpi_infer's own exit code; under mpirun, Open MPI's 'prterun detected ... non-zero status' "
                 "note after this line only repeats it: it is not a crash)")
    return line


def problem_lines(records: list[Mapping[str, Any]], limit: int = 10) -> list[str]:
    """The failed images, with their reasons, for the console (the first ``limit``; per_image.csv has all)."""
    failed = sorted((r for r in records if r.get("status") == "failed"), key=lambda r: r["index"])
    if not failed:
        return []
    lines = [f"failed: {len(failed)} image(s)"]
    for r in failed[:limit]:
        where = ";".join(r.get("location", "")) if isinstance(r.get("location"), list) else r.get("location", "")
        lines.append(f"  #{r['index']} {clip(str(where), 120)}: {clip(str(r.get('error', '')), 200)}")
    if len(failed) > limit:
        lines.append(f"  ... and {len(failed) - limit} more (per_image.csv, status 'failed')")
    return lines


def _classification_table(summary: Mapping[str, Any], notes: Iterable[str] = ()) -> str:
    topk = "top-2" if summary["metrics"].get("top_k_accuracy", {}).get("2") is not None else None
    rows = [("split", "selected", "scored", "unscored", "failed", "accuracy", "balanced acc", "macro F1",
             *([topk] if topk else []))]
    for name, s in [*summary.get("per_split", {}).items(), ("all", summary)]:
        im, m = s["images"], s["metrics"]
        rows.append((name, str(im["selected"]), str(im["scored"]), str(im["unscored"]), str(im["failed"]),
                     _num(m["accuracy"]), _num(m["balanced_accuracy"]), _num(m["macro_f1"]),
                     *([_num(m["top_k_accuracy"].get("2"))] if topk else [])))
    head = (f"mpi_infer: classification, {len(summary.get('classes', []))} classes; "
            f"{summary.get('world_size')} rank(s) on {len(summary.get('hosts', []))} host(s), "
            f"backend {summary.get('backend', {}).get('backend', '?')}, profile "
            f"{summary.get('profile', {}).get('name', '?')}")
    return _render(rows, head, summary, [*model_lines(summary), *group_lines(summary), *patient_lines(summary),
                                         *notes])


def print_plan(prepared: Any, received: list[int], scatter_s: float, dynamic: bool) -> None:
    if dynamic:
        print(f"plan: {prepared.selected} image(s), dynamic schedule: rank 0 hands out chunks to "
              f"{len(received)} rank(s); splits {', '.join(prepared.splits)}")
    else:
        print(f"plan: {prepared.selected} image(s) in {len(prepared.shard_sizes)} shard(s) by "
              f"{prepared.sharding}, splits {', '.join(prepared.splits)}")
        for row, got in zip(prepared.shard_sizes, received):
            per = ", ".join(f"{k} {v}" for k, v in row["per_split"].items())
            check = "" if got == row["images"] else f"  (received {got}!)"
            print(f"  rank {row['rank']:>4}: {row['images']:>8} image(s)  ({per}){check}")
    print(f"timing: load+validate+plan {prepared.prepare_s:.3f} s, scatter {scatter_s:.3f} s")
    sys.stdout.flush()



class _Tee:
    """A text stream that also keeps what is written to it."""

    def __init__(self, stream: Any, kept: list[str]):
        self._stream, self._kept = stream, kept

    def write(self, text: str) -> int:
        self._kept.append(text)
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding: the real stream's
        return getattr(self._stream, name)


class ConsoleRecord:
    """What rank 0 prints (stdout and stderr: the plan, warnings, failed images, the summary, errors) kept
    while the run lasts, to be appended to OUT/run.log with the exit line: a job's record outlives its pod's
    log. Only a folder this run owns gets it (one with run.json)."""

    def __init__(self) -> None:
        self.kept: list[str] = []
        self.attempt: int | None = None  # set once the run has taken its output folder
        self._saved: tuple[Any, Any] | None = None

    def start(self) -> None:
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Tee(sys.stdout, self.kept), _Tee(sys.stderr, self.kept)

    def stop(self) -> None:
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
            self._saved = None

    def save(self, out: str, code: int) -> None:
        """Append this attempt's record to ``out``/run.log (never fails the run: a log is not a result)."""
        self.stop()
        if self.attempt is None or not os.path.isfile(os.path.join(out, RUN_FILE)):
            return  # the run never took the folder (refused before, or a dry run): it is not ours to write in
        kept = "".join(self.kept).replace("\r\n", "\n")  # a terminal's progress bar: its last state a line
        text = "\n".join(line.rsplit("\r", 1)[-1] for line in kept.split("\n")).rstrip("\n")
        last = exit_line(code, EXIT_CODES.get(code, "unknown"))
        head = f"=== {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, attempt {self.attempt} ==="
        body = text if text.endswith(last) else f"{text}\n{last}".lstrip("\n")
        try:
            with open_append(os.path.join(out, LOG_FILE)) as fh:
                fh.write(f"{head}\n{body}\n")
        except OSError as exc:
            sys.stderr.write(f"mpi_infer: warning: cannot append to {os.path.join(out, LOG_FILE)}: "
                             f"{exc.strerror or exc}\n")
