"""Several models in one pass: which models (``--model [name=]path``, a folder, a glob), and how their outputs
combine (``--ensemble mean|vote``, ``--tta flip``). No MPI, no engine: plain arrays.

Every image is read and preprocessed once per rank; each model runs on the same batch. With ``--tta flip`` each
model also runs on the horizontally, vertically and doubly flipped batch; segmentation maps are flipped back,
and the four outputs are averaged. The spread across them (a per-pixel std map, or per class) is the per-image
uncertainty. ``--ensemble mean`` averages the models' (TTA-averaged) probabilities and scores the result as
one more model, ``ensemble``; ``--ensemble vote`` (classification) scores the share of models voting for
each class.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError

ENSEMBLE = "ensemble"
MODEL_SUFFIXES = (".onnx", ".bin")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FLIPS = ((), (-1,), (-2,), (-2, -1))  # none, horizontal, vertical, both (axes of [N, C, H, W])


ACTIVATIONS = ("none", "sigmoid", "softmax")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str
    activation: str = "none"  # applied to this model's raw output (--activation [NAME=]none|sigmoid|softmax)


def _expand(path: str) -> list[str]:
    """A folder: its model files; a glob: its matches (sorted); else the path itself."""
    if os.path.isdir(path):
        found = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(MODEL_SUFFIXES))
        if not found:
            raise UsageError(f"argument --model: folder {path} holds no .onnx or .bin file")
        return found
    if any(c in path for c in "*?["):
        found = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        if not found:
            raise UsageError(f"argument --model: {path} matches no file")
        return found
    return [path]


def parse_models(values: Sequence[str], resolve: Callable[[str], str]) -> list[ModelSpec]:
    """``--model`` values in order: ``name=path`` or ``path`` (named by its file stem, or the demo alias);
    ``resolve`` maps demo aliases to files. Names must be unique, short and safe (they become CSV values)."""
    specs: list[ModelSpec] = []
    for value in values:
        name, sep, rest = value.partition("=")
        if sep and _NAME.match(name) and "/" not in name:
            given, path = name, rest
        else:
            given, path = None, value
        resolved = resolve(path)
        files = _expand(resolved)
        if given and len(files) > 1:
            raise UsageError(f"argument --model: {value!r} names {len(files)} files; a name is for one model")
        for f in files:
            default = path if resolved != path else os.path.splitext(os.path.basename(f))[0]
            specs.append(ModelSpec(given or default, f))
    names = [s.name for s in specs]
    for n in names:
        if not _NAME.match(n):
            raise UsageError(f"argument --model: model name {n!r}: expected letters, digits, '.', '_' or '-' (at "
                             f"most 64), e.g. --model best=ckpt/e40.onnx")
        if n == ENSEMBLE:
            raise UsageError(f"argument --model: the name {ENSEMBLE!r} is kept for --ensemble; name it otherwise")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"argument --model: the name(s) {', '.join(dupes)} are given twice; name each model "
                         f"(--model a=PATH --model b=PATH)")
    return specs


def predict_tta(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tta: str | None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's output on ``x`` ([N, 3, H, W]); with ``flip``, the mean over the four flips (segmentation maps
    [N, H, W] flipped back) and the std across them (same shape); else (output, None)."""
    if not tta:
        return predict(x), None
    outs = []
    for axes in FLIPS:
        y = predict(np.ascontiguousarray(np.flip(x, axes)) if axes else x)
        if y.ndim in (3, 4) and axes:  # maps: flip them back ([N, H, W] or [N, K, H, W]: the last two axes)
            y = np.flip(y, axes)
        outs.append(np.asarray(y, np.float32))
    stack = np.stack(outs)
    return stack.mean(axis=0), stack.std(axis=0)


def combine(outputs: Sequence[np.ndarray], how: str) -> np.ndarray:
    """The ensemble's output: the mean of the models' probabilities, or (``vote``, [N, C]) each class's share of
    the models' argmax votes (ties then break towards the lower class index, as argmax does)."""
    if how == "vote":
        votes = np.stack([np.argmax(o, axis=1) for o in outputs])  # [K, N]
        classes = outputs[0].shape[1]
        return np.stack([(votes == c).mean(axis=0) for c in range(classes)], axis=1).astype(np.float32)
    return np.mean(np.stack([np.asarray(o, np.float32) for o in outputs]), axis=0)


def uncertainty(mean: np.ndarray, spread: np.ndarray, threshold: float) -> list[float | None]:
    """Per image: segmentation, the mean per-pixel std inside the predicted lesion (None where nothing is
    predicted); classification, the std of the predicted class's probability."""
    if mean.ndim == 3:
        out: list[float | None] = []
        for m, s in zip(mean, spread):
            inside = m >= threshold
            out.append(float(s[inside].mean()) if inside.any() else None)
        return out
    top = np.argmax(mean, axis=1)
    return [float(spread[k, c]) for k, c in enumerate(top)]


def with_activations(specs: list[ModelSpec], values: Sequence[str] | None) -> list[ModelSpec]:
    """``--activation`` values: ``VALUE`` for every model, ``NAME=VALUE`` for one (which wins over the plain
    form). Each model gets its own: a probability model and a logits model can run side by side, and the
    start-up probe refuses an activation on outputs that already are probabilities."""
    every, named = "none", {}
    for value in values or ():
        name, sep, act = value.rpartition("=")
        if act not in ACTIVATIONS:
            raise UsageError(f"argument --activation: {value!r}: expected none, sigmoid or softmax, or "
                             f"NAME=none|sigmoid|softmax for one model")
        if not sep:
            every = act
            continue
        if name not in {s.name for s in specs}:
            raise UsageError(f"argument --activation: {value!r} names no model; the models are "
                             f"{', '.join(s.name for s in specs)}")
        if named.get(name, act) != act:
            raise UsageError(f"argument --activation: model {name} is given {named[name]} and {act}")
        named[name] = act
    return [ModelSpec(s.name, s.path, named.get(s.name, every)) for s in specs]
