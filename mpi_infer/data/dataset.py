"""The ECVL dataset YAML ("DeepHealth Toolkit Dataset Format") as a validated, read-only model.

Parsing follows ECVL 1.0.3's ``Dataset`` constructor (deephealthproject/ecvl
modules/dataset/src/dataset_parser.cpp) and adds the
validation ECVL lacks. Entries are kept as parsed and normalised on demand (``sample(i)``), so a
million-image YAML loads and validates in a few seconds: only the selected images are ever resolved.

Deliberate differences from ECVL, each the intended behaviour rather than ECVL's accident:
- a relative mask (label) path always resolves against the YAML's folder, like a location does;
  ECVL resolves it only while looping over *relative* locations (wrong for absolute locations, and
  repeated for multi-plane ones);
- split indices are checked (range, type, duplicates, overlap); ECVL dereferences them unchecked;
- http(s) paths are kept as given (ECVL downloads them into the working directory at load time).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml_rs

from ..errors import DatasetError, clip, quote
from .worklist import WorkList
from .yamltext import parse_yaml_text, yaml_byte_cap

URL = re.compile(r"^https?://", re.IGNORECASE)
_INT = re.compile(r"^[-+]?[0-9]+$")
_NOT_PLAIN = frozenset("/+-0123456789")  # first characters that need the full rules (absolute, numeric)
DEFAULT_NAME = "DeepHealth dataset"
DEFAULT_DESCRIPTION = "This is the DeepHealth example dataset!"


@dataclass(frozen=True)
class Sample:
    """One normalised image entry (ECVL's ``Sample``), with every path resolved."""

    index: int
    locations: tuple[str, ...]
    label: tuple[int, ...] | None = None  # class indices (classification)
    label_path: str | None = None  # ground-truth mask (segmentation)
    values: Mapping[int, str] = field(default_factory=dict)
    volume: int | None = None  # a volume's slice: the YAML index of its volume
    slice: int | None = None  # and which slice (from 0)


@dataclass
class Dataset:
    """A parsed, validated dataset. ``entries`` are the raw YAML image entries, in file order."""

    path: str
    root: str
    name: str
    description: str
    classes: list[str]
    features: list[str]
    entries: list[Any]
    splits: dict[str, np.ndarray]  # split name -> 0-based image indices, in file order
    has_split_key: bool = True
    warnings: list[str] = field(default_factory=list)
    sha256: str = ""
    plain: bool = False  # every entry is {location: relative path[, label: relative mask path]}
    volume_of: dict[int, tuple[int, int]] = field(default_factory=dict)  # slice sample id -> (YAML index, slice)
    volume_sizes: dict[int, int] = field(default_factory=dict)  # a volume's YAML index -> its slices

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def task(self) -> str:
        """ECVL's rule: no (or empty) ``classes`` means segmentation."""
        return "classification" if self.classes else "segmentation"

    def resolve(self, path: str) -> str:
        return resolve_path(self.root, path)

    def sample(self, index: int) -> Sample:
        """Normalise entry ``index`` the way ECVL's DecodeImages/FindLabel do (a volume's slice id: its volume's
        entry, with the slice)."""
        if index in self.volume_of:
            volume, k = self.volume_of[index]
            s = self.sample(volume)
            return Sample(index, s.locations, s.label, s.label_path, s.values, volume, k)
        entry = self.entries[index]
        if isinstance(entry, dict):
            raw_locs = entry["location"]
            locs = [raw_locs] if not isinstance(raw_locs, list) else raw_locs
            label, label_path = self._label(entry.get("label"))
            values = self._values(entry.get("values"))
        else:
            locs = entry if isinstance(entry, list) else [entry]
            label, label_path, values = None, None, {}
        return Sample(index, tuple(self.resolve(scalar_text(x)) for x in locs), label, label_path, values)

    def volume_groups(self) -> dict[int, int]:
        """Each slice sample id's volume (its YAML index), for a plan that never cuts a volume."""
        return {sid: volume for sid, (volume, _) in self.volume_of.items()}

    def file_bytes(self, index: int) -> int:
        if index in self.volume_of:  # a slice: its share of its volume's files
            volume, _ = self.volume_of[index]
            return self._file_bytes(volume) // max(1, self.volume_sizes.get(volume, 1))
        return self._file_bytes(index)

    def _file_bytes(self, index: int) -> int:
        """Bytes of image ``index``'s files (planes and mask): the cost the planner balances, known without
        decoding. A file that cannot be stat'ed costs 0 (it will fail fast)."""
        s = self.sample(index)
        total = 0
        for path in (*s.locations, *([s.label_path] if s.label_path else [])):
            with contextlib.suppress(OSError, ValueError):
                total += os.stat(path).st_size
        return total

    def _label(self, raw: Any) -> tuple[tuple[int, ...] | None, str | None]:
        if raw is None:
            return None, None
        indices: list[int] = []
        for element in raw if isinstance(raw, list) else [raw]:
            text = scalar_text(element)
            if _INT.match(text):
                indices.append(int(text))
            elif text in self.classes:
                indices.append(self.classes.index(text))
            else:  # ECVL: anything else is a ground-truth path, and class labels so far are dropped
                return None, self.resolve(text)
        return tuple(indices), None

    def _values(self, raw: Any) -> dict[int, str]:
        if raw is None:
            return {}
        if isinstance(raw, list):
            return {i: scalar_text(v) for i, v in enumerate(raw) if v is not None}
        # Mapping form. ECVL maps an unknown feature name to index 0 by accident; we refuse it in
        # validation, so every name here is known.
        return {self.features.index(scalar_text(k)): scalar_text(v) for k, v in raw.items() if v is not None}

    def work_list(self, parts: Mapping[str, Sequence[int]]) -> WorkList:
        """The descriptors of these images (split -> indices): paths and splits, never pixels.

        Plain datasets ship relative paths and the root once (compact to pickle, no per-image rules);
        any other form is resolved here with the full ECVL rules of ``sample()``."""
        entries = self.entries
        indices: list[int] = []
        runs: list[tuple[str, int]] = []
        locations: list[Any] = []
        labels: list[str | None] = []
        targets: list[int | None] | None = [] if self.classes else None
        slices: list[tuple[int, int] | None] | None = [] if self.volume_of else None
        for split, idx in parts.items():
            idx = [int(i) for i in idx]
            runs.append((split, len(idx)))
            indices += idx
            if targets is not None:  # classification: the class (a run refuses multi-label images first)
                for i in idx:
                    smp = self.sample(i)
                    locations.append(smp.locations[0] if len(smp.locations) == 1 else smp.locations)
                    labels.append(smp.label_path)
                    targets.append(smp.label[0] if smp.label else None)
            elif self.plain and slices is None:
                sub = [entries[i] for i in idx]
                locations += [e["location"] for e in sub]
                labels += [e.get("label") for e in sub]
            else:
                for i in idx:
                    smp = self.sample(i)
                    locations.append(smp.locations[0] if len(smp.locations) == 1 else smp.locations)
                    labels.append(smp.label_path)
                    if slices is not None:
                        slices.append(None if smp.slice is None else (smp.volume, smp.slice))
        prefix = self.root.rstrip(os.sep) + os.sep if self.plain and targets is None and slices is None else ""
        return WorkList(prefix, indices, runs, locations, labels, targets, slices)

    def is_label_path(self, element: Any) -> bool:
        """FindLabel's last resort: a label element that is neither a class index nor a class name."""
        text = scalar_text(element)
        return not _INT.match(text) and text not in self.classes


def resolve_path(root: str, path: str) -> str:
    """ECVL's rule: URLs and absolute paths stay; relative ones join the YAML's folder."""
    if not path or URL.match(path) or os.path.isabs(path):
        return path
    return os.path.join(root, path)


def scalar_text(value: Any) -> str:
    """A YAML scalar as the string yaml-cpp would hand ECVL (yaml-rs has typed it already)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _is_scalar(value: Any) -> bool:
    return value is not None and not isinstance(value, (list, dict))


def load_dataset(
    path: str | os.PathLike[str], *, allow_overlap: bool = False, allow_empty: bool = False
) -> Dataset:
    """Read and validate a dataset YAML; raise DatasetError naming the file and field on bad input."""
    from ..atomic import read_input

    path = os.path.abspath(os.fspath(path))
    blob = read_input(path, DatasetError, "dataset", max_bytes=yaml_byte_cap())
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    doc = parse_yaml_text(text, path)
    dataset = build_dataset(doc, path, allow_overlap=allow_overlap, allow_empty=allow_empty)
    dataset.sha256 = hashlib.sha256(blob).hexdigest()
    return dataset


def build_dataset(doc: Any, path: str, *, allow_overlap: bool = False, allow_empty: bool = False) -> Dataset:
    """Validate a parsed YAML document and wrap it; ``path`` is used for messages and the root.

    ``allow_empty`` accepts ``images: []``, which only an empty shard file written by ``split`` has."""
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: expected a mapping with 'images' (and optionally 'split'), "
                           f"got {type(doc).__name__}")
    warnings: list[str] = []
    classes = _string_list(doc, "classes", path)
    features = _string_list(doc, "features", path)
    entries = doc.get("images")
    if entries is None:
        raise DatasetError(f"{path}: missing 'images': expected a list of image entries")
    if not isinstance(entries, list) or not (entries or allow_empty):
        raise DatasetError(f"{path}: 'images' must be a non-empty list of image entries")
    plain = _check_entries(entries, features, classes, path)
    raw_split = doc.get("split")
    has_split_key = raw_split is not None
    if raw_split is None:
        raw_split = {}
        warnings.append(f"{path}: no 'split' mapping; '--split all' selects every image")
    if not isinstance(raw_split, dict):
        raise DatasetError(f"{path}: 'split' must be a mapping from split name to a list of image indices")
    splits = _check_splits(raw_split, len(entries), path, allow_overlap, warnings)
    if not has_split_key:
        splits = {"all": np.arange(len(entries), dtype=np.int64)}
    name = doc.get("name")
    description = doc.get("description")
    return Dataset(
        path=path,
        root=os.path.dirname(path),
        name=DEFAULT_NAME if name is None else scalar_text(name),
        description=DEFAULT_DESCRIPTION if description is None else scalar_text(description),
        classes=classes,
        features=features,
        entries=entries,
        splits=splits,
        has_split_key=has_split_key,
        warnings=warnings,
        plain=plain,
    )


def check_single_labels(dataset: Dataset, indices: Iterable[int]) -> None:
    """Classification runs: each selected image's label must name exactly one class (by name or index).

    The format allows more (several classes, or a mask path, as ECVL's own example shows); a multi-label
    image would need other metrics, so it is refused here, naming it, rather than scored as something else."""
    classes, path = dataset.classes, dataset.path
    for i in indices:
        i = int(i)
        entry = dataset.entries[i]
        raw = entry.get("label") if isinstance(entry, dict) else None
        if raw is None:
            continue
        elements = raw if isinstance(raw, list) else [raw]
        for element in elements:
            text = scalar_text(element)
            if _INT.match(text):
                if not 0 <= int(text) < len(classes):
                    raise DatasetError(f"{path}: images[{i}].label: class index {clip(text, 40)} is out of range; "
                                       f"'classes' has {len(classes)} (0..{len(classes) - 1})")
            elif text not in classes:
                raise DatasetError(f"{path}: images[{i}].label: {quote(text)} is not one of the classes "
                                   f"({clip(', '.join(classes), 300)})")
        if len(elements) > 1:
            raise DatasetError(f"{path}: images[{i}].label: {len(elements)} classes (a multi-label dataset); "
                               f"mpi_infer scores single-label classification only (one class per image)")


def _string_list(doc: dict, key: str, path: str) -> list[str]:
    raw = doc.get(key)
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(_is_scalar(x) for x in raw):
        raise DatasetError(f"{path}: '{key}' must be a list of names")
    return [scalar_text(x) for x in raw]


def _check_entries(entries: list, features: list[str], classes: list[str], path: str) -> bool:
    """Type-check every entry once (a tight loop: this is the hot part of validating 1M images).

    Returns whether every entry has the plain ISIC form (one relative string location, no label or a
    relative string mask path), which lets ``work_list`` skip the general rules for each image."""
    plain = True
    known = set(classes)
    for i, entry in enumerate(entries):
        if type(entry) is dict:
            loc = entry.get("location")
            label = entry.get("label")
            if type(loc) is str and loc and (label is None or type(label) is str) and "values" not in entry:
                if plain and (loc[0] == "/" or "://" in loc or (label is not None and (
                        not label or label[0] in _NOT_PLAIN or "://" in label or label in known))):
                    plain = False
                continue
            plain = False
            if isinstance(loc, str) and loc or isinstance(loc, list) and loc and all(_is_scalar(x) for x in loc):
                pass
            elif loc is None:
                raise DatasetError(f"{path}: images[{i}]: missing 'location' (a path or a list of paths)")
            elif _is_scalar(loc):
                pass  # a number used as a file name; yaml-cpp reads it as a string
            else:
                raise DatasetError(f"{path}: images[{i}].location: expected a path or a non-empty "
                                   f"list of paths, got {quote(loc)}")
            if label is not None and not _is_scalar(label) and not (
                isinstance(label, list) and all(_is_scalar(x) for x in label)
            ):
                raise DatasetError(f"{path}: images[{i}].label: expected a class name, a class index, "
                                   f"a mask path, or a list of these")
            values = entry.get("values")
            if values is not None:
                _check_values(values, features, f"{path}: images[{i}].values")
            continue
        plain = False
        if isinstance(entry, str):
            if not entry:
                raise DatasetError(f"{path}: images[{i}]: empty location")
            continue
        if isinstance(entry, list) and entry and all(_is_scalar(x) for x in entry):
            continue
        if _is_scalar(entry):
            continue
        raise DatasetError(f"{path}: images[{i}]: expected a path, a list of paths, or a mapping with "
                           f"'location', got {quote(entry)}")
    return plain


def _check_values(values: Any, features: list[str], where: str) -> None:
    if isinstance(values, list):
        if not all(v is None or _is_scalar(v) for v in values):
            raise DatasetError(f"{where}: expected scalar values")
        return
    if isinstance(values, dict):
        for key in values:
            if scalar_text(key) not in features:
                raise DatasetError(f"{where}: unknown feature {quote(key)}; 'features' lists {clip(str(features))}")
        return
    raise DatasetError(f"{where}: expected a list (by feature position) or a mapping (by feature name)")


def _check_splits(raw: dict, n: int, path: str, allow_overlap: bool, warnings: list[str]) -> dict[str, np.ndarray]:
    splits: dict[str, np.ndarray] = {}
    owner = np.full(n, -1, dtype=np.int32)
    for pos, (key, value) in enumerate(raw.items()):
        name = scalar_text(key)
        where = f"{path}: split '{clip(name, 100)}'"
        if value is None:
            value = []
        if not isinstance(value, list):
            raise DatasetError(f"{where}: expected a list of image indices")
        bad = next((j for j, v in enumerate(value) if type(v) is not int), None)
        if bad is not None:
            raise DatasetError(f"{where}[{bad}]: expected an integer image index, got {quote(value[bad])}")
        try:
            idx = np.asarray(value, dtype=np.int64)
        except OverflowError:  # an index past 64 bits: out of range like any other too large one
            j = next(j for j, v in enumerate(value) if not -(2**63) <= v < 2**63)
            raise DatasetError(f"{where}[{j}]: index {clip(str(value[j]), 60)} is out of range; "
                               f"'images' has {n} entries (0..{n - 1})") from None
        if idx.size:
            out = np.flatnonzero((idx < 0) | (idx >= n))
            if out.size:
                j = int(out[0])
                raise DatasetError(f"{where}[{j}]: index {int(idx[j])} is out of range; "
                                   f"'images' has {n} entries (0..{n - 1})")
            counts = np.bincount(idx, minlength=n)
            if counts.max() > 1:
                dup = int(np.flatnonzero(counts > 1)[0])
                raise DatasetError(f"{where}: image index {dup} is listed {int(counts[dup])} times")
            taken = owner[idx]
            clash = np.flatnonzero(taken >= 0)
            if clash.size:
                image = int(idx[clash[0]])
                other = list(raw)[int(taken[clash[0]])]
                msg = (f"{where}: image {image} is also in split '{scalar_text(other)}' "
                       f"({clash.size} image(s) shared)")
                if not allow_overlap:
                    raise DatasetError(msg + "; pass --allow-overlap to accept (each image is then "
                                       "scored once, in the first split listing it)")
                warnings.append(msg + "; scored once, in the first split listing it")
            free = idx[taken < 0]
            owner[free] = pos
        else:
            warnings.append(f"{where} is empty")
        splits[name] = idx
    if raw:
        unassigned = int(np.count_nonzero(owner < 0))
        if unassigned:
            first = int(np.flatnonzero(owner < 0)[0])
            warnings.append(f"{path}: {unassigned} image(s) are in no split (first: images[{first}]); "
                            f"they are never selected")
    return splits


def outside_paths(dataset: Dataset, indices: Iterable[int], strict: bool = False) -> list[tuple[int, str]]:
    """(index, path) of the selected images and masks that lie outside the dataset YAML's folder: a colleague's
    YAML can name any file you can read (``../../``, an absolute path). ``strict`` also resolves symlinks (a
    stat per path); otherwise the check is lexical, free on a million paths."""
    root = os.path.realpath(dataset.root) if strict else os.path.normpath(os.path.abspath(dataset.root))
    found = []
    seen_volumes: set[int] = set()
    for i in indices:
        if int(i) in dataset.volume_of:  # a volume's slice: its volume's files, once
            i = dataset.volume_of[int(i)][0]
            if i in seen_volumes:
                continue
            seen_volumes.add(i)
        entry = dataset.entries[int(i)]
        if not strict and dataset.plain and all(
                isinstance(p, str) and p and p[0] != "/" and ".." not in p
                for p in (entry.values() if isinstance(entry, dict) else (entry,))):
            continue  # a plain relative path without "..": inside, known without normalising (a million entries)
        sample = dataset.sample(int(i))
        for path in (*sample.locations, *([sample.label_path] if sample.label_path else [])):
            full = os.path.realpath(path) if strict else os.path.normpath(os.path.abspath(path))
            if os.path.commonpath([root, full]) != root:
                found.append((int(i), path))
    return found


def select_splits(dataset: Dataset, requested: Iterable[str] | None) -> list[str]:
    """Names of the splits to run, in file order. ``all`` (or nothing) -> every split."""
    wanted = [s for r in (requested or ["all"]) for s in r.split(",") if s]
    if not wanted or "all" in wanted:
        return list(dataset.splits)
    unknown = [s for s in wanted if s not in dataset.splits]
    if unknown:
        have = ", ".join(dataset.splits) if dataset.has_split_key else "none (no 'split' mapping)"
        raise DatasetError(f"{dataset.path}: split '{clip(unknown[0], 100)}' does not exist; "
                           f"the dataset has: {clip(have, 300)}")
    return [s for s in dataset.splits if s in wanted]


def selected_items(dataset: Dataset, splits: Sequence[str]) -> dict[str, np.ndarray]:
    """Per selected split, the image indices it contributes, each image once overall.

    With --allow-overlap an image listed by several selected splits belongs to the first of them.
    """
    seen = np.zeros(len(dataset), dtype=bool)
    out: dict[str, np.ndarray] = {}
    for name in splits:
        idx = dataset.splits[name]
        keep = idx[~seen[idx]]
        seen[keep] = True
        out[name] = keep
    return out


def dump_document(doc: dict) -> str:
    """YAML text that yaml-cpp (ECVL) and yaml-rs read back to the same document."""
    return yaml_rs.dumps(doc)


