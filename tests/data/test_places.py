"""Tests for tf_netvlad.data.places: `PlaceSplit` (validation, KD-tree positives, derived splits),
CSV round trips through it, and UTM conversion."""

import math
import sys

import numpy as np
import pytest

from tests.helpers import toy_split
from tf_netvlad.data import utm
from tf_netvlad.data.places import PlaceSplit
from tf_netvlad.data.split_files import write_csv
from tf_netvlad.data.split_loading import load_split
from tf_netvlad.data.utm import latlon_to_utm, utm_zone


def _brute_force(split, radius, exclude_m2=None, timestamps=False):
    d2 = np.sum((split.query_utm[:, None, :] - split.db_utm[None, :, :]) ** 2, axis=2)
    out = []
    for i in range(split.num_queries):
        keep = d2[i] <= radius ** 2
        if exclude_m2 is not None:
            keep &= d2[i] > exclude_m2
        if timestamps:
            keep &= split.db_timestamps != split.query_timestamps[i]
        idx = np.flatnonzero(keep)
        out.append(idx[np.argsort(d2[i, idx], kind="stable")])
    return out


def test_pure_numpy_module_does_not_import_tensorflow():
    import subprocess
    code = "import sys, tf_netvlad.data.places; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_validation_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"db_utm.*\(N, 2\).*\(2, 3\)"):
        PlaceSplit("x", ["a", "b", "c"], np.zeros((2, 3)), [], np.zeros((0, 2)))
    with pytest.raises(ValueError, match="db_utm.*2 rows.*3 image paths"):
        PlaceSplit("x", ["a", "b", "c"], np.zeros((2, 2)), [], np.zeros((0, 2)))
    with pytest.raises(ValueError, match="pos_dist_thr.*-1"):
        PlaceSplit("x", ["a"], [[0, 0]], [], np.zeros((0, 2)), pos_dist_thr=-1)
    with pytest.raises(ValueError, match="given together"):
        PlaceSplit("x", ["a"], [[0, 0]], ["q"], [[0, 0]], db_timestamps=[1])
    with pytest.raises(ValueError, match="non-finite"):
        PlaceSplit("x", ["a"], [[0, np.nan]], [], np.zeros((0, 2)))


def test_positives_match_brute_force(rng):
    split = toy_split(rng)
    for radius in (None, 10.0, 40.0):
        got = split.positives(radius)
        want = _brute_force(split, split.pos_dist_thr if radius is None else radius)
        assert len(got) == split.num_queries
        for g, w in zip(got, want):
            assert g.dtype == np.int64
            np.testing.assert_array_equal(g, w)
    assert sum(len(p) for p in split.positives()) > split.num_queries  # non-trivial data


def test_non_trivial_positives_with_exclusions(rng):
    split = toy_split(rng, timestamps=True)
    # put db image 0 at 0.5 m from query 0 and db 1 at 5 m with the query's timestamp
    db = np.array(split.db_utm)
    db[0] = split.query_utm[0] + [0.3, 0.4]
    db[1] = split.query_utm[0] + [3.0, 4.0]
    ts = np.array(split.db_timestamps)
    ts[1] = split.query_timestamps[0]
    ts[0] = split.query_timestamps[0] + 1
    import dataclasses
    split = dataclasses.replace(split, db_utm=db, db_timestamps=ts)

    plain = split.non_trivial_positives(exclude_same_timestamp=False)
    for g, w in zip(plain, _brute_force(split, 10.0)):
        np.testing.assert_array_equal(g, w)
    assert 0 in plain[0] and 1 in plain[0]

    matlab = split.non_trivial_positives(exclude_trivial_m2=1.0)
    for g, w in zip(matlab, _brute_force(split, 10.0, exclude_m2=1.0, timestamps=True)):
        np.testing.assert_array_equal(g, w)
    assert 0 not in matlab[0] and 1 not in matlab[0]

    same = split.same_timestamp_db()
    for i in range(split.num_queries):
        np.testing.assert_array_equal(
            same[i], np.flatnonzero(split.db_timestamps == split.query_timestamps[i]))


def test_queries_without_positives_and_subset(rng):
    split = toy_split(rng, n_db=30, n_q=40, extent=1000.0)
    want = np.array([i for i, p in enumerate(_brute_force(split, 25.0)) if len(p) == 0])
    got = split.queries_without_positives()
    np.testing.assert_array_equal(got, want)
    assert 0 < len(got) < split.num_queries
    summary = split.summary()
    assert summary["queries_without_positives"] == len(want)
    assert summary["num_db"] == 30 and summary["num_queries"] == 40
    assert "40 queries" in split.describe()

    keep = np.setdiff1d(np.arange(split.num_queries), got)
    sub = split.subset_queries(keep)
    assert sub.num_queries == len(keep) and len(sub.queries_without_positives()) == 0
    assert sub.query_paths[0] == split.query_paths[keep[0]]
    np.testing.assert_array_equal(sub.query_utm, split.query_utm[keep])
    mask_sub = split.subset_queries(np.isin(np.arange(split.num_queries), keep))
    assert mask_sub.query_paths == sub.query_paths
    with pytest.raises(IndexError, match="40"):
        split.subset_queries([40])


def test_database_images_as_training_queries_never_match_themselves():
    """Hand-made street: db images every 4 m on a line, one query at 10.5 m. As queries, each db
    image's positives are the other db images within 10 m (4 and 8 m away), never itself at 0 m."""
    db = np.array([[0.0, 0], [4, 0], [8, 0], [12, 0], [30, 0]]) + [580000.0, 4470000.0]
    split = PlaceSplit("street_train", [f"db/{i}.jpg" for i in range(5)], db, ["q/0.jpg"],
                       db[:1] + [10.5, 0], query_conditions=["night"])
    both = split.with_database_queries()
    assert both.num_queries == 6 and both.num_db == 5 and both.name == "street_train+db"
    assert both.query_paths == ("q/0.jpg", "db/0.jpg", "db/1.jpg", "db/2.jpg", "db/3.jpg", "db/4.jpg")
    assert both.query_conditions == ("night",) + ("database",) * 5
    want = [[3, 2, 1], [1, 2], [0, 2, 3], [1, 3, 0], [2, 1], []]  # nearest first; db 4 is 18 m from db 3
    got = both.non_trivial_positives()
    assert [p.tolist() for p in got] == want
    # the split's own query keeps its positives, and the trivial rule still applies on top
    assert [p.tolist() for p in split.non_trivial_positives()] == [want[0]]
    assert both.non_trivial_positives(exclude_trivial_m2=5)[0].tolist() == [2, 1]  # db 3 is 1.5 m away
    assert split.db_paths == both.db_paths and not split.has_timestamps  # the original is unchanged


def test_database_queries_keep_a_splits_own_time_stamps(rng):
    """TokyoTM-style time stamps: a database image as a query leaves out every db image of its own
    capture time (itself included), as the dataset's queries do."""
    split = toy_split(rng, n_db=60, n_q=10, extent=60.0, timestamps=True)
    both = split.with_database_queries()
    np.testing.assert_array_equal(both.query_timestamps[10:], split.db_timestamps)
    np.testing.assert_array_equal(both.db_timestamps, split.db_timestamps)
    for j, positives in enumerate(both.non_trivial_positives()[10:]):
        d2 = np.sum((split.db_utm - split.db_utm[j]) ** 2, axis=1)
        want = np.flatnonzero((d2 <= 100.0) & (split.db_timestamps != split.db_timestamps[j]))
        assert sorted(positives.tolist()) == want.tolist()


def test_csv_round_trip_with_timestamps_and_conditions(tmp_path, rng):
    split = toy_split(rng, n_db=5, n_q=3, timestamps=True)
    import dataclasses
    split = dataclasses.replace(split, query_conditions=["day", "night;winter", "dusk,occluded"])
    path = write_csv(split, tmp_path / "m.csv")
    back = load_split(path)
    np.testing.assert_array_equal(back.db_utm, split.db_utm)  # exact (repr round trip)
    np.testing.assert_array_equal(back.query_timestamps, split.query_timestamps)
    assert back.query_conditions == split.query_conditions
    assert back.root == str(tmp_path) and back.name == "m"
    assert not list(tmp_path.glob(".*tmp"))


def test_csv_latlon_converts_to_utm(tmp_path):
    # Pittsburgh images named by VPR-datasets-downloader carry both UTM and lat/lon (5 decimals,
    # i.e. +-0.5 m), e.g. @0584334.39@4476910.88@17@T@040.43857@-080.00562@...
    path = tmp_path / "geo.csv"
    path.write_text("path,role,latitude,longitude\n"
                    "a.jpg,db,40.43857,-80.00562\n"
                    "b.jpg,db,40.44056,-79.99503\n"
                    "q.jpg,query,40.43857,-80.00560\n")
    split = PlaceSplit.from_csv(path)
    np.testing.assert_allclose(split.db_utm, [[584334.39, 4476910.88], [585230.45, 4477142.26]],
                               atol=0.8)
    assert split.positives()[0].tolist() == [0]


def test_transverse_mercator_reference_values():
    # Snyder, Map Projections - A Working Manual (USGS PP 1395), p. 269: Clarke 1866,
    # 40°30'N 73°30'W, central meridian 75°W, k0 0.9996 -> x 127106.5 m, y 4484124.4 m
    e2 = 0.00676866
    x, y = utm._transverse_mercator(40.5, -73.5, -75.0, a=6378206.4, f=1 - math.sqrt(1 - e2))
    assert abs(x - 127106.5) < 0.1 and abs(y - 4484124.4) < 0.1
    # central meridian on the equator; southern hemisphere false northing (MSLS Nairobi name
    # @0241821.78@9862147.68@37@M@-01.24616@0036.67991@)
    e, n, zone, hemi = latlon_to_utm([0.0], [3.0])
    assert (e[0], n[0], zone, hemi) == (500000.0, 0.0, 31, "N")
    e, n, zone, hemi = latlon_to_utm([-1.24616], [36.67991])
    assert (zone, hemi) == (37, "S") and abs(e[0] - 241821.78) < 0.8 and abs(n[0] - 9862147.68) < 0.8
    assert utm_zone(60.0, 5.0) == 32  # Norway exception
    with pytest.raises(ValueError, match=r"zones \[17, 18\]"):
        latlon_to_utm([40.0, 40.0], [-79.0, -77.0])


def test_csv_bad_rows_name_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("path,role,easting,northing\na.jpg,db,1,2\nb.jpg,train,1,2\n")
    with pytest.raises(ValueError, match=r"line 3.*role.*'train'"):
        PlaceSplit.from_csv(path)
    path.write_text("path,role,easting,northing\na.jpg,db,1,2\n\nb.jpg,query,1,x\n")
    with pytest.raises(ValueError, match=r"line 4.*parse"):
        PlaceSplit.from_csv(path)
    path.write_text("path,role,easting\na.jpg,db,1\n")
    with pytest.raises(ValueError, match=r"no coordinate columns; accepted pairs.*easting/northing, "
                                         r"utm_east/utm_north.*lat/lon.*found \['path', 'role', 'easting'\]"):
        PlaceSplit.from_csv(path)
    path.write_text("path,role,easting,northing\na.jpg,db,1\n")
    with pytest.raises(ValueError, match=r"line 2.*northing"):
        PlaceSplit.from_csv(path)


def test_positives_scale_tokyo_like():
    """76k db (12 cutouts per panorama) and 10k queries: one KD-tree query, lists by distance."""
    rng = np.random.default_rng(1)
    pano = rng.uniform(0, 3000, size=(76_000 // 12, 2))
    split = PlaceSplit("tokyo_like", [f"{i}.jpg" for i in range(len(pano) * 12)], np.repeat(pano, 12, 0),
                       [f"q{i}.jpg" for i in range(10_000)], rng.uniform(0, 3000, size=(10_000, 2)))
    pos = split.positives()
    assert len(pos) == 10_000
    q = 123
    d = np.linalg.norm(split.db_utm - split.query_utm[q], axis=1)
    np.testing.assert_array_equal(np.sort(pos[q]), np.flatnonzero(d <= 25))
    assert np.all(np.diff(d[pos[q]]) >= 0)
