"""Hard-negative mining on constructed caches; the negative memory; the query schedule."""

import numpy as np
import pytest

from tf_netvlad.data.places import PlaceSplit
from tf_netvlad.training import mining
from tf_netvlad.training.tuple_mining import decode_negatives, strip_fillers


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
    ids, trains = decode_negatives(rows[0, 3:])
    assert list(ids) == list(hardest)
    assert list(new_cache[0]) == list(hardest)
    best = np.sort(d2[[8, 9, 10, 11, 12]])[0]
    # the slots that do not violate the margin under the cache are fillers, written as -2 - id
    np.testing.assert_array_equal(trains, d2[hardest] < best + 0.1)
    np.testing.assert_array_equal(rows[0, 3:], np.where(trains, hardest, -2 - hardest))
    want_violating = np.sum(d2[hardest] < best + 0.1) / 3
    assert stats["violating_fraction"] == pytest.approx(want_violating)
    assert stats["training_negatives_fraction"] == pytest.approx(want_violating)


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
    assert list(decode_negatives(rows[0, 2:])[0]) == [39, 38] and list(new_cache[0]) == [39, 38]
    cache[1] = [6, -1]  # a remembered id now inside the radius is never used
    rows, _, _ = mining.mine_tuples(
        np.array([1]), np.zeros((1, 4), np.float32), db, split.non_trivial_positives(),
        split.positives(), cache, np.random.default_rng(0), num_negatives=2, pool_size=3)
    assert 6 not in decode_negatives(rows[0, 2:])[0]


def test_negatives_never_inside_radius_with_random_pools():
    split = _line_split(num_db=200, query_x=np.linspace(0, 990, 30))
    rng = np.random.default_rng(1)
    db = rng.normal(size=(200, 8)).astype(np.float32)
    q = rng.normal(size=(30, 8)).astype(np.float32)
    rows, _, _ = mining.mine_tuples(np.arange(30), q, db, split.non_trivial_positives(), split.positives(),
                                    np.full((30, 10), -1, np.int64), rng, pool_size=50)
    for row in strip_fillers(rows, 1):
        dist = np.abs(split.db_utm[row[2:], 0] - split.query_utm[row[0], 0])
        assert dist.min() > 25 and len(set(row[2:])) == 10


class _FakeMiner(mining.HardNegativeMiner):
    """Mining with a constructed cache instead of a model."""

    def compute_cache(self, model, query_ids):
        rng = np.random.default_rng(7)
        db = rng.normal(size=(self.split.num_db, 6)).astype(np.float32)
        self.last_extracted = {"database": self.split.num_db, "queries": len(query_ids)}
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


def test_refresh_share_lengthens_the_cycles_of_a_large_database_only():
    """`refresh_share`: the cycle size of `refresh_schedule.share_cycle_size` from the split's sizes.
    400 db images, 100 queries; with `with_database_queries` 500 training queries of which 100
    (0.2) are not database images; tuples of 1 + 1 + 2 images, share 0.25: per query
    3·4·0.25 − 0.2·0.75 = 2.85, Q = ceil(400·0.75 / 2.85) = ceil(105.3) = 106."""
    split = _line_split(num_db=400, query_x=np.arange(0, 2000, 20.0))
    options = dict(num_positives=1, num_negatives=2, cache_refresh_queries=10)
    with_db = split.with_database_queries()
    assert mining.HardNegativeMiner(with_db, refresh_share=0.25, **options).cycle_size == 106
    assert mining.HardNegativeMiner(with_db, **options).cycle_size == 10  # None: every 10 queries
    # the split's own 100 queries only: 3 − 0.75 = 2.25 per query, ceil(133.3) = 134 > 100: one pass
    assert mining.HardNegativeMiner(split, refresh_share=0.25, **options).cycle_size == 100
    # a database that costs little: the reference interval stays
    assert mining.HardNegativeMiner(split, refresh_share=0.9, **options).cycle_size == 10


def test_bad_splits_give_clear_errors():
    no_pos = _line_split(query_x=(1000.0, 2000.0))
    with pytest.raises(ValueError, match="none of its 2 queries has a database image within 10 m"):
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
    assert list(rows[0, 2:]) == [20, 21, 22]  # 0.1, 0.2, 0.35 < 0.3 + 0.1: all violate, no filler
    rows, cache, stats = mining.mine_tuples(*args, num_negatives=3, exclude_very_hard=True)
    ids, trains = decode_negatives(rows[0, 2:])
    assert list(ids[:2]) == [22, 23] and d2[ids[2]] == 1.9 and list(cache[0]) == [20, 21, 22]
    # 0.35 trains (0.3 <= 0.35 < 0.4); 0.45 and 1.9 do not violate: fillers
    assert list(trains) == [True, False, False] and rows[0, 3] == -2 - 23
    assert stats["violating_fraction"] == pytest.approx(1 / 3)  # only 0.35 violates (< 0.3 + 0.1)
    assert stats["training_negatives_fraction"] == pytest.approx(1 / 3)
    few = split.positives()
    few = [np.setdiff1d(np.arange(40), [20, 21, 22]) if i == 1 else p for i, p in enumerate(few)]
    rows, _, stats = mining.mine_tuples(*args[:4], few, *args[5:], num_negatives=3, exclude_very_hard=True)
    # fewer than N semi-hard: filled with the least hard; the very hard 21 (0.2) and 20 (0.1)
    # violate but are nearer than the best positive (0.3), so MATLAB's excludeVeryHard drops them
    assert list(rows[0, 2:]) == [22, -2 - 21, -2 - 20]
    assert stats["violating_fraction"] == pytest.approx(1) and stats["training_negatives_fraction"] == pytest.approx(1 / 3)


def test_gram_blocks_equal_direct_squared_distances_across_blocks(monkeypatch):
    from tf_netvlad.training import tuple_mining

    rng = np.random.default_rng(2)
    db = rng.normal(size=(53, 24)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = np.concatenate([db[[4, 9]], rng.normal(size=(9, 24)).astype(np.float32) * 3])  # 2 exact copies
    monkeypatch.setattr(tuple_mining, "GRAM_BLOCK_ELEMENTS", 53 * 4)  # 4 queries per block: 3 blocks
    blocks = list(tuple_mining.gram_blocks(q, db))
    assert [start for start, _ in blocks] == [0, 4, 8] and all(d2.dtype == np.float32 for _, d2 in blocks)
    got = np.concatenate([d2 for _, d2 in blocks])
    want = ((q.astype(np.float64)[:, None, :] - db.astype(np.float64)[None]) ** 2).sum(-1)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    assert got.min() >= 0 and got[0, 4] < 1e-6 and got[1, 9] < 1e-6  # clipped, not negative


def test_mine_tuples_ranks_candidates_by_d2_then_db_id():
    # integer-valued descriptors: every d² is exact in float32, so ties are real ties
    split = _line_split(num_db=120, query_x=np.linspace(0, 590, 25))
    rng = np.random.default_rng(3)
    db = rng.integers(0, 3, size=(120, 8)).astype(np.float32)
    q = rng.integers(0, 3, size=(25, 8)).astype(np.float32)
    positives, non_negatives = split.non_trivial_positives(), split.positives()
    cache = np.full((25, 4), -1, np.int64)
    cache[::2] = rng.choice(120, size=(13, 4))
    options = dict(num_positives=2, num_negatives=4, pool_size=30, keep_factor=3, margin=0.1)
    rows, new_cache, _ = mining.mine_tuples(np.arange(25), q, db, positives, non_negatives, cache,
                                            np.random.default_rng(8), **options)
    # reference: the same candidate draws, float64 distances, sorted by (d², id) in Python
    from tf_netvlad.training.tuple_mining import plan_query

    plan_rng = np.random.default_rng(8)
    ties = 0
    for r in range(25):
        pos, candidates = plan_query(r, positives, non_negatives, cache, plan_rng, 120, 30, 4, np.zeros(0, np.int64))
        d2 = {int(c): float(((q[r].astype(np.float64) - db[c]) ** 2).sum()) for c in candidates}
        ranked = sorted(d2, key=lambda c: (d2[c], c))
        ties += len(d2) - len(set(d2.values()))
        assert list(decode_negatives(rows[r, 3:])[0]) == ranked[:4] and list(new_cache[r]) == ranked[:4]
    assert ties > 100  # the id order was exercised


def test_compute_cache_extracts_once_and_splits_failed_db_and_query_images():
    split = _line_split(num_db=30, query_x=np.arange(0, 140, 10.0))
    rng = np.random.default_rng(1)
    paths = list(split.db_paths) + list(split.query_paths)
    descriptors = {p: rng.normal(size=6).astype(np.float32) for p in paths}
    descriptors["db4.jpg"] = descriptors["q3.jpg"] = None
    miner = _table_miner(split, descriptors)
    calls = []
    lookup = miner._lookup
    miner._lookup = lambda p: calls.append(len(p)) or lookup(p)
    query_ids = np.array([5, 3, 0])
    q_desc, db_desc = miner.compute_cache(None, query_ids)
    assert calls == [33]  # one extraction call: 30 db images, then 3 queries
    np.testing.assert_array_equal(db_desc[7], descriptors["db7.jpg"])
    np.testing.assert_array_equal(q_desc[0], descriptors["q5.jpg"])
    np.testing.assert_array_equal(miner.bad_db, [4])
    np.testing.assert_array_equal(miner.bad_queries, [3])


# --------------------------------------------------------------------------- sharded (multi-worker) mining


class _ThreadGroup:
    """W simulated workers in threads of one process: an exact all-reduce SUM through a barrier."""

    def __init__(self, num_workers):
        import threading

        self.num_workers = num_workers
        self.barrier = threading.Barrier(num_workers)
        self.slots = [None] * num_workers
        self.calls = 0

    def member(self, index):
        group = self

        class Member:
            num_workers, is_chief = group.num_workers, index == 0

            def all_reduce_sum(self, array):
                group.slots[index] = np.asarray(array)
                group.barrier.wait()
                total = np.sum(np.stack(group.slots), axis=0).astype(np.asarray(array).dtype)
                group.barrier.wait()  # nobody overwrites a slot before all have summed
                if index == 0:
                    group.calls += 1
                return total

        member = Member()
        member.index = index
        return member

    def run(self, fn):
        """`[fn(member_0), ..., fn(member_{W-1})]`, run concurrently; re-raises a worker's error."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.num_workers) as pool:
            futures = [pool.submit(fn, self.member(i)) for i in range(self.num_workers)]
            return [f.result(timeout=60) for f in futures]


def test_shard_range_and_replica_slices_cover_everything_once():
    from tf_netvlad.training.distributed import replica_slices, shard_range

    for count in (0, 1, 5, 70, 71):
        for workers in (1, 2, 3, 4):
            blocks = [shard_range(count, workers, i) for i in range(workers)]
            assert blocks[0][0] == 0 and blocks[-1][1] == count
            assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
            sizes = [hi - lo for lo, hi in blocks]
            assert max(sizes) - min(sizes) <= 1
    assert shard_range(7, 3, 0) == (0, 3) and shard_range(7, 3, 2) == (5, 7)
    assert replica_slices(4, 4, 2) == [(0, 2), (2, 4)]
    assert replica_slices(3, 4, 2) == [(0, 2), (2, 3)]  # a short last batch: replica 1 gets 1 row
    assert replica_slices(1, 4, 2) == [(0, 1), (1, 1)]  # ... or none (padding only)
    assert replica_slices(5, 5, 2) == [(0, 3), (3, 5)]
    with pytest.raises(ValueError, match="index"):
        shard_range(5, 2, 2)


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("exclude_very_hard", [False, True])
def test_sharded_mining_equals_whole_database_mining(workers, exclude_very_hard):
    from tf_netvlad.training.distributed import shard_range
    from tf_netvlad.training.distributed_mining import mine_tuples_sharded

    split = _line_split(num_db=200, query_x=np.linspace(0, 990, 30))
    rng = np.random.default_rng(4)
    db = rng.normal(size=(200, 16)).astype(np.float32)
    q = rng.normal(size=(30, 16)).astype(np.float32)
    cache = np.full((30, 5), -1, np.int64)
    cache[::3] = rng.choice(200, size=(10, 5))  # some remembered negatives, some inside the radius
    bad_db = np.array([7, 150])
    options = dict(num_positives=3, num_negatives=5, pool_size=40, keep_factor=4, margin=0.5, bad_db=bad_db,
                   exclude_very_hard=exclude_very_hard)
    args = (split.non_trivial_positives(), split.positives(), cache)
    want_rows, want_cache, want_stats = mining.mine_tuples(np.arange(30), q, db, *args,
                                                           np.random.default_rng(9), **options)
    group = _ThreadGroup(workers)

    def worker(member):
        lo, hi = shard_range(200, workers, member.index)
        return mine_tuples_sharded(np.arange(30), q, db[lo:hi].copy(), lo, 200, *args,
                                   np.random.default_rng(9), member.all_reduce_sum, **options)

    results = group.run(worker)
    assert group.calls == 1  # one exchange of the distance table
    for rows, new_cache, stats in results:
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(new_cache, want_cache)
        assert stats == pytest.approx(want_stats)
    assert not np.isin(strip_fillers(want_rows, 3)[:, 1:], bad_db).any() and (want_rows[:, 1] >= 0).all()


class _TableMiner(mining.HardNegativeMiner):
    """A miner whose "extraction" looks descriptors up by file name and records what it extracted."""

    descriptors = None  # {path: float32 vector}; None marks an unreadable image

    def _lookup(self, paths):
        self.extracted.extend(paths)
        bad = np.array([i for i, p in enumerate(paths) if self.descriptors[p] is None], np.int64)
        desc = np.array([np.full(6, np.nan, np.float32) if self.descriptors[p] is None else self.descriptors[p]
                         for p in paths], np.float32).reshape(-1, 6)  # a worker's block may be empty
        return desc, bad

    def _extract(self, model, paths, what):  # the whole-database path (compute_cache)
        if self.on_bad_image == "stop":
            raise AssertionError("not used in these tests")
        return self._lookup(paths)

    def _extract_block(self, model, paths, what):  # the multi-worker path
        return self._lookup(paths)


class _FakeModel:
    output_shape = (None, 6)


def _table_miner(split, descriptors, group=None, on_bad_image="skip"):
    miner = _TableMiner(split, num_positives=2, num_negatives=4, pool_size=12, cache_refresh_queries=11,
                        seed=5, on_bad_image=on_bad_image, progress=False, group=group)
    miner.descriptors, miner.extracted = descriptors, []
    return miner


def test_multi_worker_miner_extracts_its_shard_and_mines_the_same_rows():
    split = _line_split(num_db=90, query_x=np.arange(0, 440, 20.0))
    rng = np.random.default_rng(6)
    paths = list(split.db_paths) + list(split.query_paths)
    descriptors = {p: rng.normal(size=6).astype(np.float32) for p in paths}
    descriptors["db13.jpg"] = None  # an unreadable database image, excluded everywhere
    single = _table_miner(split, descriptors)
    want = [single.mine(None, cycle) for cycle in range(3)]
    group = _ThreadGroup(2)

    def worker(member):
        miner = _table_miner(split, descriptors, group=member)
        rows = [miner.mine(_FakeModel(), cycle) for cycle in range(3)]
        return miner, rows

    (m0, rows0), (m1, rows1) = group.run(worker)
    for cycle in range(3):
        np.testing.assert_array_equal(rows0[cycle], want[cycle])
        np.testing.assert_array_equal(rows1[cycle], want[cycle])
    for miner in (m0, m1):
        np.testing.assert_array_equal(miner.neg_cache, single.neg_cache)
        np.testing.assert_array_equal(miner.bad_db, [13])
    assert 13 not in np.concatenate(want)[:, 1:]
    # each worker read only its half of the database (and of each cycle's 11 queries), once per cycle
    db0 = {p for p in m0.extracted if p.startswith("db")}
    db1 = {p for p in m1.extracted if p.startswith("db")}
    assert db0 == {f"db{i}.jpg" for i in range(45)} and db1 == {f"db{i}.jpg" for i in range(45, 90)}
    assert sum(p.startswith("db") for p in m0.extracted) == 3 * 45
    assert m0.last_stats["extracted_db_images"] == 45 and m0.last_stats["extracted_query_images"] == 6
    assert m1.last_stats["extracted_query_images"] == 5 and single.last_stats["extracted_db_images"] == 90
    assert sum(p.startswith("q") for p in m0.extracted + m1.extracted) == 3 * 11


def test_multi_worker_miner_takes_database_queries_from_the_worker_holding_the_image():
    """`db_queries` under a multi-worker strategy: a query that is a database image (queries 22..111
    here) takes that image's descriptor from the worker whose database block holds it, as
    `compute_cache` does on one worker, so no worker extracts it a second time. The rows, the memory
    and the failed images equal one worker's; an unreadable database image fails its query too."""
    split = _line_split(num_db=90, query_x=np.arange(0, 440, 20.0)).with_database_queries()
    rng = np.random.default_rng(4)
    descriptors = {p: rng.normal(size=6).astype(np.float32) for p in split.db_paths + split.query_paths}
    descriptors["db13.jpg"] = None  # held by worker 0; also query 22 + 13
    single = _table_miner(split, descriptors)
    cycles = range(11)  # 112 queries, 11 per cycle: every query at least once
    want = [single.mine(None, cycle) for cycle in cycles]
    group = _ThreadGroup(2)

    def worker(member):
        miner = _table_miner(split, descriptors, group=member)
        return miner, [miner.mine(_FakeModel(), cycle) for cycle in cycles]

    (m0, rows0), (m1, rows1) = group.run(worker)
    for cycle in cycles:
        np.testing.assert_array_equal(rows0[cycle], want[cycle])
        np.testing.assert_array_equal(rows1[cycle], want[cycle])
    for miner in (m0, m1):
        np.testing.assert_array_equal(miner.neg_cache, single.neg_cache)
        np.testing.assert_array_equal(miner.bad_db, [13])
        np.testing.assert_array_equal(miner.bad_queries, [22 + 13])
    # database images are read once per cycle, by the worker holding them; queries that are database
    # images are never read as queries: the split's own 22 queries are the only query reads
    assert [p for p in m0.extracted if p.startswith("db")] == [f"db{i}.jpg" for i in range(45)] * 11
    assert [p for p in m1.extracted if p.startswith("db")] == [f"db{i}.jpg" for i in range(45, 90)] * 11
    own_reads = sorted(p for p in m0.extracted + m1.extracted if p.startswith("q"))
    assert own_reads == sorted(p for p in single.extracted if p.startswith("q"))
    assert set(own_reads) == set(split.query_paths[:22])
    assert sum(m.last_stats["extracted_query_images"] for m in (m0, m1)) \
        == single.last_stats["extracted_query_images"]


def test_multi_worker_miner_stop_mode_raises_on_every_worker():
    from tf_netvlad.data.pipelines import ImageReadError

    split = _line_split(num_db=90, query_x=np.arange(0, 440, 20.0))
    rng = np.random.default_rng(6)
    descriptors = {p: rng.normal(size=6).astype(np.float32) for p in split.db_paths + split.query_paths}
    descriptors["db80.jpg"] = None  # held by worker 1 only
    group = _ThreadGroup(2)

    def worker(member):
        miner = _table_miner(split, descriptors, group=member, on_bad_image="stop")
        with pytest.raises(ImageReadError, match="db80.jpg"):
            miner.mine(_FakeModel(), 0)
        return True

    assert group.run(worker) == [True, True]


def test_compute_cache_reuses_the_database_descriptor_of_a_database_query():
    """`db_queries`: a query that is a database image (`with_database_queries`, queries 14..43 here)
    takes that image's descriptor from the database pass; only the split's own queries are
    extracted after the database. A failed database image fails its query too."""
    split = _line_split(num_db=30, query_x=np.arange(0, 140, 10.0)).with_database_queries()
    rng = np.random.default_rng(2)
    descriptors = {p: rng.normal(size=6).astype(np.float32) for p in split.db_paths + split.query_paths}
    descriptors["db4.jpg"] = None
    miner = _table_miner(split, descriptors)
    calls = []
    lookup = miner._lookup
    miner._lookup = lambda p: calls.append(list(p)) or lookup(p)
    query_ids = np.array([14 + 7, 5, 14 + 4, 3, 14 + 29])  # db7, q5, db4 (unreadable), q3, db29
    q_desc, db_desc = miner.compute_cache(None, query_ids)
    assert calls == [list(split.db_paths) + ["q5.jpg", "q3.jpg"]]
    assert miner.last_extracted == {"database": 30, "queries": 2}
    for row, name in ((0, "db7.jpg"), (1, "q5.jpg"), (3, "q3.jpg"), (4, "db29.jpg")):
        np.testing.assert_array_equal(q_desc[row], descriptors[name])
    np.testing.assert_array_equal(miner.bad_db, [4])
    np.testing.assert_array_equal(miner.bad_queries, [14 + 4])
