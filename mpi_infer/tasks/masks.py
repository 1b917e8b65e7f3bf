"""Predicted masks as PNG files under <out>/masks/ (--save-masks): one safe, unique name per image."""

from __future__ import annotations

import os
import re

import cv2
import numpy as np

MASK_DIR = "masks"


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def mask_file_name(index: int, location: str) -> str:
    """``<index>_<image stem>.png``: unique per image (the index), safe (no folders, no ``..``)."""
    stem = os.path.splitext(os.path.basename(location.rstrip("/")))[0]
    stem = _UNSAFE.sub("_", stem).strip("._") or "image"
    return f"{index:07d}_{stem[:100]}.png"


def save_mask(out_dir: str, index: int, location: str, prob: np.ndarray, threshold: float,
              original_hw: tuple[int, int]) -> str:
    """The prediction at the image's original size as a 0/255 PNG (probabilities resized linearly,
    then thresholded), written atomically under ``<out>/masks/``."""
    h, w = original_hw
    full = cv2.resize(prob.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    png = ((full >= threshold).astype(np.uint8) * 255)
    ok, data = cv2.imencode(".png", png)
    if not ok:
        raise OSError("PNG encoding failed")
    folder = os.path.join(out_dir, MASK_DIR)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, mask_file_name(index, location))
    from ..atomic import write_bytes

    write_bytes(path, data.tobytes(), fsync=False)
    return path
