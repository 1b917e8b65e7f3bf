"""The shard planner: the worked examples, the balance rule, and properties over random inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpi_infer.data.partition import Shard, check_plan, plan
from mpi_infer.errors import ConfigError, PlanError


def isic(n_train: int = 2000, n_val: int = 150, n_test: int = 600) -> dict[str, np.ndarray]:
    a, b = n_train, n_train + n_val
    return {"training": np.arange(0, a), "validation": np.arange(a, b), "test": np.arange(b, b + n_test)}


def test_isic_2750_in_4_parts_is_687_687_687_689():
    shards = plan(isic(), 4)
    assert [len(s) for s in shards] == [687, 687, 687, 689]
    assert [s.sizes() for s in shards][3] == {"training": 500, "validation": 39, "test": 150}


def test_isic_2750_in_5_parts_is_550_each():
    assert [len(s) for s in plan(isic(), 5)] == [550] * 5


def test_balance_differs_by_at_most_one_per_split_and_overall():
    shards = plan(isic(), 4, balance=True)
    assert sorted(len(s) for s in shards) == [687, 687, 688, 688]
    for split in ("training", "validation", "test"):
        sizes = [len(s.parts[split]) for s in shards]
        assert max(sizes) - min(sizes) <= 1


def test_more_shards_than_images_leaves_empty_shards():
    shards = plan({"test": np.arange(3)}, 7)
    assert [len(s) for s in shards] == [0, 0, 0, 0, 0, 0, 3]
    balanced = plan({"test": np.arange(3)}, 7, balance=True)
    assert [len(s) for s in balanced] == [1, 1, 1, 0, 0, 0, 0]


def test_n_must_be_positive():
    with pytest.raises(ConfigError):
        plan({"test": np.arange(3)}, 0)


def test_check_plan_catches_a_lost_or_duplicated_image():
    selected = {"test": np.arange(10)}
    shards = plan(selected, 3)
    broken = [Shard(s.rank, dict(s.parts)) for s in shards]
    broken[0].parts["test"] = broken[0].parts["test"][:-1]
    with pytest.raises(PlanError):
        check_plan(selected, broken, balance=False)
    dup = [Shard(s.rank, dict(s.parts)) for s in shards]
    dup[1].parts["test"] = np.concatenate([dup[1].parts["test"], [0]])
    with pytest.raises(PlanError):
        check_plan(selected, dup, balance=False)


splits_strategy = st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=5)


@settings(max_examples=300, deadline=None)
@given(sizes=splits_strategy, n=st.integers(min_value=1, max_value=64), balance=st.booleans(),
       seed=st.integers(0, 2**16))
def test_every_image_exactly_once_in_its_split(sizes, n, balance, seed):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(sum(sizes))
    selected, start = {}, 0
    for k, size in enumerate(sizes):
        selected[f"s{k}"] = perm[start : start + size]  # splits need not be contiguous or sorted
        start += size
    shards = plan(selected, n, balance=balance)
    assert len(shards) == n
    everything = np.concatenate([s.parts[k] for s in shards for k in selected]) if sum(sizes) else []
    assert sorted(everything) == list(range(sum(sizes)))
    for name, idx in selected.items():
        assert np.array_equal(np.concatenate([s.parts[name] for s in shards]), idx)  # file order kept
        sizes_k = [len(s.parts[name]) for s in shards]
        q, r = divmod(len(idx), n)
        if balance:
            assert max(sizes_k) - min(sizes_k) <= 1
        else:
            assert sizes_k == [q] * (n - 1) + [q + r]
    if balance:
        totals = [len(s) for s in shards]
        assert max(totals) - min(totals) <= 1


def test_cost_balanced_shards_spread_large_images_and_cover_each_once():
    """12-megapixel photographs all at the end of a split: by count the last rank would get every one."""
    indices = np.arange(100)
    weights = {i: (3_000_000 if i >= 80 else 150_000) for i in range(100)}
    shards = plan({"test": indices}, 2, weights=weights)
    costs = [sum(weights[int(i)] for i in s.parts["test"]) for s in shards]
    assert np.array_equal(np.concatenate([s.parts["test"] for s in shards]), indices)
    assert abs(costs[0] - costs[1]) <= 3_000_000  # within one image's cost
    by_count = plan({"test": indices}, 2)
    counted = [sum(weights[int(i)] for i in s.parts["test"]) for s in by_count]
    assert max(counted) / min(counted) > 5 and max(costs) / min(costs) < 1.2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10**7), max_size=60), st.integers(1, 9))
def test_weighted_sizes_cover_every_image_in_order(costs, n):
    from mpi_infer.data.partition import weighted_sizes

    sizes = weighted_sizes(np.asarray(costs, np.float64), n)
    assert len(sizes) == n and sum(sizes) == len(costs) and min(sizes) >= 0
    shards = plan({"s": np.arange(len(costs))}, n, weights=dict(enumerate(costs)))
    assert [len(s) for s in shards] == sizes


def test_cost_balance_carries_over_splits():
    """Three splits of few, uneven images: per-split cuts alone would leave one rank heavy in every split."""
    rng = np.random.default_rng(5)
    selected = {"training": np.arange(0, 30), "validation": np.arange(30, 37), "test": np.arange(37, 50)}
    weights = {i: float(rng.choice([0.8, 3, 6, 12, 30])) for i in range(50)}
    shards = plan(selected, 2, weights=weights)
    costs = [sum(weights[int(i)] for _, i in s.items()) for s in shards]
    assert abs(costs[0] - costs[1]) <= 30  # within the largest single image
    assert sorted(i for s in shards for _, i in s.items()) == list(range(50))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 20])
@pytest.mark.parametrize("by_bytes", [False, True])
def test_a_plan_keeps_every_volume_on_one_rank(n, by_bytes):
    """Volumes (slice ids -> their volume) are never cut: each rank reads a volume and its label once; the cuts
    balance slices (or their bytes) between volumes, and the plan still holds every slice exactly once."""
    rng = np.random.default_rng(n)
    groups, ids, next_id = {}, [], 100
    for volume in range(12):
        if volume % 4 == 3:
            ids.append(volume)  # a 2D image among the volumes
            continue
        for _ in range(int(rng.integers(1, 30))):
            groups[next_id] = volume
            ids.append(next_id)
            next_id += 1
    first_test = next(pos for pos, i in enumerate(ids) if groups.get(i, i) >= 6)  # a volume is in one split
    selected = {"training": np.asarray(ids[:first_test]), "test": np.asarray(ids[first_test:])}
    weights = {i: float(rng.integers(1, 100)) for i in ids} if by_bytes else None
    shards = plan(selected, n, weights=weights, groups=groups)
    owner = {}
    for shard in shards:
        for _, i in shard.items():
            assert owner.setdefault(groups.get(i, -i), shard.rank) == shard.rank
    assert sorted(i for s in shards for _, i in s.items()) == sorted(ids)
    if n == 2 and not by_bytes:  # balanced by slices, within a volume's size
        biggest = max(np.bincount(list(groups.values())))
        assert abs(len(shards[0]) - len(shards[1])) <= 2 * biggest
    with pytest.raises(PlanError, match="volume .* is cut between shards"):
        cut = [Shard(0, {"test": np.asarray(ids[:41])}), Shard(1, {"test": np.asarray(ids[41:])})]
        check_plan({"test": np.asarray(ids)}, cut, False, sizes_by_rule=False,
                   groups={**groups, ids[40]: -7, ids[41]: -7})
