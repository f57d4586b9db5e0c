"""Tests for tf_netvlad.retrieval.localize: position estimate, top-1 on database images, JSON, PNG grid."""

import json
import types

import numpy as np
import pytest
from PIL import Image

from tests.helpers import write_block_images
from tests.retrieval import test_zones as zones_tests
from tests.retrieval.test_zones import PITTSBURGH_LATLON
from tf_netvlad.data import pipelines
from tf_netvlad.data.places import PlaceSplit
from tf_netvlad.models.identity import ModelMismatchError
from tf_netvlad.models.model import build_model
from tf_netvlad.retrieval import localize as loc
from tf_netvlad.retrieval.build import build_retrieval_index


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    """8 database images 100 m apart along x (plus a copy of image 2 at +10 m), flat index."""
    folder = tmp_path_factory.mktemp("loc")
    names = write_block_images(folder, 8, seed=3, name="db{}.png", size=(32, 40))
    Image.open(folder / "db2.png").save(folder / "db2_copy.png")
    names.append("db2_copy.png")
    positions = np.stack([np.arange(9) * 100.0, np.full(9, 7000.0)], axis=1)
    positions[8] = [210.0, 7000.0]
    index = build_retrieval_index(tiny_model, folder / "index", names, positions=positions,
                                  root=folder, image_size=(24, 32), progress=False)
    return folder, names, positions, index


def test_estimate_position_hand_computed():
    positions = [[0, 0], [10, 0], [100, 0], [np.nan, np.nan], [0, 20]]
    scores = [0.9, 0.6, 0.8, 0.7, 0.3]
    # Within 25 m of the top-1: rows 0, 1, 4 with weights 0.9, 0.6, 0.3.
    np.testing.assert_allclose(loc.estimate_position(positions, scores), [6 / 1.8, 6 / 1.8])
    np.testing.assert_allclose(loc.estimate_position(positions, scores, radius=5), [0, 0])
    # Unknown top-1 position: the next known one is the anchor.
    np.testing.assert_allclose(loc.estimate_position(positions[3:], scores[3:]), [0, 20])
    assert loc.estimate_position([[np.nan, np.nan]], [1.0]) is None
    # Negative scores are clipped to a tiny positive weight, never flipping the mean.
    np.testing.assert_allclose(loc.estimate_position([[0, 0], [10, 0]], [-0.5, -0.2]), [5, 0])
    with pytest.raises(ValueError, match="2 positions, 1 scores"):
        loc.estimate_position([[0, 0], [1, 1]], [1.0])


def test_localize_database_images_top1_and_estimate(setup, tiny_model):
    folder, names, positions, index = setup
    queries = [str(folder / n) for n in ("db5.png", "db2.png", "db0.png")]
    gt = positions[[5, 2, 0]] + [[3.0, 4.0], [0, 0], [30.0, 0]]
    results = loc.localize(folder / "index", tiny_model, queries, k=3, gt_positions=gt)
    assert [r["top"][0]["id"] for r in results] == [5, 2, 0] or \
        [r["top"][0]["id"] for r in results] == [5, 8, 0]
    for result, row in zip(results, (5, 2, 0)):
        assert result["top"][0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert len(result["top"]) == 3 and [t["rank"] for t in result["top"]] == [1, 2, 3]
    # db2 and its copy (210 m, 10 m away) tie at score 1: the estimate is their mean.
    assert {t["id"] for t in results[1]["top"][:2]} == {2, 8}
    np.testing.assert_allclose(results[1]["estimated_position"], [205.0, 7000.0], atol=1e-3)
    # Other places are 100 m away, so the estimate is the top-1 position itself.
    np.testing.assert_allclose(results[0]["estimated_position"], positions[5])
    assert results[0]["error_m"] == pytest.approx(5.0)
    assert results[0]["top1_correct"] is True and results[0]["top"][0]["distance_m"] == 5.0
    assert results[2]["top1_correct"] is False and results[2]["error_m"] == pytest.approx(30.0)
    unknown = loc.localize(folder / "index", tiny_model, queries[:2], k=2,
                           gt_positions=[positions[5], [np.nan, np.nan]])
    assert unknown[0]["top1_correct"] is True and unknown[0]["top"][0]["correct"] is True
    assert unknown[1]["top1_correct"] is None and unknown[1]["error_m"] is None
    assert unknown[1]["gt_position"] is None and "correct" not in unknown[1]["top"][0]
    assert results[0]["top"][0]["path"] == str(folder / "db5.png")
    assert results[0]["gt_position"] == [503.0, 7004.0]
    json.loads(json.dumps(results, allow_nan=False))  # JSON-serialisable, no NaN
    text = loc.format_results(results[:1]).splitlines()
    assert text[0] == f"{queries[0]}: estimated position (500.0, 7000.0), 5.0 m from the ground truth"
    assert text[1].startswith("  #1 1.0000 (500.0, 7000.0) ") and text[1].endswith("db5.png correct")
    assert len(text) == 4


def test_localize_uses_the_index_resize_policy_by_default(setup, tiny_model):
    folder, names, _, index = setup
    query = str(folder / "db3.png")
    own = loc.localize(index, tiny_model, [query], k=1)[0]["top"][0]
    assert own["id"] == 3 and own["score"] == pytest.approx(1.0, abs=1e-5)
    # The policy matters: the full-size image gives another descriptor.
    full = loc.localize(index, tiny_model, [query], k=1, image_size="keep")[0]["top"][0]
    # At its full size db3 need not be closest to its own 24x32 entry (an untrained model: another
    # image's entry won for some weights), so the reference is the best entry of the whole index.
    scores = index.descriptors @ tiny_model.predict_on_batch(pipelines.load_image(query)[None].numpy())[0]
    assert full["id"] == int(np.argmax(scores)) and full["score"] < 0.99
    assert full["score"] == pytest.approx(float(scores.max()), abs=1e-4)


def test_localize_without_positions_or_truth(tmp_path, tiny_model, setup):
    folder, names, _, _ = setup
    index = build_retrieval_index(tiny_model, tmp_path / "nopos", names[:3], root=folder,
                                  image_size=(24, 32), progress=False)
    result = loc.localize(index, tiny_model, str(folder / "db1.png"), k=2)[0]
    assert result["estimated_position"] is None and result["top"][0]["position"] is None
    assert "correct" not in result["top"][0] and "gt_position" not in result


def test_localize_refuses_other_model_and_bad_input(setup, tiny_model):
    folder, _, _, index = setup
    with pytest.raises(ModelMismatchError, match="different weights"):
        loc.localize(index, build_model("tiny", num_clusters=4), [str(folder / "db1.png")])
    with pytest.raises(pipelines.ImageReadError, match="nothing.png"):
        loc.localize(index, tiny_model, [str(folder / "nothing.png")])
    with pytest.raises(ValueError, match=r"`gt_positions` must have shape \(1, 2\)"):
        loc.localize(index, tiny_model, [str(folder / "db1.png")], gt_positions=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="`image_paths` is empty"):
        loc.localize(index, tiny_model, [])


def test_localize_skips_unreadable_queries_and_keeps_the_rest(tmp_path, setup, tiny_model):
    folder, _, positions, index = setup
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    queries = [str(folder / "db4.png"), str(tmp_path / "missing.png"), str(corrupt),
               str(folder / "db6.png")]
    gt = positions[[4, 0, 0, 6]]
    results = loc.localize(index, tiny_model, queries, k=2, gt_positions=gt, on_error="skip")
    assert [r["query"] for r in results] == queries
    # The readable queries get exactly what they get alone.
    alone = loc.localize(index, tiny_model, [queries[0], queries[3]], k=2, gt_positions=gt[[0, 3]])
    assert [results[0], results[3]] == alone
    assert [r["top"][0]["id"] for r in alone] == [4, 6]
    assert results[1] == {"query": queries[1], "error": "file does not exist", "top": [],
                          "estimated_position": None, "utm_zone": None, "estimated_latlon": None}
    assert results[2]["error"].startswith("cannot be decoded") and results[2]["top"] == []
    text = loc.format_results(results)
    assert f"{queries[1]}: not localised, file does not exist" in text.splitlines()
    json.loads(json.dumps(results, allow_nan=False))
    png = loc.plot_localization(results, tmp_path / "grid.png")  # unreadable: a grey cell
    assert Image.open(png).format == "PNG"
    only_bad = loc.localize(index, tiny_model, [queries[1]], on_error="skip")
    assert only_bad[0]["error"] == "file does not exist"
    with pytest.raises(ValueError, match="`on_error` must be 'raise' or 'skip'"):
        loc.localize(index, tiny_model, queries[:1], on_error="ignore")


def test_results_json_and_plot_png(tmp_path, setup, tiny_model):
    folder, _, positions, index = setup
    queries = [str(folder / "db4.png"), str(folder / "db6.png")]
    results = loc.localize(index, tiny_model, queries, k=3)
    path = loc.write_results(results, tmp_path / "out" / "results.json")
    assert json.loads(open(path).read()) == results
    gt = positions[[4, 1]]  # the second query's truth is wrong on purpose
    png = loc.plot_localization(results, tmp_path / "out" / "grid.png", gt=gt)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 4 * 100 and image.size[1] > 2 * 100
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    green = np.all(np.abs(pixels - [0x2C, 0xA0, 0x2C]) < 8, axis=1).sum()
    red = np.all(np.abs(pixels - [0xD6, 0x27, 0x28]) < 8, axis=1).sum()
    assert green > 100 and red > 100  # query 1's top-1 is framed correct, query 2's wrong
    neutral = loc.plot_localization(results, tmp_path / "out" / "plain.png")
    with Image.open(neutral) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    assert np.all(np.abs(pixels - [0x2C, 0xA0, 0x2C]) < 8, axis=1).sum() == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "grid.png", "plain.png", "results.json"]
    with pytest.raises(ValueError, match="empty"):
        loc.plot_localization([], tmp_path / "x.png")


def test_positions_from_split_matches_full_relative_and_file_names(tmp_path):
    split = PlaceSplit(
        name="tiny", db_paths=["db/a.jpg", "db/b.jpg"], db_utm=np.array([[1.0, 2], [3, 4]]),
        query_paths=["q/x.jpg", "q/sub/y.jpg"], query_utm=np.array([[5.0, 6], [7, 8]]),
        root=str(tmp_path))
    found = loc.positions_from_split(
        split, [str(tmp_path / "q" / "x.jpg"), "/elsewhere/q/sub/y.jpg", "b.jpg"])
    np.testing.assert_allclose(found, [[5, 6], [7, 8], [3, 4]])
    with pytest.raises(ValueError, match="'z.jpg' is not among the 2 query and 2 database"):
        loc.positions_from_split(split, ["z.jpg"])
    found = loc.positions_from_split(split, ["b.jpg", "z.jpg"], missing="nan")  # unknown: a NaN row
    np.testing.assert_allclose(found[0], [3, 4])
    assert np.isnan(found[1]).all()
    with pytest.raises(ValueError, match="missing"):
        loc.positions_from_split(split, ["b.jpg"], missing="skip")


# --------------------------------------------------------------------------- the user's coordinates

# The images of the zone tests: 4 places in zone 17T (`PITTSBURGH_LATLON`), `@`-names of that zone.
zoned = zones_tests.zoned


def test_localize_reports_latitude_longitude_when_the_index_knows_its_zone(tmp_path, zoned, tiny_model):
    folder, names, positions = zoned
    split = types.SimpleNamespace(db_paths=names, db_utm=positions, root=str(folder), utm_zone="17T")
    index = build_retrieval_index(tiny_model, tmp_path / "ix", split, image_size=(24, 32),
                                  progress=False)
    assert index.utm_zone == "17T"
    assert json.loads((tmp_path / "ix" / "metadata.json").read_text())["utm_zone"] == "17T"
    with pytest.raises(ValueError, match="utm_zone='18T'.*disagrees with the split.*zone 17T"):
        build_retrieval_index(str(tmp_path / "missing.keras"), tmp_path / "ix2", split, utm_zone="18T")
    result = loc.localize(index, tiny_model, [str(folder / "p2.png")], k=2)[0]
    assert result["utm_zone"] == "17T" and result["top"][0]["id"] == 2
    # places are 100 m apart, so the estimate is the top-1 position: back to its lat/lon
    np.testing.assert_allclose(result["estimated_latlon"], PITTSBURGH_LATLON[2], atol=1e-8)
    for entry in result["top"]:
        np.testing.assert_allclose(entry["latlon"], PITTSBURGH_LATLON[entry["id"]], atol=1e-8)
    line = loc.format_results([result]).splitlines()[0]
    assert line == (f"{folder / 'p2.png'}: estimated position ({positions[2, 0]:.1f}, "
                    f"{positions[2, 1]:.1f}) UTM 17T = latitude 40.442400, longitude -79.995900")
    # an index without a zone (or an older one) answers in UTM only
    plain = build_retrieval_index(tiny_model, tmp_path / "plain", names, positions=positions,
                                  root=folder, image_size=(24, 32), progress=False)
    result = loc.localize(plain, tiny_model, [str(folder / "p2.png")], k=1)[0]
    assert plain.utm_zone is None and result["estimated_latlon"] is None
    assert result["top"][0]["latlon"] is None and result["estimated_position"] is not None


def test_localize_warns_when_the_queries_are_read_at_another_size_than_the_training_size(
        setup, tiny_model, caplog):
    """The queries are read at the index's policy unless `image_size` is given; a model that records
    its training size (`NetVLADModel.training_image_size`) warns in one line when that is not it,
    as `evaluate`, `index` and `export` do (tests/retrieval/test_build.py)."""
    import logging

    from tf_netvlad.models.model import NetVLADModel

    folder, _, _, index = setup  # built at 24x32
    model = NetVLADModel.from_config(dict(tiny_model.get_config(), training_image_size="24x32"))
    model.set_weights(tiny_model.get_weights())  # same fingerprint: the index accepts it
    query = [str(folder / "db4.png")]
    with caplog.at_level(logging.WARNING, logger="tf_netvlad"):
        assert loc.localize(index, model, query, k=1)[0]["top"][0]["id"] == 4
        loc.localize(index, model, query, k=1, image_size="48x64")
    notes = [r.getMessage() for r in caplog.records if "was trained on" in r.getMessage()]
    assert notes == [f"{model.name} was trained on 24x32 images and localizes the queries with "
                     "image_size 48x64; pass --image-size 24x32 (image_size='24x32') to use it at "
                     "its training size."]
