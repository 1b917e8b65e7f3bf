"""The upstream split tool's output: one ECVL YAML per shard (mpi_infer split), paths rewritten to stay valid
from the parts' folder."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from .dataset import URL, Dataset, dump_document, scalar_text


def subset_document(dataset: Dataset, parts: Mapping[str, Sequence[int]], out_dir: str, name: str) -> dict:
    """An ECVL dataset document holding just ``parts`` (split -> image indices), whose relative paths
    resolve from ``out_dir``. Each image keeps its original split; split lists index the new list."""
    out_dir = os.path.abspath(out_dir)

    def move(p: Any) -> Any:
        text = scalar_text(p)
        if URL.match(text) or os.path.isabs(text):
            return text
        return os.path.relpath(os.path.join(dataset.root, text), out_dir)

    images: list[Any] = []
    split: dict[str, list[int]] = {}
    for split_name, indices in parts.items():
        positions = split.setdefault(split_name, [])
        for i in indices:
            positions.append(len(images))
            images.append(_moved_entry(dataset, dataset.entries[int(i)], move))
    doc: dict[str, Any] = {"name": name, "description": dataset.description}
    if dataset.classes:
        doc["classes"] = list(dataset.classes)
    if dataset.features:
        doc["features"] = list(dataset.features)
    doc["images"] = images
    doc["split"] = split
    return doc


def _moved_entry(dataset: Dataset, entry: Any, move: Any) -> Any:
    if isinstance(entry, dict):
        out = dict(entry)
        loc = entry["location"]
        out["location"] = [move(x) for x in loc] if isinstance(loc, list) else move(loc)
        label = entry.get("label")
        if isinstance(label, list):
            out["label"] = [move(x) if dataset.is_label_path(x) else x for x in label]
        elif label is not None and dataset.is_label_path(label):
            out["label"] = move(label)
        return out
    if isinstance(entry, list):
        return [move(x) for x in entry]
    return move(entry)


def part_file_names(yaml_path: str, n: int) -> list[str]:
    """``part-000-<yaml name>`` ... as the DeepHealth split tool names them (always N names)."""
    base = os.path.basename(yaml_path)
    width = max(3, len(str(n - 1)))
    return [f"part-{i:0{width}d}-{base}" for i in range(n)]


def write_parts(dataset: Dataset, parts: Sequence[Mapping[str, Sequence[int]]], out_dir: str) -> list[str]:
    """Write one ECVL YAML per part into ``out_dir`` (empty parts too); return their paths."""
    from ..atomic import write_text

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i, (fname, part) in enumerate(zip(part_file_names(dataset.path, len(parts)), parts)):
        doc = subset_document(dataset, part, out_dir, f"{dataset.name}-part-{i}")
        target = os.path.join(out_dir, fname)
        write_text(target, dump_document(doc), fsync=False)
        paths.append(target)
    return paths
