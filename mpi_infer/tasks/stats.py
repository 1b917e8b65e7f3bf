"""What a reviewer asks of a headline number: the distribution of the per-image values, and a 95% confidence
interval by a seeded percentile bootstrap.

The bootstrap resamples *units* (images, or with ``--group-by`` the groups, e.g. patients, whose images are not
independent) with replacement. Units are ordered by their smallest image index and the random stream depends
only on (seed, split name), so the interval is the same for any number of ranks, any schedule, and after a
resume. Every statistic is computed from per-unit sums (a replicate's sums are ``weights @ sums``), which serves
means (per-image metrics) and pooled figures (summed pixel counts) alike.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator

import numpy as np

BOOTSTRAP_REPLICATES = 2000
CI_LEVEL = 0.95
BLOCK_CELLS = 4_000_000  # replicate weights are drawn in blocks of at most this many cells


def describe(values: np.ndarray) -> dict[str, float | int | None]:
    """n, mean, std (sample), median, quartiles, 5th/95th percentiles, min and max of per-image values."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {k: None for k in ("mean", "std", "median", "q25", "q75", "p5", "p95", "min", "max")} | {"n": 0}
    q = np.percentile(v, [5, 25, 50, 75, 95])
    # the mean exactly rounded (fsum), as the metrics' own means are
    return {"n": int(v.size), "mean": math.fsum(v) / v.size, "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "median": float(q[2]), "q25": float(q[1]), "q75": float(q[3]), "p5": float(q[0]), "p95": float(q[4]),
            "min": float(v.min()), "max": float(v.max())}


def replicate_weights(units: int, replicates: int, seed: int, key: str) -> Iterator[np.ndarray]:
    """Blocks of [b, units] draw counts: replicate r drew unit u ``w[r, u]`` times (``units`` draws each)."""
    rng = np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8"))])
    block = max(1, BLOCK_CELLS // max(1, units))
    done = 0
    while done < replicates:
        b = min(block, replicates - done)
        draws = rng.integers(0, units, size=(b, units)) + (np.arange(b) * units)[:, None]
        yield np.bincount(draws.ravel(), minlength=b * units).reshape(b, units).astype(np.float64)
        done += b


def percentile_ci(replicates: np.ndarray) -> list[float | None]:
    """The central CI_LEVEL interval of replicate values (NaN replicates, e.g. an empty resample, ignored)."""
    r = np.asarray(replicates, np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return [None, None]
    tail = (1.0 - CI_LEVEL) / 2 * 100
    lo, hi = np.percentile(r, [tail, 100 - tail])
    return [float(lo), float(hi)]


def bootstrap_sums(sums: np.ndarray, replicates: int, seed: int, key: str) -> np.ndarray:
    """[B, m] resampled column sums of ``sums`` ([units, m]); the caller turns them into statistics."""
    sums = np.asarray(sums, np.float64)
    out = [w @ sums for w in replicate_weights(len(sums), replicates, seed, key)]
    return np.concatenate(out) if out else np.empty((0, sums.shape[1]))
