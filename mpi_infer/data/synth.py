"""A synthetic ISIC-like lesion dataset: the demo's and the tests' data (no real images ship here).

Each image is skin-toned with low-frequency shading, a lesion-shaped blob (a perturbed ellipse) of
varied size, colour and contrast with a soft edge, and a few hairs; the mask is the hard blob as a
0/255 PNG, the image a JPEG, like ISIC 2017 Task 1. The YAML uses the ISIC layout
(images_segmentation/..., ground_truth/..._segmentation.png) with training/validation/test splits.
Image i depends only on (seed, i), so sets of different sizes share their first images.

``--preset isic`` makes ISIC-sized photographs instead (``isic_sample``): sizes drawn like ISIC 2018 Task 1's,
from 1022x767 (0.8 MP) to 6688x4439 (30 MP), with skin texture at full resolution so that the JPEGs compress
like photographs (about 0.7-1.1 bits per pixel at quality 90, not white noise), and ``*_segmentation.png`` masks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from ..atomic import write_text
from .dataset import dump_document


@dataclass(frozen=True)
class SynthSpec:
    n: int = 64
    seed: int = 0
    min_size: tuple[int, int] = (150, 200)  # (H, W)
    max_size: tuple[int, int] = (240, 320)
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)  # training, validation, test
    preset: str = "small"  # small (150-320 px) | isic (ISIC-sized photographs)


PRESETS = ("small", "isic")
# (W, H) and weight: ISIC 2018 Task 1's range, most images small, a tail of 12-30 MP camera frames
ISIC_SIZES = (((1022, 767), 0.40), ((2048, 1536), 0.15), ((3008, 2000), 0.15), ((4000, 3000), 0.15),
              ((4288, 2848), 0.07), ((6000, 4000), 0.05), ((6688, 4439), 0.03))


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


def isic_sample(seed: int, index: int, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One ISIC-sized (RGB uint8 image, 0/255 uint8 mask): the small lesion drawn at about 384 px, upsampled,
    with mottling and fine skin grain added at full resolution (the mask's edge stays smooth). ``size`` (W, H)
    fixes the size; by default it is drawn from ``ISIC_SIZES``."""
    rng = np.random.default_rng([seed, index, 2018])
    sizes, weights = zip(*ISIC_SIZES)
    drawn = sizes[int(rng.choice(len(sizes), p=np.asarray(weights) / sum(weights)))]
    w, h = size or drawn
    scale = 384 / max(h, w)
    sh, sw = max(32, round(h * scale)), max(32, round(w * scale))
    small, mask = lesion_sample(seed, index, SynthSpec(min_size=(sh, sw), max_size=(sh, sw)))
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    soft = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    mottle = cv2.resize(rng.normal(0, 1, (h // 16 + 1, w // 16 + 1)).astype(np.float32), (w, h),
                        interpolation=cv2.INTER_LINEAR)
    grain = cv2.GaussianBlur(rng.standard_normal((h, w), dtype=np.float32), (0, 0), 1.2)
    img += (mottle * rng.uniform(2, 6) + grain * rng.uniform(3, 8))[..., None]
    return np.clip(img, 0, 255).astype(np.uint8), ((soft >= 127.5) * 255).astype(np.uint8)


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
    if spec.preset not in PRESETS:
        raise ValueError(f"unknown preset {spec.preset!r}; known: {', '.join(PRESETS)}")
    isic = spec.preset == "isic"
    images = []
    for i in range(spec.n):
        rgb, mask = isic_sample(spec.seed, i) if isic else lesion_sample(spec.seed, i, spec)
        stem = f"{'ISIC' if isic else 'SYN'}_{spec.seed:03d}{i:06d}"
        loc = f"images_segmentation/{stem}.jpg"
        lab = f"ground_truth/{stem}_segmentation.png"
        cv2.imwrite(os.path.join(out_dir, loc), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 90 if isic else 92])
        cv2.imwrite(os.path.join(out_dir, lab), mask)
        images.append({"location": loc, "label": lab})
    return write_yaml(out_dir, spec, {
        "name": name,
        "description": f"Synthetic ISIC-like skin lesion segmentation set ({spec.preset} preset, seed {spec.seed}, "
                       f"{spec.n} images)",
        "images": images})


def write_yaml(out_dir: str, spec: SynthSpec, doc: dict) -> str:
    """``<out_dir>/dataset.yml``: the document with training/validation/test splits by ``spec.fractions``."""
    n_train = int(round(spec.n * spec.fractions[0]))
    n_val = int(round(spec.n * spec.fractions[1]))
    doc["split"] = {
        "training": list(range(0, n_train)),
        "validation": list(range(n_train, n_train + n_val)),
        "test": list(range(n_train + n_val, spec.n)),
    }
    path = os.path.join(out_dir, "dataset.yml")
    write_text(path, dump_document(doc), fsync=False)
    return path


CLASSES = ("nevus", "melanoma", "keratosis")


def classification_sample(seed: int, index: int, spec: SynthSpec = SynthSpec()) -> tuple[np.ndarray, int]:
    """One (RGB uint8 image, class) pair: a lesion of ``lesion_sample`` given its class's look.

    nevus: even, smooth, mid brown; melanoma: dark blue-black blotches and an extra irregular lobe;
    keratosis: light tan to yellow with a granular, warty surface. Distinct enough for a small net."""
    rng = np.random.default_rng([seed, index, 7])
    cls = int(rng.integers(0, len(CLASSES)))
    img, mask = lesion_sample(seed + 1000, index, spec)
    img = img.astype(np.float32)
    inside = cv2.GaussianBlur((mask > 0).astype(np.float32), (0, 0), 1.5)[..., None]
    h, w = mask.shape
    if cls == 0:  # nevus: smooth and even
        even = cv2.GaussianBlur(img, (0, 0), 3.0) * 0.9 + np.array([120, 75, 50], np.float32) * 0.1
        img = img * (1 - inside) + even * inside
    elif cls == 1:  # melanoma: blotches and a lobe
        ys, xs = np.nonzero(mask)
        cy, cx = ys.mean(), xs.mean()
        r = np.sqrt(len(ys) / np.pi)
        blot = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(3, 7))):
            py, px = cy + rng.normal(0, r / 2.5), cx + rng.normal(0, r / 2.5)
            cv2.circle(blot, (int(px), int(py)), int(max(2, r * rng.uniform(0.15, 0.35))), 1.0, -1)
        ang = rng.uniform(0, 2 * np.pi)
        lobe = (int(cx + np.cos(ang) * r), int(cy + np.sin(ang) * r))
        cv2.circle(blot, lobe, int(max(2, r * 0.45)), 0.8, -1)
        blot = cv2.GaussianBlur(blot, (0, 0), 2.0)[..., None]
        img = img * (1 - blot) + np.array([35, 30, 55], np.float32) * blot
    else:  # keratosis: light, yellowish, granular
        grain = rng.normal(0, 1, size=(h // 3 + 1, w // 3 + 1)).astype(np.float32)
        grain = cv2.resize(grain, (w, h), interpolation=cv2.INTER_NEAREST)[..., None] * 18
        light = np.array([200, 170, 110], np.float32) + grain
        img = img * (1 - 0.75 * inside) + light * (0.75 * inside)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), cls


def make_classification_dataset(out_dir: str, spec: SynthSpec = SynthSpec(),
                                name: str = "synthetic-lesion-classes") -> str:
    """Write images and ``<out_dir>/dataset.yml`` with ``classes`` and a class label per image."""
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    images = []
    for i in range(spec.n):
        rgb, cls = classification_sample(spec.seed, i, spec)
        loc = f"images/SYNC_{spec.seed:03d}{i:06d}.jpg"
        cv2.imwrite(os.path.join(out_dir, loc), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        images.append({"location": loc, "label": CLASSES[cls]})
    return write_yaml(out_dir, spec, {
        "name": name,
        "description": f"Synthetic skin lesion classification set, {len(CLASSES)} classes (seed {spec.seed}, "
                       f"{spec.n} images)",
        "classes": list(CLASSES),
        "images": images})
