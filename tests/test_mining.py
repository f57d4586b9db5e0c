"""Hard-negative mining on constructed caches; the negative memory; the query schedule."""

import numpy as np
import pytest

from tf_netvlad import mining
from tf_netvlad.places import PlaceSplit


def _line_split(num_db=40, query_x=(0.0, 50.0, 100.0, 1000.0), spacing=5.0):
    """db images every `spacing` m on the x axis, queries at `query_x` (the last has no positive)."""
    db_utm = np.stack([np.arange(num_db) * spacing, np.zeros(num_db)], 1)
    q_utm = np.stack([np.asarray(query_x, float), np.zeros(len(query_x))], 1)
    return PlaceSplit(name="line", db_paths=tuple(f"db{i}.jpg" for i in range(num_db)), db_utm=db_utm,
                      query_paths=tuple(f"q{i}.jpg" for i in range(len(query_x))), query_utm=q_utm)


def _cache_with_d2(d2):
    """Descriptors whose squared distance to the zero query descriptor is `d2`."""
    db = np.zeros((len(d2), 4), np.float32)
    db[:, 0] = np.sqrt(np.asarray(d2, np.float64))
    return db


def test_mine_tuples_picks_hardest_negatives_beyond_radius_and_ranked_positives():
    split = _line_split()
    positives, non_negatives = split.non_trivial_positives(), split.positives()
    # query 1 at x=50: positives (<= 10 m) are db 8, 9, 10, 11, 12; non-negatives (<= 25 m) db 5..15
    assert sorted(positives[1]) == [8, 9, 10, 11, 12] and sorted(non_negatives[1]) == list(range(5, 16))
    rng = np.random.default_rng(0)
    d2 = rng.permutation(np.linspace(0.05, 1.9, 40))
    d2[5:16] = 0.001  # inside the radius: nearest in descriptor space, must never be negatives
    d2[[9, 12, 10]] = [0.30, 0.20, 0.50]  # so the two nearest positives are 8 and 11 (0.001)
    db = _cache_with_d2(d2)
    cache = np.full((4, 3), -1, np.int64)
    rows, new_cache, stats = mining.mine_tuples(
        np.array([1]), np.zeros((1, 4), np.float32), db, positives, non_negatives, cache, rng,
        num_positives=2, num_negatives=3, pool_size=1000, margin=0.1)
    outside = np.setdiff1d(np.arange(40), np.arange(5, 16))
    hardest = outside[np.argsort(d2[outside])][:3]
    assert rows.shape == (1, 6)
    assert rows[0, 0] == 1
    assert sorted(rows[0, 1:3]) == [8, 11]
    assert list(rows[0, 3:]) == list(hardest)
    assert list(new_cache[0]) == list(hardest)
    best = np.sort(d2[[8, 9, 10, 11, 12]])[0]
    want_violating = np.sum(d2[hardest] < best + 0.1) / 3
    assert stats["violating_fraction"] == pytest.approx(want_violating)


def test_positive_set_is_ranked_and_padded():
    split = _line_split()
    d2 = np.full(40, 1.5)
    d2[[8, 9, 10, 11, 12]] = [0.4, 0.3, 0.2, 0.5, 0.1]
    rows, _, stats = mining.mine_tuples(
        np.array([1, 0]), np.zeros((2, 4), np.float32), _cache_with_d2(d2),
        split.non_trivial_positives(), split.positives(), np.full((4, 2), -1, np.int64),
        np.random.default_rng(0), num_positives=4, num_negatives=2)
    assert list(rows[0, 1:5]) == [12, 10, 9, 8]
    # query 0 at x=0 has positives db 0, 1, 2 (0, 5, 10 m): 3 of 4 slots, padded with -1
    assert sorted(rows[1, 1:4]) == [0, 1, 2] and rows[1, 4] == -1
    assert stats["mean_positive_d2"] == pytest.approx((0.1 + 1.5) / 2)


def test_remembered_negatives_join_a_small_pool():
    split = _line_split()
    d2 = np.linspace(0.1, 1.9, 40)[::-1].copy()  # db 39 is the hardest
    db = _cache_with_d2(d2)
    cache = np.full((4, 2), -1, np.int64)
    cache[1] = [39, 38]
    rows, new_cache, _ = mining.mine_tuples(
        np.array([1]), np.zeros((1, 4), np.float32), db, split.non_trivial_positives(),
        split.positives(), cache, np.random.default_rng(0), num_negatives=2, pool_size=2)
    assert list(rows[0, 2:]) == [39, 38] and list(new_cache[0]) == [39, 38]
    cache[1] = [6, -1]  # a remembered id now inside the radius is never used
    rows, _, _ = mining.mine_tuples(
        np.array([1]), np.zeros((1, 4), np.float32), db, split.non_trivial_positives(),
        split.positives(), cache, np.random.default_rng(0), num_negatives=2, pool_size=3)
    assert 6 not in rows[0, 2:]


def test_negatives_never_inside_radius_with_random_pools():
    split = _line_split(num_db=200, query_x=np.linspace(0, 990, 30))
    rng = np.random.default_rng(1)
    db = rng.normal(size=(200, 8)).astype(np.float32)
    q = rng.normal(size=(30, 8)).astype(np.float32)
    rows, _, _ = mining.mine_tuples(np.arange(30), q, db, split.non_trivial_positives(), split.positives(),
                                    np.full((30, 10), -1, np.int64), rng, pool_size=50)
    for row in rows:
        dist = np.abs(split.db_utm[row[2:], 0] - split.query_utm[row[0], 0])
        assert dist.min() > 25 and len(set(row[2:])) == 10


class _FakeMiner(mining.HardNegativeMiner):
    """Mining with a constructed cache instead of a model."""

    def compute_cache(self, model, query_ids):
        rng = np.random.default_rng(7)
        db = rng.normal(size=(self.split.num_db, 6)).astype(np.float32)
        return db[np.minimum(query_ids * 5, self.split.num_db - 1)] + 0.01, db


def test_memory_persists_across_save_and_load(tmp_path):
    split = _line_split(num_db=80, query_x=np.arange(0, 400, 20.0))
    miner = _FakeMiner(split, num_negatives=4, pool_size=10, cache_refresh_queries=8, seed=3)
    rows0 = miner.mine(None, 0)
    miner.mine(None, 1)
    state = miner.state_dict()
    assert (state["neg_cache"][rows0[:, 0]] >= 0).all()
    np.savez(tmp_path / "mining.npz", **state)
    restored = _FakeMiner(split, num_negatives=4, pool_size=10, cache_refresh_queries=8, seed=3)
    restored.load_state_dict(dict(np.load(tmp_path / "mining.npz")))
    np.testing.assert_array_equal(restored.neg_cache, miner.neg_cache)
    # the memory changes what is mined: a fresh miner without it picks differently for cycle 2
    fresh = _FakeMiner(split, num_negatives=4, pool_size=10, cache_refresh_queries=8, seed=3)
    np.testing.assert_array_equal(restored.mine(None, 2), miner.mine(None, 2))
    assert not np.array_equal(fresh.mine(None, 2), restored.mine(None, 2))
    wrong = _FakeMiner(split, num_negatives=5, pool_size=10, cache_refresh_queries=8, seed=3)
    with pytest.raises(ValueError, match="num_negatives"):
        wrong.load_state_dict(state)


def test_query_schedule_drops_queries_without_positives_and_covers_each_pass():
    split = _line_split()  # query 3 (x = 1000 m) has no positive
    miner = _FakeMiner(split, num_negatives=2, cache_refresh_queries=2, seed=0)
    assert list(miner.valid_queries) == [0, 1, 2] and miner.dropped_queries == 1
    stream = np.concatenate([miner.queries_for_cycle(c) for c in range(3)])  # 6 = two passes
    assert sorted(stream[:3]) == [0, 1, 2] and sorted(stream[3:]) == [0, 1, 2]
    np.testing.assert_array_equal(miner.queries_for_cycle(1), stream[2:4])


def test_bad_splits_give_clear_errors():
    no_pos = _line_split(query_x=(1000.0, 2000.0))
    with pytest.raises(ValueError, match="No training query .* has a database image within"):
        mining.HardNegativeMiner(no_pos)
    few = _line_split(num_db=8)  # 8 db images over 35 m: query 0 has only 2 beyond 25 m
    with pytest.raises(ValueError, match="num_negatives=10 .* only"):
        mining.HardNegativeMiner(few, num_negatives=10)


def test_exclude_very_hard_keeps_semi_hard_negatives_first():
    split = _line_split()
    d2 = np.full(40, 1.9)
    d2[[8, 9, 10, 11, 12]] = [0.3, 0.5, 0.5, 0.5, 0.5]  # best positive of query 1: 0.3
    d2[[20, 21, 22, 23]] = [0.1, 0.2, 0.35, 0.45]  # 20, 21 are "very hard" (nearer than 0.3)
    args = (np.array([1]), np.zeros((1, 4), np.float32), _cache_with_d2(d2), split.non_trivial_positives(),
            split.positives(), np.full((4, 3), -1, np.int64), np.random.default_rng(0))
    rows, cache, _ = mining.mine_tuples(*args, num_negatives=3)
    assert list(rows[0, 2:]) == [20, 21, 22]
    rows, cache, stats = mining.mine_tuples(*args, num_negatives=3, exclude_very_hard=True)
    assert list(rows[0, 2:4]) == [22, 23] and d2[rows[0, 4]] == 1.9 and list(cache[0]) == [20, 21, 22]
    assert stats["violating_fraction"] == pytest.approx(1 / 3)  # only 0.35 violates (< 0.3 + 0.1)
    few = split.positives()
    few = [np.setdiff1d(np.arange(40), [20, 21, 22]) if i == 1 else p for i, p in enumerate(few)]
    rows, _, _ = mining.mine_tuples(*args[:4], few, *args[5:], num_negatives=3, exclude_very_hard=True)
    assert list(rows[0, 2:]) == [22, 21, 20]  # fewer than N semi-hard: filled with the least hard
