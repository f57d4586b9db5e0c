"""Tests for tf_netvlad.evaluation and tf_netvlad.plots: hand-computed recall, end-to-end evaluate."""

import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

from tf_netvlad import evaluation, plots
from tf_netvlad.places import PlaceSplit


# --------------------------------------------------------------------------- recall_at_n


def test_recall_ns_constants():
    assert evaluation.DEFAULT_RECALL_NS == (1, 5, 10, 20)
    assert evaluation.REFERENCE_RECALL_NS == (1, 2, 3, 4, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50,
                                              55, 60, 65, 70, 75, 80, 85, 90, 95, 100)


def test_recall_at_n_hand_computed():
    retrieved = np.array([
        [4, 2, 7],  # first positive (2) at rank 2
        [1, 0, 3],  # rank 1
        [5, 6, 8],  # not retrieved
        [3, 9, 0],  # rank 3
    ])
    positives = [np.array([2, 9]), np.array([1]), np.array([0]), np.array([0, 11])]
    assert evaluation.recall_at_n(retrieved, positives, ns=(1, 2, 3)) == {1: 0.25, 2: 0.5, 3: 0.75}
    np.testing.assert_array_equal(evaluation.first_correct_rank(retrieved, positives), [2, 1, 0, 3])


def test_queries_without_positives_are_excluded_and_logged(caplog):
    retrieved = np.array([[0, 1], [2, 3], [4, 5]])
    positives = [np.array([1]), np.array([], np.int64), np.array([7])]
    with caplog.at_level("WARNING"):
        recalls = evaluation.recall_at_n(retrieved, positives, ns=(1, 2))
    # 2 scored queries: q0 found at rank 2, q2 never.
    assert recalls == {1: 0.0, 2: 0.5}
    assert "1 of 3 queries have no positive" in caplog.text
    np.testing.assert_array_equal(evaluation.first_correct_rank(retrieved, positives), [2, -1, 0])


def test_recall_at_n_errors():
    with pytest.raises(ValueError, match="recall@5 needs at least 5"):
        evaluation.recall_at_n(np.zeros((2, 3), int), [[0], [1]], ns=(1, 5))
    with pytest.raises(ValueError, match="one entry per query: got 1 entries for 2"):
        evaluation.recall_at_n(np.zeros((2, 3), int), [[0]], ns=(1,))
    with pytest.raises(ValueError, match="None of the 2 queries has a positive"):
        evaluation.recall_at_n(np.zeros((2, 3), int), [[], []], ns=(1,))
    with pytest.raises(ValueError, match="ns=\\(0,\\)"):
        evaluation.recall_at_n(np.zeros((2, 3), int), [[0], [1]], ns=(0,))


# --------------------------------------------------------------------------- descriptors


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_evaluate_descriptors_matches_numpy_ranking(rng):
    db = _unit(rng.standard_normal((40, 8)))
    queries = _unit(db[:10] + 0.8 * rng.standard_normal((10, 8)))
    positives = [np.array([q, (q + 1) % 40]) for q in range(10)]
    results, ids = evaluation.evaluate_descriptors(db, queries, positives, ns=(1, 3, 100), return_ids=True)
    ranking = np.argsort(-(queries.astype(np.float64) @ db.T.astype(np.float64)), axis=1)
    np.testing.assert_array_equal(ids, ranking)  # 100 > 40 db images: everything is retrieved
    expected = evaluation.recall_at_n(ranking, positives, ns=(1, 3, 40))
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
    results, ids = evaluation.evaluate_descriptors(
        db, queries, positives, ns=(1, 4), return_ids=True, exclude=exclude
    )
    assert ids[0, 0] == 1 and 0 not in ids[0] and ids[0, -1] == -1
    assert results["recall@1"] == 1.0 and results["num_queries_without_positives"] == 1


# --------------------------------------------------------------------------- end to end


def _mean_colour_model():
    images = keras.Input(shape=(None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(images)
    return keras.Model(images, keras.layers.UnitNormalization()(x), name="meancolour")


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


def test_evaluate_end_to_end(colour_split):
    results, ids = evaluation.evaluate(
        _mean_colour_model(), colour_split, image_size=8, ns=(1, 5, 10), batch_size=4,
        progress=False, return_ids=True,
    )
    np.testing.assert_array_equal(ids[:6, 0], [0, 1, 2, 3, 4, 5])
    assert ids.shape == (7, 6)
    assert results["recall@1"] == pytest.approx(5 / 6)
    assert results["recall@10"] == 1.0  # more than the 6 db images: all retrieved
    assert results["num_queries"] == 7 and results["num_queries_without_positives"] == 1
    assert results["num_db"] == 6 and results["descriptor_dim"] == 3
    assert results["split"] == "toy" and results["image_size"] == "8"
    table = evaluation.format_recall_table(results)
    assert "83.33%" in table and "100.00%" in table and "1 without positives" in table


def test_evaluate_identity_db_equals_queries_gives_recall_one(tmp_path, rng):
    paths = []
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(f"{i}.png")
    utm = np.stack([np.arange(5) * 50.0, np.zeros(5)], axis=1)
    split = PlaceSplit("same", paths, utm, paths, utm, root=str(tmp_path))
    results = evaluation.evaluate(_mean_colour_model(), split, ns=(1,), progress=False)
    assert results["recall@1"] == 1.0


# --------------------------------------------------------------------------- reporting


def test_format_recall_table_with_several_runs():
    before = {"recall@1": 0.5, "recall@5": 0.75}
    after = {"recall@1": 0.875, "recall@5": 1.0, "recall@10": 1.0}
    table = evaluation.format_recall_table([before, after], labels=["before", "after"])
    lines = table.splitlines()
    assert "before" in lines[0] and "after" in lines[0]
    assert lines[1].split() == ["1", "50.00%", "87.50%"]
    assert lines[3].split() == ["10", "-", "100.00%"]


def test_write_json_is_atomic_and_converts_numpy(tmp_path):
    path = tmp_path / "out" / "results.json"
    results = {"recall@1": np.float32(0.5), "num_db": np.int64(3), "ns": np.array([1, 5])}
    evaluation.write_json(results, path)
    assert json.loads(path.read_text()) == {"recall@1": 0.5, "num_db": 3, "ns": [1, 5]}
    with pytest.raises(TypeError):
        evaluation.write_json({"bad": object()}, tmp_path / "out" / "bad.json")
    assert sorted(os.listdir(tmp_path / "out")) == ["results.json"]  # no partial/temp files


def test_plot_recall_curve_and_retrievals(tmp_path, colour_split):
    before = {f"recall@{n}": min(1.0, 0.3 + n / 40) for n in evaluation.REFERENCE_RECALL_NS}
    after = {f"recall@{n}": min(1.0, 0.6 + n / 50) for n in evaluation.REFERENCE_RECALL_NS}
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
