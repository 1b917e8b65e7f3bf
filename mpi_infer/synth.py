"""A synthetic ISIC-like lesion dataset: the demo's and the tests' data (no real images ship here).

Each image is skin-toned with low-frequency shading, a lesion-shaped blob (a perturbed ellipse) of
varied size, colour and contrast with a soft edge, and a few hairs; the mask is the hard blob as a
0/255 PNG, the image a JPEG, like ISIC 2017 Task 1. The YAML uses the ISIC layout
(images_segmentation/..., ground_truth/..._segmentation.png) with training/validation/test splits.
Image i depends only on (seed, i), so sets of different sizes share their first images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from .atomic import write_text
from .dataset import dump_document


@dataclass(frozen=True)
class SynthSpec:
    n: int = 64
    seed: int = 0
    min_size: tuple[int, int] = (150, 200)  # (H, W)
    max_size: tuple[int, int] = (240, 320)
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)  # training, validation, test


def lesion_sample(seed: int, index: int, spec: SynthSpec = SynthSpec()) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 image, 0/255 uint8 mask) pair."""
    rng = np.random.default_rng([seed, index])
    h = int(rng.integers(spec.min_size[0], spec.max_size[0] + 1))
    w = int(rng.integers(spec.min_size[1], spec.max_size[1] + 1))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    skin = np.array([rng.uniform(195, 240), rng.uniform(145, 195), rng.uniform(115, 170)], np.float32)
    shade = _smooth_noise(rng, h, w, scale=rng.uniform(0.15, 0.35)) * rng.uniform(8, 25)
    gx, gy = rng.normal(0, 12, size=2)
    grad = (gx * (xx / w - 0.5) + gy * (yy / h - 0.5))
    vignette = -rng.uniform(0, 30) * (((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) * 2)
    img = skin[None, None, :] + (shade + grad + vignette)[..., None]

    cy = h * rng.uniform(0.35, 0.65)
    cx = w * rng.uniform(0.35, 0.65)
    base = min(h, w) * rng.uniform(0.12, 0.34)
    aspect = rng.uniform(0.65, 1.0)
    rot = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(rot) + dy * np.sin(rot)
    v = (-dx * np.sin(rot) + dy * np.cos(rot)) / aspect
    theta = np.arctan2(v, u)
    radius = np.full_like(theta, base)
    for k in range(2, 7):
        radius += base * rng.uniform(0, 0.16 / k * 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    inside = np.hypot(u, v) <= radius
    mask = inside.astype(np.uint8) * 255

    lesion = np.array([rng.uniform(70, 170), rng.uniform(40, 110), rng.uniform(25, 90)], np.float32)
    contrast = rng.uniform(0.45, 0.95)
    texture = _smooth_noise(rng, h, w, scale=rng.uniform(0.05, 0.15))[..., None] * rng.uniform(10, 30)
    soft = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), sigmaX=rng.uniform(0.8, 2.5))[..., None]
    img = img * (1 - contrast * soft) + (lesion + texture) * (contrast * soft)

    for _ in range(int(rng.integers(0, 5))):  # hairs
        pts = np.cumsum(rng.normal(0, 1, size=(8, 2)) * [w / 12, h / 12], axis=0) + [rng.uniform(0, w),
                                                                                    rng.uniform(0, h)]
        cv2.polylines(img, [pts.astype(np.int32)], False, color=tuple(float(x) for x in skin * 0.25),
                      thickness=1, lineType=cv2.LINE_AA)
    img += rng.normal(0, 3.0, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-ish noise with features about ``scale`` of the image size."""
    gh, gw = max(2, int(round(1 / scale))), max(2, int(round(1 / scale)))
    coarse = rng.normal(0, 1, size=(gh, gw)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def make_dataset(out_dir: str, spec: SynthSpec = SynthSpec(), name: str = "synthetic-lesions") -> str:
    """Write images, masks and ``<out_dir>/dataset.yml``; return the YAML path."""
    img_dir = os.path.join(out_dir, "images_segmentation")
    gt_dir = os.path.join(out_dir, "ground_truth")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(gt_dir, exist_ok=True)
    images = []
    for i in range(spec.n):
        rgb, mask = lesion_sample(spec.seed, i, spec)
        stem = f"SYN_{spec.seed:03d}{i:06d}"
        loc = f"images_segmentation/{stem}.jpg"
        lab = f"ground_truth/{stem}_segmentation.png"
        cv2.imwrite(os.path.join(out_dir, loc), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 92])
        cv2.imwrite(os.path.join(out_dir, lab), mask)
        images.append({"location": loc, "label": lab})
    n_train = int(round(spec.n * spec.fractions[0]))
    n_val = int(round(spec.n * spec.fractions[1]))
    doc = {
        "name": name,
        "description": f"Synthetic ISIC-like skin lesion segmentation set (seed {spec.seed}, {spec.n} images)",
        "images": images,
        "split": {
            "training": list(range(0, n_train)),
            "validation": list(range(n_train, n_train + n_val)),
            "test": list(range(n_train + n_val, spec.n)),
        },
    }
    path = os.path.join(out_dir, "dataset.yml")
    write_text(path, dump_document(doc), fsync=False)
    return path
