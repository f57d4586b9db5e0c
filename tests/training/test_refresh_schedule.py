"""Refresh schedules: the fixed one (the earlier formula) and MATLAB's (refresh at pass ends,
cycles growing with every learning-rate drop), hand-computed."""

import math

import numpy as np
import pytest

from tf_netvlad.training.refresh_schedule import RefreshSchedule, share_cycle_size


def test_fixed_schedule_runs_across_pass_ends_with_the_step_decay_in_passes():
    schedule = RefreshSchedule(num_queries=250, size=60, slowdown=False, lr_decay_every=1.5,
                               lr_decay_factor=0.5)
    assert schedule.max_size == 60
    assert [schedule.cycle(c) for c in range(6)] == [
        (0, 0, 60), (0, 60, 60), (0, 120, 60), (0, 180, 60), (0, 240, 60), (1, 50, 60)]
    for c in range(40):  # the formula the training used before the schedules were split out
        want = 0.1 * 0.5 ** math.floor(c * 60 / (250 * 1.5) + 1e-9)
        assert schedule.learning_rate(0.1, c) == pytest.approx(want, rel=1e-12)
    assert RefreshSchedule(30, 1000).size == 30  # never more than one pass


def test_matlab_schedule_refreshes_at_pass_ends_and_grows_with_each_lr_drop():
    schedule = RefreshSchedule(num_queries=10, size=3, slowdown=True, lr_decay_every=1,
                               lr_decay_factor=0.5)
    # pass 0: cycles of 3 and the remainder; pass 1 (one LR drop): 6; from pass 2 on: all 10
    want = [(0, 0, 3), (0, 3, 3), (0, 6, 3), (0, 9, 1), (1, 0, 6), (1, 6, 4), (2, 0, 10),
            (3, 0, 10), (4, 0, 10)]
    assert [schedule.cycle(c) for c in range(9)] == want
    assert schedule.max_size == 10
    lrs = [schedule.learning_rate(1.0, c) for c in range(9)]
    assert lrs == [1, 1, 1, 1, 0.5, 0.5, 0.25, 0.125, 0.0625]
    assert [schedule.passes_before(c) for c in range(5)] == [0, 0.3, 0.6, 0.9, 1]


def test_matlab_schedule_at_pitts30k_scale():
    # 7,320 training queries, compFeatsFrequency 1000, lrDownFreq 5, lrDownFactor 2, 30 epochs
    schedule = RefreshSchedule(7320, 1000, slowdown=True, lr_decay_every=5, lr_decay_factor=0.5)
    sizes = {}
    cycle = 0
    while schedule.passes_before(cycle) < 30:
        pass_index, _, size = schedule.cycle(cycle)
        sizes.setdefault(pass_index, []).append(size)
        cycle += 1
    assert cycle == 85 and len(sizes) == 30
    assert sizes[0] == [1000] * 7 + [320] and sizes[5] == [2000] * 3 + [1320]
    assert sizes[10] == [4000, 3320] and sizes[15] == sizes[29] == [7320]
    assert all(sum(s) == 7320 for s in sizes.values())


def test_fractional_decay_and_bad_arguments():
    schedule = RefreshSchedule(100, 30, slowdown=True, lr_decay_every=1.5, lr_decay_factor=0.5)
    # drops before passes 0, 1, 2, 3: 0, 0, 1, 2 -> cycle sizes 30, 30, 60, 100 (capped)
    assert [schedule.pass_cycle_size(p) for p in range(4)] == [30, 30, 60, 100]
    with pytest.raises(ValueError, match=">= 1"):
        RefreshSchedule(0, 10)
    with pytest.raises(ValueError, match="must be > 0"):
        RefreshSchedule(10, 5, lr_decay_factor=0)
    with pytest.raises(ValueError, match="cycle"):
        schedule.cycle(-1)


def test_miner_visits_every_query_once_per_pass_with_the_matlab_schedule():
    from tf_netvlad.data.places import PlaceSplit
    from tf_netvlad.training.mining import HardNegativeMiner

    db_utm = np.stack([np.arange(40) * 5.0, np.zeros(40)], 1)
    q_utm = np.stack([np.arange(23) * 8.0, np.zeros(23)], 1)
    split = PlaceSplit("line", [f"db{i}.jpg" for i in range(40)], db_utm,
                       [f"q{i}.jpg" for i in range(23)], q_utm)
    miner = HardNegativeMiner(split, num_negatives=2, cache_refresh_queries=5, refresh_slowdown=True,
                              lr_decay_every=1, lr_decay_factor=0.5, progress=False)
    valid = set(miner.valid_queries.tolist())
    assert len(valid) == 23
    cycles = [miner.queries_for_cycle(c) for c in range(9)]
    assert [len(c) for c in cycles] == [5, 5, 5, 5, 3, 10, 10, 3, 20]
    for first, last in ((0, 5), (5, 8)):  # pass 0 and pass 1 cover every query exactly once
        seen = np.concatenate(cycles[first:last])
        assert sorted(seen.tolist()) == sorted(valid)
    assert not np.array_equal(np.concatenate(cycles[:5]), np.concatenate(cycles[5:8]))  # new order
    again = HardNegativeMiner(split, num_negatives=2, cache_refresh_queries=5, refresh_slowdown=True,
                              lr_decay_every=1, lr_decay_factor=0.5, progress=False)
    np.testing.assert_array_equal(again.queries_for_cycle(6), cycles[6])  # deterministic: resumable


def test_run_length_in_passes():
    """`passes` (the paper's epochs) in refresh cycles: exact at pass ends with MATLAB's schedule
    (30 passes of Pitts30k's 7,320 queries = 85 cycles), whole cycles with the fixed one."""
    matlab = RefreshSchedule(7320, 1000, slowdown=True, lr_decay_every=5, lr_decay_factor=0.5)
    assert matlab.num_cycles(30) == 85 and matlab.num_cycles(1) == 8 and matlab.num_cycles(5) == 40
    assert matlab.num_cycles(30, max_cycles=10) == 10 and matlab.num_cycles(None, 7) == 7
    assert matlab.num_cycles() is None  # unbounded: the time limit decides
    assert matlab.passes_before(85) == 30
    fixed = RefreshSchedule(250, 60, slowdown=False)
    assert fixed.num_cycles(1) == 5  # 5 x 60 = 300 >= 250: the last cycle runs into pass 1
    assert fixed.num_cycles(2.4) == 10  # 600 queries exactly
    assert list(fixed.cycle_indices(3, passes=1)) == [3, 4]
    endless = fixed.cycle_indices(2)
    assert [next(endless) for _ in range(3)] == [2, 3, 4]
    with pytest.raises(ValueError, match="passes"):
        fixed.num_cycles(0)


def _refresh_share(q, num_db, own_fraction, images_per_tuple, validation=0):
    """The refresh's (and validation's) share of a cycle's image passes, from the definition (one
    forward pass per extracted image, three per trained tuple image)."""
    extracted = num_db + validation + own_fraction * q
    return extracted / (extracted + 3 * images_per_tuple * q)


def test_share_cycle_size_hand_computed_at_a_large_database():
    # 20,000 db images, a third of the training queries are not database images (10,000 of 30,000
    # with db_queries), tuples of 1 + 2 + 5 images, share 0.25: per query 3·8·0.25 − 0.75/3 = 5.75,
    # Q = ceil(20,000 · 0.75 / 5.75) = ceil(2,608.7) = 2,609
    q = share_cycle_size(1000, 0.25, 20_000, 1 / 3, 8, 30_000)
    assert q == 2609
    assert _refresh_share(2609, 20_000, 1 / 3, 8) <= 0.25 < _refresh_share(2608, 20_000, 1 / 3, 8)
    # and a validation of 1,000 images at each cycle's end: ceil(21,000 · 0.75 / 5.75) = ceil(2,739.1)
    q = share_cycle_size(1000, 0.25, 20_000, 1 / 3, 8, 30_000, extra_images=1000)
    assert q == 2740
    assert _refresh_share(2740, 20_000, 1 / 3, 8, 1000) <= 0.25 < _refresh_share(2739, 20_000, 1 / 3, 8, 1000)


def test_share_cycle_size_keeps_the_reference_interval_on_small_databases():
    # the demo and the held-out towns: refreshes are 6-9 % of a cycle at 1000 queries
    for num_db, own in ((700, 2500 / 3200), (2000, 400 / 2400), (1200, 1200 / 2400)):
        assert share_cycle_size(1000, 0.25, num_db, own, 8, 3200) == 1000
        assert _refresh_share(1000, num_db, own, 8) < 0.1
    assert share_cycle_size(1000, None, 20_000, 1 / 3, 8, 30_000) == 1000  # off: MATLAB's interval
    assert share_cycle_size(1000, None, 20_000, 1 / 3, 8, 600) == 600  # never more than one pass
    assert share_cycle_size(1000, 0.25, 20_000, 1 / 3, 8, 2000) == 2000
    # a share no cycle length reaches (training cheaper than the cycle's own query images): one pass
    assert share_cycle_size(10, 0.01, 100, 1.0, 1, 500) == 500


@pytest.mark.parametrize("share", [0.05, 0.2, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("num_db,own,images,validation", [(5_000, 0.0, 8, 0), (50_000, 1.0, 4, 7_600),
                                                         (123_457, 0.4, 12, 333)])
def test_share_cycle_size_is_the_shortest_cycle_within_the_share(share, num_db, own, images, validation):
    q = share_cycle_size(1, share, num_db, own, images, 10**9, extra_images=validation)
    if own / (own + 3 * images) >= share:  # the share's limit as Q grows: never reached, one pass
        assert q == 10**9
        return
    assert _refresh_share(q, num_db, own, images, validation) <= share + 1e-12
    assert q == 1 or _refresh_share(q - 1, num_db, own, images, validation) > share


def test_share_cycle_size_refuses_a_share_outside_0_1():
    for share in (0, 1, -0.5, 1.5):
        with pytest.raises(ValueError, match="`share` must be in"):
            share_cycle_size(1000, share, 100, 0.5, 8, 1000)
