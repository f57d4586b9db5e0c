"""Tests for tf_netvlad.evaluation.recall and tf_netvlad.evaluation.plots: hand-computed recall, end-to-end evaluate."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from tests import helpers
from tests.helpers import write_solid_image
from tf_netvlad.data.fileio import write_json
from tf_netvlad.data.places import PlaceSplit
from tf_netvlad.evaluation import plots, protocols, ranking, recall, recall_metrics
from tf_netvlad.evaluation.report import format_recall_table, recall_ns

# --------------------------------------------------------------------------- recall_at_n


def test_recall_ns_constants():
    assert recall_metrics.DEFAULT_RECALL_NS == (1, 5, 10, 20)
    assert recall_metrics.REFERENCE_RECALL_NS == (1, 2, 3, 4, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50,
                                                  55, 60, 65, 70, 75, 80, 85, 90, 95, 100)


def test_recall_at_n_hand_computed():
    retrieved = np.array([
        [4, 2, 7],  # first positive (2) at rank 2
        [1, 0, 3],  # rank 1
        [5, 6, 8],  # not retrieved
        [3, 9, 0],  # rank 3
    ])
    positives = [np.array([2, 9]), np.array([1]), np.array([0]), np.array([0, 11])]
    assert recall_metrics.recall_at_n(retrieved, positives, ns=(1, 2, 3)) == {1: 0.25, 2: 0.5, 3: 0.75}
    np.testing.assert_array_equal(recall_metrics.first_correct_rank(retrieved, positives), [2, 1, 0, 3])


def test_queries_without_positives_are_excluded_and_logged(caplog):
    retrieved = np.array([[0, 1], [2, 3], [4, 5]])
    positives = [np.array([1]), np.array([], np.int64), np.array([7])]
    with caplog.at_level("WARNING"):
        recalls = recall_metrics.recall_at_n(retrieved, positives, ns=(1, 2))
    # 2 scored queries: q0 found at rank 2, q2 never.
    assert recalls == {1: 0.0, 2: 0.5}
    assert "1 of 3 queries have no positive" in caplog.text
    np.testing.assert_array_equal(recall_metrics.first_correct_rank(retrieved, positives), [2, -1, 0])


def test_recall_at_n_errors():
    with pytest.raises(ValueError, match="recall@5 needs at least 5"):
        recall_metrics.recall_at_n(np.zeros((2, 3), int), [[0], [1]], ns=(1, 5))
    with pytest.raises(ValueError, match="one entry per query: got 1 entries for 2"):
        recall_metrics.recall_at_n(np.zeros((2, 3), int), [[0]], ns=(1,))
    with pytest.raises(ValueError, match="None of the 2 queries has a positive"):
        recall_metrics.recall_at_n(np.zeros((2, 3), int), [[], []], ns=(1,))
    with pytest.raises(ValueError, match="ns=\\(0,\\)"):
        recall_metrics.recall_at_n(np.zeros((2, 3), int), [[0], [1]], ns=(0,))


# --------------------------------------------------------------------------- descriptors


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_evaluate_descriptors_matches_numpy_ranking(rng):
    db = _unit(rng.standard_normal((40, 8)))
    queries = _unit(db[:10] + 0.8 * rng.standard_normal((10, 8)))
    positives = [np.array([q, (q + 1) % 40]) for q in range(10)]
    results, ids = recall.evaluate_descriptors(db, queries, positives, ns=(1, 3, 100), return_ids=True)
    ranking = np.argsort(-(queries.astype(np.float64) @ db.T.astype(np.float64)), axis=1)
    np.testing.assert_array_equal(ids, ranking)  # 100 > 40 db images: everything is retrieved
    expected = recall_metrics.recall_at_n(ranking, positives, ns=(1, 3, 40))
    assert results["recall@1"] == expected[1] and results["recall@3"] == expected[3]
    assert results["recall@100"] == 1.0
    assert (results["num_queries"], results["num_db"], results["descriptor_dim"]) == (10, 40, 8)
    assert results["num_queries_without_positives"] == 0


def test_exclude_drops_db_images_from_ranking_and_positives():
    db = _unit(np.eye(4) + 0.01)
    queries = _unit([[1, 0.2, 0, 0], [0, 0, 1, 0]])
    # q0: nearest is db0 (excluded), then db1 (a positive). q1: its only positive 2 is excluded.
    positives = [np.array([0, 1]), np.array([2])]
    exclude = [np.array([0]), np.array([2])]
    results, ids = recall.evaluate_descriptors(
        db, queries, positives, ns=(1, 4), return_ids=True, exclude=exclude
    )
    assert ids[0, 0] == 1 and 0 not in ids[0] and ids[0, -1] == -1
    assert results["recall@1"] == 1.0 and results["num_queries_without_positives"] == 1


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def colour_split(tmp_path, rng):
    """6 db places 100 m apart with distinct random colours; queries are JPEG re-encodings.

    q0..q4 show db0..db4 at their place (correct at rank 1). q5 shows db5's colour but stands at
    db0's place, so its rank-1 answer (db5) is wrong. q6 is 1 km away: no positive, excluded.
    """
    colours = rng.integers(20, 236, (6, 3))
    (tmp_path / "db").mkdir()
    (tmp_path / "q").mkdir()
    db_paths, query_paths = [], []
    for i, colour in enumerate(colours):
        pixels = np.clip(colour + rng.integers(-10, 11, (12, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "db" / f"{i}.png")
        db_paths.append(f"db/{i}.png")
    for q, source in enumerate([0, 1, 2, 3, 4, 5, 2]):
        pixels = np.asarray(Image.open(tmp_path / "db" / f"{source}.png"))
        Image.fromarray(pixels).save(tmp_path / "q" / f"{q}.jpg", quality=90)
        query_paths.append(f"q/{q}.jpg")
    db_utm = np.stack([np.arange(6) * 100.0, np.zeros(6)], axis=1)
    query_utm = np.concatenate([db_utm[:5] + 3.0, db_utm[:1] + 3.0, [[5000.0, 5000.0]]])
    return PlaceSplit("toy", db_paths, db_utm, query_paths, query_utm, root=str(tmp_path))


def test_evaluate_end_to_end(colour_split, mean_colour_model):
    results, ids = recall.evaluate(
        mean_colour_model, colour_split, image_size=8, ns=(1, 5, 10), batch_size=4,
        progress=False, return_ids=True,
    )
    np.testing.assert_array_equal(ids[:6, 0], [0, 1, 2, 3, 4, 5])
    assert ids.shape == (7, 6)
    assert results["recall@1"] == pytest.approx(5 / 6)
    assert results["recall@10"] == 1.0  # more than the 6 db images: all retrieved
    assert results["num_queries"] == 7 and results["num_queries_without_positives"] == 1
    assert results["num_db"] == 6 and results["descriptor_dim"] == 3
    assert results["split"] == "toy" and results["image_size"] == "8"
    table = format_recall_table(results)
    assert "83.33%" in table and "100.00%" in table and "1 without positives" in table


def test_evaluate_warns_when_a_model_is_read_at_another_size_than_it_was_trained(colour_split, caplog):
    """A CPU-recipe model trained at 96x128 scored 24.5 % recall@1 on "small"'s 180x240 files read at
    their own size (evaluate's default) and 29.5 % at 96x128 (docs/recipes.md): the evaluation says
    which size the model records (`NetVLADModel.training_image_size`) when it reads another."""
    mean_colour_model = helpers.mean_colour_model()  # its own: the fixture is shared by the session
    mean_colour_model.training_image_size = "24x32"
    with caplog.at_level(logging.WARNING, logger="tf_netvlad"):
        recall.evaluate(mean_colour_model, colour_split, ns=(1,), progress=False)
        recall.evaluate(mean_colour_model, colour_split, image_size=16, ns=(1,), progress=False)
    notes = [r.getMessage() for r in caplog.records if "was trained on" in r.getMessage()]
    assert notes == [
        f"meancolour was trained on 24x32 images and is evaluated with image_size {size}; pass "
        "--image-size 24x32 (image_size='24x32') to use it at its training size."
        for size in ("keep", "16")]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tf_netvlad"):
        results = recall.evaluate(mean_colour_model, colour_split, image_size="24x32", ns=(1,), progress=False)
    assert not [r for r in caplog.records if "was trained on" in r.getMessage()]
    assert results["recall@1"] == pytest.approx(5 / 6)


def test_evaluate_identity_db_equals_queries_gives_recall_one(tmp_path, rng, mean_colour_model):
    paths = []
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(f"{i}.png")
    utm = np.stack([np.arange(5) * 50.0, np.zeros(5)], axis=1)
    split = PlaceSplit("same", paths, utm, paths, utm, root=str(tmp_path))
    results = recall.evaluate(mean_colour_model, split, ns=(1,), progress=False)
    assert results["recall@1"] == 1.0


# --------------------------------------------------------------------------- reporting


def test_format_recall_table_with_several_runs():
    before = {"recall@1": 0.5, "recall@5": 0.75}
    after = {"recall@1": 0.875, "recall@5": 1.0, "recall@10": 1.0}
    table = format_recall_table([before, after], labels=["before", "after"])
    lines = table.splitlines()
    assert "before" in lines[0] and "after" in lines[0]
    assert lines[1].split() == ["1", "50.00%", "87.50%"]
    assert lines[3].split() == ["10", "-", "100.00%"]


def test_write_json_is_atomic_and_converts_numpy(tmp_path):
    path = tmp_path / "out" / "results.json"
    results = {"recall@1": np.float32(0.5), "num_db": np.int64(3), "ns": np.array([1, 5])}
    write_json(results, path)
    assert json.loads(path.read_text()) == {"recall@1": 0.5, "num_db": 3, "ns": [1, 5]}
    with pytest.raises(TypeError):
        write_json({"bad": object()}, tmp_path / "out" / "bad.json")
    assert sorted(os.listdir(tmp_path / "out")) == ["results.json"]  # no partial/temp files


def test_plot_recall_curve_and_retrievals(tmp_path, colour_split):
    before = {f"recall@{n}": min(1.0, 0.3 + n / 40) for n in recall_metrics.REFERENCE_RECALL_NS}
    after = {f"recall@{n}": min(1.0, 0.6 + n / 50) for n in recall_metrics.REFERENCE_RECALL_NS}
    curve = plots.plot_recall_curve([before, after], tmp_path / "curve.png", labels=["before", "after"])
    with Image.open(curve) as image:
        assert image.size == (640, 440)
        assert np.asarray(image.convert("L")).std() > 5  # not a blank canvas
    grid = plots.plot_retrievals(
        colour_split.query_paths[:3],
        [[colour_split.db_paths[j] for j in (q, 5)] for q in range(2)] + [["db/missing.png", "db/1.png"]],
        [[True, False], [True, False], [False, False]],
        tmp_path / "grid.png",
        root=colour_split.root,
    )
    with Image.open(grid) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    # Green and red frames are drawn.
    assert ((pixels[..., 1] > 150) & (pixels[..., 0] < 80) & (pixels[..., 2] < 80)).sum() > 100
    assert ((pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)).sum() > 100
    assert sorted(os.listdir(tmp_path)) == ["curve.png", "db", "grid.png", "q"]


def test_plot_errors(tmp_path):
    with pytest.raises(ValueError, match="no 'recall@N' keys"):
        plots.plot_recall_curve({"num_db": 3}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="one row of retrieved paths"):
        plots.plot_retrievals(["a"], [["b"], ["c"]], [[True]], tmp_path / "y.png")
    assert not os.listdir(tmp_path)


# --------------------------------------------------------------------------- protocols


def test_panorama_nms_hand_computed():
    ids = np.array([
        # panoramas (id // 12): 1, 1, 0, 2, 0, 3, -, 4
        [13, 12, 3, 25, 0, 37, -1, 48],
        # 5 // 12 = 0, 7 // 12 = 0, 30 // 12 = 2, 18 // 12 = 1, 19 // 12 = 1: three panoramas
        [5, -1, 7, 30, 18, 19, -1, -1],
        [-1] * 8,
    ])
    kept = protocols.panorama_nms(ids, max_n=4)
    np.testing.assert_array_equal(kept, [[13, 3, 25, 37], [5, 30, 18, -1], [-1, -1, -1, -1]])
    np.testing.assert_array_equal(protocols.panorama_nms(ids[:1], max_n=2, cutouts=4),
                                  [[13, 3]])  # 13 // 4 = 12 // 4 = 3, 3 // 4 = 0
    with pytest.raises(ValueError, match="max_n=0"):
        protocols.panorama_nms(ids, max_n=0)
    with pytest.raises(ValueError, match="50 images \\(2 left over\\)"):
        protocols.check_panorama_layout(50)


def test_tokyo247_conditions_follow_matlab_iquery_mod_3():
    conditions = protocols.tokyo247_conditions(7)
    assert conditions.tolist() == ["day", "sunset", "night", "day", "sunset", "night", "day"]
    # MATLAB: 1-based iQuery mod 3 == 1 -> day, 2 -> sunset, 0 -> night.
    matlab = {1: "day", 2: "sunset", 0: "night"}
    assert [matlab[(q + 1) % 3] for q in range(7)] == conditions.tolist()


def test_resolve_protocol_and_query_image_size():
    db, q = ["a.jpg"], ["q.jpg"]
    plain = PlaceSplit("pitts30k_test", db, [[0, 0]], q, [[0, 0]])
    timed = PlaceSplit("tokyoTM_val", db, [[0, 0]], q, [[0, 0]], db_timestamps=[1],
                       query_timestamps=[2])
    tokyo = PlaceSplit("Tokyo 24/7", db, [[0, 0]], q, [[0, 0]])
    assert [protocols.resolve_protocol("auto", s) for s in (plain, timed, tokyo)] == [
        "pitts", "tokyotm", "tokyo247"]
    assert protocols.is_tokyo247_name("tokyo_247_queries") and not protocols.is_tokyo247_name("tokyoTM")
    assert protocols.resolve_protocol("pitts", timed) == "pitts"
    with pytest.raises(ValueError, match="has none"):
        protocols.resolve_protocol("tokyotm", plain)
    with pytest.raises(ValueError, match="protocol='tokio'"):
        protocols.resolve_protocol("tokio", plain)
    size = protocols.query_image_size
    assert size("tokyo247", None) == 640 and size("tokyo247", 1024) == 640
    assert size("tokyo247", 320) == 320 and size("tokyo247", (480, 640)) == (480, 640)
    assert size("pitts", None) is None and size("tokyo247", None, query_image_size=800) == 800


def _tokyo_descriptors():
    """3 panoramas x 12 cutouts on three axes; q0..q2 look at panorama 0 but stand at 0, 1, 2.

    Cutout j of panorama p is e_p + 0.01 j e_3: panorama 0's cutouts are ranked first for every
    query, then panorama 1's (the queries lean towards e_1), then panorama 2's.
    """
    db = np.zeros((36, 4), np.float32)
    for p in range(3):
        db[12 * p : 12 * p + 12, p] = 1.0
        db[12 * p : 12 * p + 12, 3] = 0.01 * np.arange(12)
    queries = np.tile(np.float32([1.0, 0.5, 0.2, 0.0]), (3, 1))
    positives = [np.arange(12 * p, 12 * p + 12) for p in range(3)]
    return _unit(db), _unit(queries), positives


def test_tokyo247_recall_counts_a_panorama_once():
    db, queries, positives = _tokyo_descriptors()
    results, ids = recall.evaluate_descriptors(
        db, queries, positives, ns=(1, 2, 3, 5), protocol="tokyo247", return_ids=True)
    # After NMS each query sees panoramas 0, 1, 2 (best cutout: the one with the largest e_0/e_1
    # share, i.e. j = 0), so q0 is right at 1, q1 at 2, q2 at 3.
    np.testing.assert_array_equal(ids, [[0, 12, 24]] * 3)  # only 3 panoramas: 3 columns
    assert [results[f"recall@{n}"] for n in (1, 2, 3, 5)] == pytest.approx([1 / 3, 2 / 3, 1, 1])
    # q0 day, q1 sunset, q2 night.
    assert (results["recall@1/day"], results["recall@1/sunset"], results["recall@1/night"]) == (1, 0, 0)
    assert (results["recall@2/sunset"], results["recall@2/night"], results["recall@3/night"]) == (1, 0, 1)
    assert results["num_queries/night"] == 1 and results["protocol"] == "tokyo247"
    # Without NMS the 12 cutouts of panorama 0 fill the top 12: q1 and q2 fail at N <= 5.
    pitts = recall.evaluate_descriptors(db, queries, positives, ns=(1, 2, 3, 5))
    assert pitts["recall@5"] == pytest.approx(1 / 3) and "recall@1/day" not in pitts
    table = format_recall_table(results)
    assert table.splitlines()[1].split() == ["N", "recall", "recall", "day", "recall", "sunset",
                                             "recall", "night"]
    assert table.splitlines()[3].split() == ["2", "66.67%", "100.00%", "100.00%", "0.00%"]
    assert recall_ns(results) == [1, 2, 3, 5]


def test_tokyo247_retrieves_twelve_candidates_per_rank():
    """With 12 x max(N) candidates, N distinct panoramas survive even when every panorama's
    cutouts are ranked together."""
    rng = np.random.default_rng(1)
    centres = _unit(rng.standard_normal((20, 16)))
    db = _unit(np.repeat(centres, 12, axis=0) + 0.01 * rng.standard_normal((240, 16)))
    queries = _unit(centres[:4] + 0.05 * rng.standard_normal((4, 16)))
    positives = [np.arange(12 * p, 12 * p + 12) for p in range(4)]
    _, ids = recall.evaluate_descriptors(db, queries, positives, ns=(5,), protocol="tokyo247",
                                             return_ids=True)
    assert ids.shape == (4, 5) and (ids >= 0).all()
    assert all(len(set(row // 12)) == 5 for row in ids)
    scores = queries.astype(np.float64) @ db.T.astype(np.float64)
    order = np.argsort(-scores, axis=1)
    for q in range(4):  # the kept ids are the first cutout of each panorama in the exact ranking
        _, first = np.unique(order[q] // 12, return_index=True)
        np.testing.assert_array_equal(ids[q], order[q][np.sort(first)][:5])


def test_tokyo247_with_exclusion_and_conditions():
    db, queries, positives = _tokyo_descriptors()
    exclude = [np.arange(12), np.zeros(0, np.int64), np.zeros(0, np.int64)]  # q0 loses pano 0
    results, ids = recall.evaluate_descriptors(
        db, queries, positives, ns=(1, 3), protocol="tokyo247", exclude=exclude,
        conditions=["a", "b", "b"], return_ids=True)
    np.testing.assert_array_equal(ids[0], [12, 24, -1])
    # q0 has no positive left and is excluded; q1 found at 2, q2 at 3.
    assert results["num_queries_without_positives"] == 1
    assert results["recall@1"] == 0 and results["recall@3"] == 1
    assert "recall@1/a" not in results and results["num_queries/a"] == 1
    assert results["recall@3/b"] == 1
    with pytest.raises(ValueError, match="one label per query: got 2 for 3"):
        recall.evaluate_descriptors(db, queries, positives, conditions=["a", "b"])
    with pytest.raises(ValueError, match="35 images"):
        recall.evaluate_descriptors(db[:35], queries, positives, protocol="tokyo247")


# --------------------------------------------------------------------------- search and memory


def test_streamed_exact_search_matches_numpy_and_accepts_float16_memmap(tmp_path, rng):
    db = _unit(rng.standard_normal((500, 24)))
    queries = _unit(rng.standard_normal((9, 24)))
    expected = np.argsort(-(queries.astype(np.float64) @ db.T.astype(np.float64)), axis=1)[:, :30]
    for rows in (None, 64, 499, 7):
        np.testing.assert_array_equal(ranking.exact_topk(db, queries, 30, db_chunk_rows=rows), expected)
    half = np.lib.format.open_memmap(tmp_path / "db.npy", mode="w+", dtype=np.float16, shape=db.shape)
    half[:] = db
    ranked = ranking.exact_topk(half, queries, 30, db_chunk_rows=64)
    exact16 = np.argsort(-(queries.astype(np.float64) @ half.T.astype(np.float64)), axis=1)[:, :30]
    assert (ranked[:, :10] == exact16[:, :10]).mean() > 0.95  # float32 sums of float16 values
    positives = [np.array([int(expected[q, 2])]) for q in range(9)]
    results = recall.evaluate_descriptors(half, queries, positives, ns=(1, 3), db_chunk_rows=100)
    assert results["recall@1"] == 0.0 and results["recall@3"] == 1.0


def test_evaluating_a_memmap_never_copies_the_database(tmp_path, rng):
    """tracemalloc sees every NumPy allocation: a float32 or float64 copy of the 16 MiB float16
    database would show up as >= 32 MiB; converting it in 4096-row chunks stays near 4.5 MiB."""
    import tracemalloc

    num_db, dim = 65536, 128
    db = np.lib.format.open_memmap(tmp_path / "db.npy", mode="w+", dtype=np.float16,
                                   shape=(num_db, dim))
    for start in range(0, num_db, 4096):
        db[start : start + 4096] = _unit(rng.standard_normal((4096, dim)))
    db.flush()
    db = np.load(tmp_path / "db.npy", mmap_mode="r")
    queries = _unit(np.asarray(db[::4096], np.float32) + 0.01)
    positives = [np.array([q * 4096]) for q in range(len(queries))]
    tracemalloc.start()
    try:
        results = recall.evaluate_descriptors(db, queries, positives, ns=(1, 5))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert results["recall@1"] == 1.0
    assert peak < 0.5 * db.nbytes, f"peak {peak / 2**20:.1f} MiB for a {db.nbytes / 2**20:.0f} MiB db"


# --------------------------------------------------------------------------- approximate index


def test_default_approx_factory_and_training_sizes():
    assert protocols.default_approx_factory(75984, 4096) == "IVF1024,PQ256"
    assert protocols.default_approx_factory(75984, 32768) == "IVF1024,PQ256"
    assert protocols.default_approx_factory(10_000, 256) == "IVF256,PQ16"
    assert protocols.default_approx_factory(2000, 96) == "IVF51,PQ8x5"
    assert protocols.default_approx_factory(2000, 100) == "IVF51,PQ5x5"
    assert protocols.approx_min_train("IVF1024,PQ64") == 1024
    assert protocols.approx_min_train("IVF16,PQ8x4") == 16 and protocols.approx_min_train("Flat") == 1
    assert protocols.approx_train_size("IVF1024,PQ64", 75984) == 40960
    assert protocols.approx_train_size("IVF30,PQ64x4", 1200) == 1200
    assert protocols.approx_nprobe("IVF1024,PQ64") == 64 and protocols.approx_nprobe("PQ8") is None
    with pytest.raises(ValueError, match="at least 624 database vectors .*the database has 600"):
        protocols.default_approx_factory(600, 64)


def _clustered(rng, num_clusters=60, per_cluster=20, dim=32, num_queries=40, noise=0.15):
    centres = _unit(rng.standard_normal((num_clusters, dim)))
    db = _unit(np.repeat(centres, per_cluster, axis=0)
               + noise * rng.standard_normal((num_clusters * per_cluster, dim)))
    place = rng.integers(0, num_clusters, num_queries)
    queries = _unit(centres[place] + noise * rng.standard_normal((num_queries, dim)))
    positives = [np.arange(p * per_cluster, (p + 1) * per_cluster) for p in place]
    return db, queries, positives


def test_approximate_recall_is_reported_beside_exact(rng):
    db, queries, positives = _clustered(rng)
    exact = recall.evaluate_descriptors(db, queries, positives, ns=(1, 5))
    both = recall.evaluate_descriptors(db, queries, positives, ns=(1, 5), approximate="auto")
    assert {k: both[k] for k in exact} == exact  # exact recall unchanged
    assert both["approx_index"] == "IVF30,PQ8x4" and both["approx_train_size"] == 1200
    assert both["approx_nprobe"] == 8
    for n in (1, 5):
        assert 0.0 <= both[f"approx/recall@{n}"] <= 1.0
        assert abs(both[f"approx/recall@{n}"] - exact[f"recall@{n}"]) <= 0.05
    table = format_recall_table(both, labels=["m"])
    assert "m approx" in table and "IVF30,PQ8x4 trained on 1200, nprobe 8" in table
    # A hard case (exact recall@1 well below 1): an IVF with flat codes visiting all its cells
    # ranks exactly, so its recall equals the exact one.
    db, queries, positives = _clustered(rng, noise=0.3)
    flat = recall.evaluate_descriptors(db, queries, positives, ns=(1, 5),
                                           approximate="IVF4,Flat", approx_nprobe=4)
    assert 0.1 < flat["recall@1"] < 0.9 and flat["recall@1"] < flat["recall@5"] < 1.0
    assert (flat["approx/recall@1"], flat["approx/recall@5"]) == (flat["recall@1"], flat["recall@5"])
    assert flat["approx_train_size"] == 160


def test_approximate_index_errors(rng):
    db, queries, positives = _clustered(rng, num_clusters=10, per_cluster=20)
    with pytest.raises(ValueError, match="at least 624 database vectors .*the database has 200"):
        recall.evaluate_descriptors(db, queries, positives, approximate="auto")
    with pytest.raises(ValueError, match="'IVF512,Flat' needs at least 512 training vectors, but "
                                         "only 200 are available"):
        recall.evaluate_descriptors(db, queries, positives, approximate="IVF512,Flat")
    with pytest.raises(ValueError, match="only 50 are available"):
        recall.evaluate_descriptors(db, queries, positives, approximate="IVF8,PQ4",
                                        approx_train_size=50)
    with pytest.raises(ValueError, match="index_factory string"):
        recall.evaluate_descriptors(db, queries, positives, approximate="NOPE12")


def test_evaluate_refuses_a_bad_approximate_index_before_extracting(colour_split, monkeypatch,
                                                                    mean_colour_model):
    from tf_netvlad.models import extract

    def no_extraction(*args, **kwargs):
        raise AssertionError("descriptors were extracted before the approximate index was checked")

    monkeypatch.setattr(extract, "extract_descriptors", no_extraction)
    model = mean_colour_model  # 3-D descriptors, 6 database images
    with pytest.raises(ValueError, match="at least 624 database vectors .*the database has 6"):
        recall.evaluate(model, colour_split, approximate="auto", progress=False)
    with pytest.raises(ValueError, match="'IVF8,Flat' needs at least 8 training vectors, but only 6"):
        recall.evaluate(model, colour_split, approximate="IVF8,Flat", progress=False)
    with pytest.raises(ValueError, match=r"for dimension 3\. Received: kind='IVF2,PQ2'"):
        recall.evaluate(model, colour_split, approximate="IVF2,PQ2", progress=False)


# --------------------------------------------------------------------------- Tokyo 24/7 end to end

_PANORAMA_COLOURS = [(200, 50, 50), (180, 70, 60), (50, 200, 50), (50, 50, 200)]


def write_tokyo247_split(folder, rng, name="tokyo247", db_shape=(12, 16), query_shape=(960, 1280)):
    """4 panoramas (12 cutouts each, 100 m apart) and 6 large JPEG queries (day, sunset, night x2).

    Panoramas 0 and 1 have similar colours. q0..q3 show their own panorama; q4 (sunset) stands
    at panorama 1 but shows panorama 0's colour, so after panorama NMS its positive is 2nd (with
    the 12 cutouts of panorama 0 ahead of it without NMS); q5 (night, portrait) is 5 km away.
    """
    (folder / "db").mkdir(parents=True)
    (folder / "q").mkdir()
    db_paths, db_utm = [], []
    for p, colour in enumerate(_PANORAMA_COLOURS):
        for j in range(12):
            shade = np.clip(np.asarray(colour) + rng.integers(-6, 7, 3), 0, 255)
            write_solid_image(folder / "db" / f"p{p}_{j:02d}.png", shade, db_shape)
            db_paths.append(f"db/p{p}_{j:02d}.png")
            db_utm.append((100.0 * p, 0.0))
    query_utm, query_paths = [], []
    for q, (colour, place) in enumerate([(0, 0), (1, 1), (2, 2), (3, 3), (0, 1), (3, None)]):
        shape = query_shape[::-1] if q == 5 else query_shape
        write_solid_image(folder / "q" / f"{q}.jpg", _PANORAMA_COLOURS[colour], shape, quality=95)
        query_paths.append(f"q/{q}.jpg")
        query_utm.append((100.0 * place + 3, 4.0) if place is not None else (5000.0, 5000.0))
    return PlaceSplit(name, db_paths, db_utm, query_paths, query_utm, root=str(folder))


def test_evaluate_tokyo247_split_end_to_end(tmp_path, rng, monkeypatch, mean_colour_model):
    from tf_netvlad.models import extract

    split = write_tokyo247_split(tmp_path, rng)
    sizes = []
    original = extract.extract_descriptors

    def spy(model, paths, **kwargs):
        sizes.append(kwargs["image_size"])
        return original(model, paths, **kwargs)

    monkeypatch.setattr(extract, "extract_descriptors", spy)
    results, ids = recall.evaluate(mean_colour_model, split, ns=(1, 2, 5), batch_size=4,
                                       progress=False, return_ids=True)
    assert sizes == [None, 640]  # database at full resolution, queries at most 640 px
    assert results["protocol"] == "tokyo247"
    assert (results["image_size"], results["query_image_size"]) == ("keep", "640")
    assert ids.shape == (6, 4) and all(len(set(row // 12)) == 4 for row in ids)
    assert results["num_queries_without_positives"] == 1
    assert (results["recall@1"], results["recall@2"]) == (pytest.approx(0.8), 1.0)
    assert (results["recall@1/day"], results["recall@1/sunset"], results["recall@2/sunset"],
            results["recall@1/night"]) == (1.0, 0.5, 1.0, 1.0)
    assert (results["num_queries/day"], results["num_queries/sunset"],
            results["num_queries/night"]) == (2, 2, 2)
    pitts = recall.evaluate(mean_colour_model, split, ns=(1, 2, 5), batch_size=4,
                                progress=False, protocol="pitts")
    assert sizes[2:] == [None, None]
    assert pitts["recall@5"] == pytest.approx(0.8) and "recall@1/day" not in pitts


def test_evaluate_with_float16_memmap_descriptors(tmp_path, rng, colour_split, mean_colour_model):
    reference = recall.evaluate(mean_colour_model, colour_split, ns=(1, 5), progress=False)
    memmap_dir = tmp_path / "mm"
    results = recall.evaluate(mean_colour_model, colour_split, ns=(1, 5), progress=False,
                                  descriptor_dtype="float16", memmap_dir=memmap_dir)
    assert results["recall@1"] == reference["recall@1"] == pytest.approx(5 / 6)
    assert os.listdir(memmap_dir) == []  # the temporary memmap is removed
    with pytest.raises(ValueError, match="'float32' or 'float16'. Received: 'float64'"):
        recall.evaluate(mean_colour_model, colour_split, descriptor_dtype="float64",
                            progress=False)


def test_evaluate_tokyotm_drops_same_timestamp_images(colour_split, mean_colour_model):
    import dataclasses

    # q0 was taken at the same time as db0 (its rank-1 answer), so TokyoTM drops db0 for q0: q0
    # loses its only positive and is excluded. The others keep their rank-1 answers.
    timed = dataclasses.replace(colour_split, name="tokyoTM_val", db_timestamps=np.arange(6),
                                query_timestamps=[0, 10, 11, 12, 13, 14, 15])
    results, ids = recall.evaluate(mean_colour_model, timed, ns=(1, 5), progress=False,
                                       return_ids=True)
    assert results["protocol"] == "tokyotm" and 0 not in ids[0]
    assert results["num_queries_without_positives"] == 2  # q0 and the far-away q6
    assert results["recall@1"] == pytest.approx(4 / 5)  # q1..q4 right, q5 wrong
    plain = recall.evaluate(mean_colour_model, timed, ns=(1, 5), progress=False,
                                protocol="pitts")
    assert plain["recall@1"] == pytest.approx(5 / 6) and plain["num_queries_without_positives"] == 1


def test_evaluate_skips_unreadable_images_and_keeps_the_protocol(tmp_path, rng, mean_colour_model):
    from tf_netvlad.data import pipelines

    split = write_tokyo247_split(tmp_path, rng)
    (tmp_path / "db" / "p2_05.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # db id 29
    os.remove(tmp_path / "q" / "4.jpg")  # the sunset query whose answer was 2nd
    with pytest.raises(pipelines.ImageReadError, match="p2_05.png"):
        recall.evaluate(mean_colour_model, split, ns=(1, 2), progress=False)
    results, ids = recall.evaluate(mean_colour_model, split, ns=(1, 2), progress=False,
                                       return_ids=True, on_error="skip")
    assert (results["num_db_unreadable"], results["num_queries_unreadable"]) == (1, 1)
    assert [(u["kind"], u["path"]) for u in results["unreadable"]] == [
        ("db", "db/p2_05.png"), ("query", "q/4.jpg")]
    assert results["unreadable"][1]["reason"] == "file does not exist"
    assert results["unreadable"][0]["reason"].startswith("cannot be decoded")
    assert ids.shape == (6, 2) and (ids[4] == -1).all() and 29 not in ids
    # q0..q3 right at rank 1, q5 has no positive: recall 1. The conditions keep the original
    # query order: q1 is the one sunset query left.
    assert results["num_queries"] == 5 and results["recall@1"] == 1.0
    assert (results["num_queries/day"], results["num_queries/sunset"],
            results["num_queries/night"]) == (2, 1, 2)
    assert results["recall@1/sunset"] == 1.0
    assert "unreadable images left out: 1 db, 1 queries" in format_recall_table(results)
