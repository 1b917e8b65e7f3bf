"""Cut the selected images into N shards, and prove that every image lands in exactly one.

Within each split (in file order) every shard takes a contiguous run. The default rule is the one
DeepHealth users know from the split tool: floor(n/N) each, the last shard also takes the remainder
(2750 ISIC images in 4 parts: 687, 687, 687, 689). ``balance=True`` spreads each split's remainder one
image at a time, rotating across splits, so sizes differ by at most one per split and in total.
``weights`` (a run's default: each image's file bytes, which JPEG decoding time follows) cuts each split's
contiguous runs by cost instead, aiming each rank at an equal share of the total over all splits (what a rank
got too much of in one split it gets less of in the next), so a rank that draws the 12-megapixel photographs
does not finish last. ``groups`` (a volume's slice -> its volume) keeps each volume on one rank: a split
holding volumes is cut between volumes only, aiming each rank at an equal share of its slices (or of their
cost), so a volume and its label are read once. The split tool's bugs (re-labelled splits, extra parts, dropped
tails) cannot happen here: the plan checks itself and raises PlanError if it does not hold every selected image
exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, PlanError


@dataclass
class Shard:
    """What one rank runs: per split, the original image indices, in file order."""

    rank: int
    parts: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(sum(len(v) for v in self.parts.values()))

    def items(self) -> Iterator[tuple[str, int]]:
        for split, indices in self.parts.items():
            for i in indices:
                yield split, int(i)

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.parts.items()}


def split_sizes(count: int, n: int, balance: bool = False, offset: int = 0) -> list[int]:
    """Sizes of one split's N runs. ``offset`` rotates where balanced remainders go."""
    q, r = divmod(count, n)
    sizes = [q] * n
    if balance:
        for k in range(r):
            sizes[(offset + k) % n] += 1
    else:
        sizes[-1] += r
    return sizes


def weighted_sizes(weights: np.ndarray, n: int, shares: np.ndarray | None = None) -> list[int]:
    """Sizes of N contiguous runs whose summed weights come closest to ``shares`` of the total (default: equal
    shares). The cuts are made in order, each where the cumulative weight best meets its target."""
    count = len(weights)
    cum = np.cumsum(np.asarray(weights, np.float64))
    total = float(cum[-1]) if count else 0.0
    if total <= 0:
        return split_sizes(count, n)
    shares = np.full(n, 1.0 / n) if shares is None else np.asarray(shares, np.float64) / float(np.sum(shares))
    prefix = np.concatenate([[0.0], cum])  # prefix[b] = weight of the first b images
    bounds = [0]
    for k in range(1, n):
        target = total * float(np.sum(shares[:k]))
        b = int(np.searchsorted(prefix, target))  # first b with prefix[b] >= target
        if b > 0 and target - prefix[b - 1] <= prefix[b] - target:
            b -= 1
        bounds.append(min(count, max(bounds[-1], b)))
    bounds.append(count)
    return [bounds[k + 1] - bounds[k] for k in range(n)]


def plan(selected: Mapping[str, np.ndarray], n: int, balance: bool = False,
         weights: Mapping[int, float] | None = None, groups: Mapping[int, int] | None = None) -> list[Shard]:
    """N shards over ``selected`` (split -> indices). N may exceed the image count (empty shards).
    ``weights`` (image index -> cost) balances each split's runs by cost instead of count; ``groups`` (sample
    id -> its volume) never cuts a volume."""
    if n < 1:
        raise ConfigError(f"number of shards must be >= 1, got {n}")
    shards = [Shard(rank) for rank in range(n)]
    offset = 0
    carried = np.zeros(n)  # cost each rank holds from earlier splits: later splits even it out
    by_rule = True
    for split, indices in selected.items():
        indices = np.asarray(indices, dtype=np.int64)
        starts = unit_starts(indices, groups)
        if weights is not None or len(starts) < len(indices):
            by_rule = False
            w = (np.array([weights.get(int(i), 0.0) for i in indices], np.float64) if weights is not None
                 else np.ones(len(indices)))
            goal = (carried.sum() + w.sum()) / n
            shares = np.maximum(goal - carried, 0.0)
            unit_w = np.add.reduceat(w, starts) if len(indices) else w
            unit_sizes = weighted_sizes(unit_w, n, shares if shares.sum() > 0 else None)
            edges = np.append(starts, len(indices))  # a unit's first position, then the end
            sizes = list(np.diff(edges[np.concatenate([[0], np.cumsum(unit_sizes)])]))
            prefix = np.concatenate([[0.0], np.cumsum(w)])  # weight of the first b images of the split
            cuts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            carried += prefix[cuts[1:]] - prefix[cuts[:-1]]
        else:
            sizes = split_sizes(len(indices), n, balance, offset)
        offset = (offset + len(indices) % n) % n
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        for rank, shard in enumerate(shards):
            shard.parts[split] = indices[bounds[rank] : bounds[rank + 1]]
    check_plan(selected, shards, balance, sizes_by_rule=by_rule, groups=groups)
    return shards


def unit_starts(indices: np.ndarray, groups: Mapping[int, int] | None) -> np.ndarray:
    """The positions where a unit a plan may not cut begins: every image, or a volume's first slice."""
    if not groups or not len(indices):
        return np.arange(len(indices))
    keys = [groups.get(int(i), -1 - pos) for pos, i in enumerate(indices)]  # an image is a unit of its own
    return np.array([0] + [pos for pos in range(1, len(keys)) if keys[pos] != keys[pos - 1]], np.int64)


def check_plan(selected: Mapping[str, np.ndarray], shards: list[Shard], balance: bool,
               sizes_by_rule: bool = True, groups: Mapping[int, int] | None = None) -> None:
    """Raise PlanError unless the shards hold every selected image exactly once, in its own split,
    with the sizes the rule promises (the count rules; a cost-balanced plan is checked for coverage), and every
    volume of ``groups`` on one shard."""
    n = len(shards)
    seen: list[np.ndarray] = []
    offset = 0
    for split, indices in selected.items():
        indices = np.asarray(indices, dtype=np.int64)
        runs = [s.parts.get(split, np.empty(0, np.int64)) for s in shards]
        got = np.concatenate(runs) if runs else np.empty(0, np.int64)
        if not np.array_equal(got, indices):
            raise PlanError(f"plan check failed: split '{split}' is not covered exactly once in order")
        want = split_sizes(len(indices), n, balance, offset)
        offset = (offset + len(indices) % n) % n
        if sizes_by_rule and [len(r) for r in runs] != want:
            raise PlanError(f"plan check failed: split '{split}' sizes {[len(r) for r in runs]} != {want}")
        seen.append(got)
    for shard in shards:
        extra = set(shard.parts) - set(selected)
        if extra:
            raise PlanError(f"plan check failed: shard {shard.rank} has unselected split(s) {sorted(extra)}")
    if groups:
        owner: dict[int, int] = {}
        for shard in shards:
            for _, i in shard.items():
                g = groups.get(i)
                if g is not None and owner.setdefault(g, shard.rank) != shard.rank:
                    raise PlanError(f"plan check failed: volume {g} is cut between shards {owner[g]} and "
                                    f"{shard.rank}")
    everything = np.concatenate(seen) if seen else np.empty(0, np.int64)
    if everything.size and (everything.min() < 0 or np.bincount(everything).max() > 1):
        raise PlanError("plan check failed: an image is in more than one split's shards")


def describe(shards: list[Shard]) -> list[dict[str, object]]:
    """One row per shard: its rank, total and per-split sizes (for --dry-run and logs)."""
    return [{"rank": s.rank, "images": len(s), "per_split": s.sizes()} for s in shards]
