"""Tests for tf_netvlad.evaluation.ground_truth and tf_netvlad.evaluation.oxford_paris: hand-computed AP, a
brute-force reference, the revisited protocols, ground-truth loaders (pickle and text folder),
bad input, and evaluate_map end to end."""

import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tf_netvlad.evaluation import ground_truth as rgt
from tf_netvlad.evaluation import map_metrics
from tf_netvlad.evaluation import oxford_paris as rm
from tf_netvlad.evaluation.map_metrics import average_precision, compute_map, revisited_map

# --------------------------------------------------------------------------- reference


def reference_ap_and_precision(ranking, positives, junk, ks):
    """Independent brute force: walk the ranking, skip junk, trapezoid area under the PR curve
    (`ap += (recall - old_recall) * (old_precision + precision) / 2`, Oxford compute_ap.cpp form),
    and revisitop's P@k (k' = min(last positive position, k); a positive missing from a truncated
    ranking lies past its end). NaN for a query without positives."""
    positives, junk = set(int(i) for i in positives), set(int(i) for i in junk)
    if not positives:
        return float("nan"), [float("nan")] * len(ks)
    ap, found, seen, old_recall, old_precision, positions = 0.0, 0, 0, 0.0, 1.0, []
    for item in ranking:
        item = int(item)
        if item in junk and item not in positives:
            continue
        seen += 1
        if item in positives:
            found += 1
            positions.append(seen)
        recall, precision = found / len(positives), found / seen
        ap += (recall - old_recall) * (old_precision + precision) / 2
        old_recall, old_precision = recall, precision
    precisions = []
    for k in ks:
        if not positions:
            precisions.append(0.0)
            continue
        last = max(positions) if len(positions) == len(positives) else float("inf")
        kq = min(last, k)
        precisions.append(sum(p <= kq for p in positions) / kq)
    return ap, precisions


def reference_map(rankings, positives, junk, ks=(1, 5, 10)):
    rows = [reference_ap_and_precision(r, p, j, ks) for r, p, j in zip(rankings, positives, junk)]
    aps = np.array([r[0] for r in rows])
    precisions = np.array([r[1] for r in rows])
    scored = np.isfinite(aps)
    return aps, precisions, aps[scored].mean(), precisions[scored].mean(axis=0)


# --------------------------------------------------------------------------- AP by hand


def test_average_precision_hand_computed():
    # Positives at 0-based ranks 0 and 2 of 2: (1 + 1)/2 * 1/2 + (1/2 + 2/3)/2 * 1/2 = 0.791667.
    assert average_precision([0, 2], 2) == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)
    # Ranks 1 and 3: (0/1 + 1/2)/4 + (1/3 + 2/4)/4 = 1/3.
    assert average_precision([1, 3], 2) == pytest.approx(1 / 3)
    # A perfect ranking is 1; a third positive never retrieved divides by 3.
    assert average_precision([0, 1], 2) == pytest.approx(1.0)
    assert average_precision([0, 1], 3) == pytest.approx(2 / 3)
    assert average_precision([], 4) == 0.0
    with pytest.raises(ValueError, match="num_positives"):
        average_precision([0, 1], 1)
    with pytest.raises(ValueError, match="strictly increasing"):
        average_precision([2, 1], 2)


def test_compute_map_junk_is_removed_from_the_ranking():
    # Ranking of 5 db images [P, J, P, N, N]: positives at ranks 1 and 3 (1-based) with a junk at
    # rank 2. Junk removed: positives at 0-based ranks 0 and 1 -> AP = ((1+1)/2 + (1+1)/2) / 2 = 1.
    ranking = np.array([[10, 11, 12, 13, 14]])
    result = compute_map(ranking, [[10, 12]], [[11]], num_db=15)
    assert result["mAP"] == pytest.approx(1.0)
    assert (result["mP@1"], result["mP@5"], result["mP@10"]) == (1.0, 1.0, 1.0)
    # Without the junk list the junk is a wrong image: ranks 0 and 2 -> 0.791667; P@1 = 1,
    # P@5: k' = min(3, 5) = 3, 2 of 3 -> 2/3.
    result = compute_map(ranking, [[10, 12]], None, num_db=15)
    assert result["mAP"] == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)
    assert result["mP@5"] == pytest.approx(2 / 3) and result["mP@1"] == 1.0


def test_compute_map_mean_over_queries_and_skipped_queries():
    ranking = np.array([[3, 0, 4, 1, 2], [0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
    # q0: positives 0, 1 at ranks 1, 3 -> AP 1/3; P@1 = 0, P@5: k' = min(4, 5) = 4 -> 2/4.
    # q1: no positive -> skipped. q2: positive 4 at rank 0, junk 3; positive 0 at rank 4 with one
    # junk before it -> 0-based rank 3: AP = ((1+1)/2 + (1/3 + 2/4)/2) / 2 = 0.708333.
    result = compute_map(ranking, [[0, 1], [], [4, 0]], [[], [2], [3]], ks=(1, 5))
    assert result["num_queries"] == 2 and result["num_queries_skipped"] == 1
    np.testing.assert_allclose(result["ap"], [1 / 3, np.nan, (1 + (1 / 3 + 0.5) / 2) / 2])
    assert result["mAP"] == pytest.approx((1 / 3 + (1 + (1 / 3 + 0.5) / 2) / 2) / 2)
    # q2 P@5: 1-based positions after junk removal [1, 4] -> k' = 4 -> 2/4.
    np.testing.assert_allclose(result["precision"][[0, 2]], [[0.0, 0.5], [1.0, 0.5]])
    assert result["mP@5"] == pytest.approx(0.5) and result["mP@1"] == pytest.approx(0.5)


def test_truncated_ranking_counts_missing_positives_as_not_retrieved():
    rng = np.random.default_rng(1)
    full = np.stack([rng.permutation(30) for _ in range(6)])
    positives = [full[q, [2, 9, 25]] for q in range(6)]
    junk = [full[q, [1, 12]] for q in range(6)]
    truncated = compute_map(full[:, :10], positives, junk, num_db=30)
    # Within the top 10 each query holds its positives at 0-based ranks 2 and 9, i.e. 1 and 8
    # after removing the junk at rank 1: (0/1 + 1/2)/2 + (1/8 + 2/9)/2; the positive at rank 25 is
    # not retrieved but counts in n = 3.
    expected = ((0 + 1 / 2) / 2 + (1 / 8 + 2 / 9) / 2) / 3
    np.testing.assert_allclose(truncated["ap"], expected)
    complete = compute_map(full, positives, junk)
    # Full ranking: the third positive at rank 25 has both junk (1, 12) before it -> rank 23.
    assert complete["mAP"] == pytest.approx(expected + (2 / 23 + 3 / 24) / 2 / 3)
    # mP@10: the top 10 holds 8 non-junk images, so P@10 is as in the full ranking: 2 / 10 (k' = 10
    # because the third positive lies beyond rank 10; revisitop's k' = min(last position, k)).
    assert truncated["mP@10"] == pytest.approx(complete["mP@10"]) == pytest.approx(0.2)
    assert truncated["mP@5"] == pytest.approx(complete["mP@5"]) == pytest.approx(1 / 5)


def test_compute_map_matches_brute_force_reference(monkeypatch):
    rng = np.random.default_rng(7)
    num_db, num_q = 60, 150
    rankings = np.stack([rng.permutation(num_db) for _ in range(num_q)])
    positives, junk = [], []
    for q in range(num_q):
        ids = rng.permutation(num_db)
        npos, njunk = rng.integers(0, 8), rng.integers(0, 6)
        positives.append(ids[:npos])
        junk.append(ids[npos : npos + njunk])
    monkeypatch.setattr(map_metrics, "_WORK_ELEMENTS", 7 * num_db)  # several chunks of 7 queries
    for ks, k in (((1, 5, 10), num_db), ((1, 3), 20)):
        result = compute_map(rankings[:, :k], positives, junk, ks=ks, num_db=num_db)
        aps, precisions, mean_ap, mean_p = reference_map(rankings[:, :k], positives, junk, ks)
        np.testing.assert_allclose(result["ap"], aps, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(result["precision"], precisions, rtol=1e-12, atol=1e-12)
        assert result["mAP"] == pytest.approx(mean_ap, rel=1e-12)
        for col, kk in enumerate(ks):
            assert result[f"mP@{kk}"] == pytest.approx(mean_p[col], rel=1e-12)
        assert result["num_queries_skipped"] == sum(len(p) == 0 for p in positives) > 0


def test_compute_map_bad_input():
    ranking = np.array([[0, 1, 2], [2, 1, 0]])
    with pytest.raises(ValueError, match="2 rows for 3 queries"):
        compute_map(ranking, [[0], [1], [2]])
    with pytest.raises(ValueError, match="row 1 lists a database id twice"):
        compute_map(np.array([[0, 1, 2], [2, 2, 0]]), [[0], [1]])
    with pytest.raises(ValueError, match="padding like -1"):
        compute_map(np.array([[0, 1, -1], [2, 1, 0]]), [[0], [1]])
    with pytest.raises(ValueError, match=r"positives\[1\] holds database id 7"):
        compute_map(ranking, [[0], [7]], num_db=3)
    with pytest.raises(ValueError, match="2-D integer array"):
        compute_map(ranking.astype(float), [[0], [1]])
    with pytest.raises(ValueError, match="ks"):
        compute_map(ranking, [[0], [1]], ks=(0,))
    with pytest.raises(ValueError, match="`junk` has 1 entries for 2"):
        compute_map(ranking, [[0], [1]], [[2]])


# --------------------------------------------------------------------------- revisited protocols


def _tiny_gnd():
    # 8 db images. q0: easy {0, 1}, hard {2}, junk {3}; q1: easy {4}, hard {}, junk {5}.
    return {
        "imlist": [f"db{i}" for i in range(8)],
        "qimlist": ["db0", "db4"],
        "gnd": [
            {"bbx": [1.0, 2.0, 20.0, 24.0], "easy": [0, 1], "hard": [2], "junk": [3]},
            {"bbx": [0.0, 0.0, 16.0, 16.0], "easy": [4], "hard": [], "junk": [5]},
        ],
    }


def test_revisited_protocol_lists():
    gt = rgt.ground_truth_from_revisited(_tiny_gnd(), name="tiny")
    lists = {p: [(a.tolist(), b.tolist()) for a, b in zip(*gt.protocols[p])]
             for p in rgt.REVISITED_PROTOCOLS}
    assert lists["easy"] == [([0, 1], [2, 3]), ([4], [5])]
    assert lists["medium"] == [([0, 1, 2], [3]), ([4], [5])]
    assert lists["hard"] == [([2], [0, 1, 3]), ([], [4, 5])]


def test_revisited_map_hand_computed():
    ranking = np.array([[3, 2, 0, 6, 1, 4, 5, 7], [4, 5, 0, 1, 2, 3, 6, 7]])
    results = revisited_map(ranking, rgt.ground_truth_from_revisited(_tiny_gnd()))
    # q0 easy: junk {2, 3} removed -> [0, 6, 1, ...]: positives at 0 and 2 -> 0.791667.
    # q1 easy/medium: 4 first -> 1.
    assert results["easy"]["mAP"] == pytest.approx((0.5 + (0.5 + 2 / 3) / 4 + 1) / 2)
    # q0 medium: junk {3} removed -> [2, 0, 6, 1]: positives at 0, 1, 3
    # -> (1 + 1 + (2/3 + 3/4)/2) / 3.
    q0_medium = (1 + 1 + (2 / 3 + 3 / 4) / 2) / 3
    assert results["medium"]["mAP"] == pytest.approx((q0_medium + 1) / 2)
    # hard: q1 has no hard positive -> skipped; q0: junk {0, 1, 3} removed, 2 first -> 1.
    assert results["hard"]["mAP"] == 1.0 and results["hard"]["num_queries"] == 1
    assert results["hard"]["num_queries_skipped"] == 1
    # P@5 for q0 medium: positions [1, 2, 4] -> k' = 4 -> 3/4; q1: [1] -> 1.
    assert results["medium"]["mP@5"] == pytest.approx((0.75 + 1) / 2)
    # The pickle's dict and its raw "gnd" list give the same numbers.
    for raw in (_tiny_gnd(), _tiny_gnd()["gnd"]):
        again = revisited_map(ranking, raw)
        for p in rgt.REVISITED_PROTOCOLS:
            assert again[p]["mAP"] == pytest.approx(results[p]["mAP"])


def test_evaluate_rankings_uses_every_protocol():
    gt = rgt.ground_truth_from_revisited(_tiny_gnd())
    ranking = np.tile(np.arange(8), (2, 1))
    assert sorted(rm.evaluate_rankings(ranking, gt)) == ["easy", "hard", "medium"]
    with pytest.raises(ValueError, match="'original' is not defined.*'easy', 'hard', 'medium'"):
        gt.lists("original")


# --------------------------------------------------------------------------- ranking


def test_rank_database_full_ranking_matches_numpy():
    rng = np.random.default_rng(2)
    db = rng.standard_normal((50, 8)).astype(np.float16)
    queries = rng.standard_normal((7, 8)).astype(np.float32)
    expected = np.argsort(-(queries.astype(np.float64) @ db.astype(np.float64).T), axis=1)
    ids = rm.rank_database(db, queries, max_bytes=1200)  # 2 queries per chunk
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(rm.rank_database(db, queries, k=5), expected[:, :5])
    tied = rm.rank_database(np.ones((4, 2), np.float32), np.ones((1, 2), np.float32))
    np.testing.assert_array_equal(tied, [[0, 1, 2, 3]])  # ties keep the lower id
    with pytest.raises(ValueError, match="NaN"):
        rm.rank_database(np.full((3, 8), np.nan, np.float32), queries)
    with pytest.raises(ValueError, match="same dim"):
        rm.rank_database(db, queries[:, :4])


# --------------------------------------------------------------------------- loaders


def _write_pickle(path, obj):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)
    return path


def test_load_revisited_gnd_round_trip(tmp_path):
    gt = rgt.load_revisited_gnd(_write_pickle(tmp_path / "gnd_rtiny5k.pkl", _tiny_gnd()))
    assert gt.name == "rtiny5k" and gt.num_db == 8 and gt.num_queries == 2
    assert gt.db_names == tuple(f"db{i}" for i in range(8)) and gt.query_names == ("db0", "db4")
    np.testing.assert_array_equal(gt.query_boxes, [[1, 2, 20, 24], [0, 0, 16, 16]])
    assert gt.image_paths("/x", ".jpg", "query") == ["/x/db0.jpg", "/x/db4.jpg"]
    again = rgt.load_ground_truth(tmp_path / "gnd_rtiny5k.pkl")
    assert again.protocols["hard"][0][0].tolist() == [2]


@pytest.mark.parametrize("edit, message", [
    (lambda g: g.pop("qimlist"), "keys 'imlist', 'qimlist', 'gnd'"),
    (lambda g: g["gnd"][1].pop("junk"), r"gnd\[1\] lacks the key\(s\) \['junk'\]"),
    (lambda g: g["gnd"][0]["hard"].append(8), r"gnd\[0\]\['hard'\] holds database id 8, outside "
                                              r"\[0, 8\)"),
    (lambda g: g["gnd"][0]["easy"].append(-1), r"gnd\[0\]\['easy'\] holds database id -1"),
    (lambda g: g["gnd"][1].update(bbx=[5, 5, 2, 9]), "x2 > x1"),
    (lambda g: g["gnd"][1].update(bbx=[5, 5, 2]), r"4 numbers \[x1, y1, x2, y2\]"),
    (lambda g: g["gnd"].pop(), "'gnd' has 1 entries for 2 query names"),
])
def test_load_revisited_gnd_errors(tmp_path, edit, message):
    cfg = _tiny_gnd()
    edit(cfg)
    with pytest.raises(ValueError, match=message):
        rgt.load_revisited_gnd(_write_pickle(tmp_path / "gnd_bad.pkl", cfg))


def test_ok_junk_pickle_gives_the_original_protocol(tmp_path):
    cfg = _tiny_gnd()
    cfg["gnd"] = [{"bbx": g["bbx"], "ok": g["easy"] + g["hard"], "junk": g["junk"]}
                  for g in cfg["gnd"]]
    gt = rgt.load_revisited_gnd(_write_pickle(tmp_path / "gnd_tiny5k.pkl", cfg))
    assert list(gt.protocols) == ["original"]
    assert [p.tolist() for p in gt.lists("original")[0]] == [[0, 1, 2], [4]]
    del cfg["gnd"][1]["ok"]
    with pytest.raises(ValueError, match=r"gnd\[1\] lacks the key\(s\) \['ok'\]"):
        rgt.ground_truth_from_revisited(cfg)


def test_load_revisited_gnd_wrong_file(tmp_path):
    (tmp_path / "text.pkl").write_text("not a pickle\n")
    with pytest.raises(ValueError, match="not a readable pickle"):
        rgt.load_revisited_gnd(tmp_path / "text.pkl")
    with pytest.raises(ValueError, match="not a revisited Oxford/Paris ground truth"):
        rgt.load_revisited_gnd(_write_pickle(tmp_path / "list.pkl", [1, 2, 3]))
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        rgt.load_revisited_gnd(tmp_path / "missing.pkl")


class _Payload:
    """Unpickling runs `open(marker, "w")`: a stand-in for any code a crafted file could run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_ground_truth_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "marker"
    cfg = _tiny_gnd()
    cfg["gnd"][0]["junk"] = _Payload(str(marker))
    path = _write_pickle(tmp_path / "gnd_evil.pkl", cfg)
    with open(path, "rb") as handle:  # the control: a plain pickle.load runs the payload
        pickle.load(handle)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ValueError, match=r"gnd_evil.pkl.*refers to (builtins|io)\.open"):
        rgt.load_revisited_gnd(path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_numpy_arrays_in_the_ground_truth_pickle_load(tmp_path, protocol):
    # revisitop's gnd_*.pkl keeps each query's easy / hard / junk ids as NumPy arrays.
    cfg = _tiny_gnd()
    for g in cfg["gnd"]:
        for key in ("easy", "hard", "junk"):
            g[key] = np.asarray(g[key], np.int64)
        g["bbx"] = np.asarray(g["bbx"], np.float64)
    path = tmp_path / "gnd_rtiny5k.pkl"
    with open(path, "wb") as handle:
        pickle.dump(cfg, handle, protocol=protocol)
    gt = rgt.load_revisited_gnd(path)
    assert [p.tolist() for p in gt.lists("medium")[0]] == [
        sorted(set(np.concatenate([g["easy"], g["hard"]]).tolist())) for g in cfg["gnd"]]


def _write_text_gt(folder):
    """Oxford-style folder for 2 queries; images in sub-folders (as Paris) with 1 distractor."""
    gt_dir, images = folder / "gt", folder / "images"
    gt_dir.mkdir()
    names = ["a/all_souls_1", "a/all_souls_2", "a/all_souls_3", "b/bodleian_1", "b/bodleian_2",
             "b/distractor"]
    for name in names:
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        (images / f"{name}.jpg").write_bytes(b"")
    files = {
        "all_souls_1_query.txt": "oxc1_all_souls_1 3.5 4 20.25 30\n",
        "all_souls_1_good.txt": "all_souls_1\nall_souls_2\n",
        "all_souls_1_ok.txt": "all_souls_3\n\n",
        "all_souls_1_junk.txt": "bodleian_2\n",
        "bodleian_1_query.txt": "bodleian_1 0 0 10 12\n",
        "bodleian_1_good.txt": "bodleian_1\n",
        "bodleian_1_ok.txt": "",
        "bodleian_1_junk.txt": "",
    }
    for name, text in files.items():
        (gt_dir / name).write_text(text)
    return gt_dir, images


def test_load_oxford_gt_round_trip(tmp_path):
    gt_dir, images = _write_text_gt(tmp_path)
    gt = rgt.load_oxford_gt(gt_dir, images)
    assert gt.name == "gt" and gt.num_db == 6 and list(gt.protocols) == ["original"]
    assert gt.db_names == ("a/all_souls_1", "a/all_souls_2", "a/all_souls_3", "b/bodleian_1",
                           "b/bodleian_2", "b/distractor")
    assert gt.query_names == ("a/all_souls_1", "b/bodleian_1")  # sorted by query name
    np.testing.assert_array_equal(gt.query_boxes, [[3.5, 4, 20.25, 30], [0, 0, 10, 12]])
    positives, junk = gt.lists("original")
    assert [p.tolist() for p in positives] == [[0, 1, 2], [3]]  # good + ok
    assert [j.tolist() for j in junk] == [[4], []]
    assert gt.image_paths(images, ".jpg")[5] == os.path.join(images, "b/distractor.jpg")
    # The same through load_ground_truth, and from explicit db names.
    assert rgt.load_ground_truth(gt_dir, images).query_names == gt.query_names
    again = rgt.load_oxford_gt(gt_dir, db_names=gt.db_names)
    assert [p.tolist() for p in again.lists("original")[0]] == [[0, 1, 2], [3]]


def test_load_oxford_gt_errors(tmp_path, caplog):
    gt_dir, images = _write_text_gt(tmp_path)
    with pytest.raises(ValueError, match="Pass `images_dir`"):
        rgt.load_oxford_gt(gt_dir)
    os.remove(images / "b/bodleian_2.jpg")
    with pytest.raises(ValueError, match="names 'bodleian_2', which is not a database image"):
        rgt.load_oxford_gt(gt_dir, images)
    with caplog.at_level("WARNING"):
        gt = rgt.load_oxford_gt(gt_dir, images, on_missing="drop")
    assert "Dropped 1 ground-truth names" in caplog.text and gt.lists("original")[1][0].size == 0
    os.remove(gt_dir / "bodleian_1_ok.txt")
    with pytest.raises(FileNotFoundError, match="bodleian_1_ok.txt' is missing"):
        rgt.load_oxford_gt(gt_dir, images, on_missing="drop")
    with pytest.raises(ValueError, match="No '\\*_query.txt' file"):
        rgt.load_oxford_gt(images, images)
    (gt_dir / "bodleian_1_ok.txt").write_text("")
    (gt_dir / "bodleian_1_query.txt").write_text("bodleian_1 0 0 10\n")
    with pytest.raises(ValueError, match="one line 'image x1 y1 x2 y2'"):
        rgt.load_oxford_gt(gt_dir, images, on_missing="drop")


# --------------------------------------------------------------------------- crops


def test_crop_box_rounding_margin_and_clipping():
    assert rm.crop_box([3.5, 4.4, 20.5, 30.6], 40, 50) == (4, 4, 21, 31)  # floor(v + 0.5)
    assert rm.crop_box([10, 10, 20, 20], 40, 50, margin=4) == (6, 6, 24, 24)
    assert rm.crop_box([10, 10, 20, 20], 25, 22, margin=8) == (2, 2, 22, 25)  # clipped (H=25, W=22)
    with pytest.raises(ValueError, match="outside the 50x40 image"):
        rm.crop_box([60, 10, 70, 20], 40, 50)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """10 coloured-shape 32x32 JPEGs and a revisited-style gnd with 3 queries (integer boxes)."""
    folder = tmp_path_factory.mktemp("rmap")
    rng = np.random.default_rng(5)
    for i in range(10):
        image = Image.new("RGB", (32, 32), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, y0 = rng.integers(0, 20, 2)
            x1, y1 = x0 + rng.integers(6, 12), y0 + rng.integers(6, 12)
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            box = [int(x0), int(y0), int(x1), int(y1)]
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        image.save(folder / f"im{i}.jpg", quality=95)
    cfg = {
        "imlist": [f"im{i}" for i in range(10)],
        "qimlist": ["im0", "im4", "im7"],
        "gnd": [
            {"bbx": [2, 3, 26, 29], "easy": [0, 1, 2], "hard": [3], "junk": [5]},
            {"bbx": [0, 0, 32, 32], "easy": [4, 8], "hard": [], "junk": [9, 0]},
            {"bbx": [8, 4, 30, 24], "easy": [7], "hard": [6, 2], "junk": []},
        ],
    }
    gnd_path = _write_pickle(folder / "gnd_rtiny.pkl", cfg)
    return folder, gnd_path, cfg


def _pil_descriptor(tiny_model, image):
    return np.asarray(tiny_model(np.asarray(image, np.float32)[None], training=False))[0]


def test_evaluate_map_matches_numpy_reference(tiny_dataset, tiny_model, tmp_path):
    folder, gnd_path, cfg = tiny_dataset
    results, ids = rm.evaluate_map(
        tiny_model, gnd_path, folder, progress=False, batch_size=4, json_path=tmp_path / "map.json",
        plot_path=tmp_path / "ap.png", retrievals_path=tmp_path / "grid.png", return_ids=True)
    # Reference: PIL decode, PIL crop of the integer boxes, direct model calls, float64 ranking.
    images = [Image.open(folder / f"im{i}.jpg").convert("RGB") for i in range(10)]
    db = np.stack([_pil_descriptor(tiny_model, im) for im in images]).astype(np.float64)
    queries = np.stack([
        _pil_descriptor(tiny_model, images[int(name[2:])].crop(tuple(g["bbx"])))
        for name, g in zip(cfg["qimlist"], cfg["gnd"])
    ]).astype(np.float64)
    scores = queries @ db.T
    order = np.argsort(-scores, axis=1, kind="stable")
    gaps = np.diff(np.take_along_axis(scores, order, axis=1), axis=1)
    assert np.abs(gaps).min() > 1e-5  # no near ties: float32 and float64 rank alike
    np.testing.assert_array_equal(ids, order)
    lists = [rgt.revisited_lists(np.array(g["easy"], int), np.array(g["hard"], int),
                                np.array(g["junk"], int)) for g in cfg["gnd"]]
    for protocol in rgt.REVISITED_PROTOCOLS:
        positives = [entry[protocol][0] for entry in lists]
        junk = [entry[protocol][1] for entry in lists]
        aps, _, mean_ap, mean_p = reference_map(order, positives, junk)
        got = results["protocols"][protocol]
        assert got["mAP"] == pytest.approx(mean_ap, abs=1e-9)
        assert [got["mP@1"], got["mP@5"], got["mP@10"]] == pytest.approx(mean_p.tolist(), abs=1e-9)
        assert got["ap"] == [None if np.isnan(a) else pytest.approx(a, abs=1e-6) for a in aps]
    assert results["protocols"]["hard"]["num_queries"] == 2  # q1 has no hard positive
    assert (results["num_db"], results["num_queries"], results["ranked"]) == (10, 3, "all")
    saved = json.loads((tmp_path / "map.json").read_text())
    assert saved["protocols"]["medium"]["mAP"] == pytest.approx(
        results["protocols"]["medium"]["mAP"])
    assert saved["dataset"] == "rtiny" and saved["image_size"] == "keep"
    for png in ("ap.png", "grid.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = rm.format_map_table(results)
    assert table.splitlines()[0].split() == ["protocol", "queries", "mAP", "mP@1", "mP@5", "mP@10"]
    assert len(table.splitlines()) == 4


def test_query_crops_margin_and_resize_modes(tiny_dataset, tiny_model):
    folder, gnd_path, cfg = tiny_dataset
    gt = rgt.load_revisited_gnd(gnd_path)
    crop = rm.extract_query_descriptors(tiny_model, gt, folder, progress=False)
    image_first = rm.extract_query_descriptors(tiny_model, gt, folder, query_resize="image",
                                               progress=False)
    np.testing.assert_allclose(crop, image_first, atol=1e-6)  # full resolution: the same pixels
    # A 2-pixel margin: q0's box [2, 3, 26, 29] becomes [0, 1, 28, 31].
    grown = rm.extract_query_descriptors(tiny_model, gt, folder, box_margin=2, progress=False)
    image = Image.open(folder / "im0.jpg").convert("RGB").crop((0, 1, 28, 31))
    np.testing.assert_allclose(grown[0], _pil_descriptor(tiny_model, image), atol=1e-5)
    whole = rm.extract_query_descriptors(tiny_model, gt, folder, crop_queries=False, progress=False)
    np.testing.assert_allclose(whole[1], crop[1], atol=1e-6)  # q1's box is the whole image
    assert np.abs(whole[0] - crop[0]).max() > 1e-3
    # Max side 16: "crop" resizes the 24x26 crop to 15x16; "image" resizes the image to 16x16 and
    # crops the halved box [1, 1.5, 13, 14.5] -> pixels x 1..12, y 2..14.
    from tf_netvlad.data import pipelines
    from tf_netvlad.data.images import resize_image

    small_crop = rm.extract_query_descriptors(tiny_model, gt, folder, image_size=16, progress=False)
    pixels = np.asarray(Image.open(folder / "im0.jpg").convert("RGB").crop((2, 3, 26, 29)))
    reference = resize_image(pixels, 16).numpy()
    assert reference.shape == (16, 15, 3)
    np.testing.assert_allclose(small_crop[0], _pil_descriptor(tiny_model, reference), atol=1e-5)
    small_image = rm.extract_query_descriptors(tiny_model, gt, folder, image_size=16,
                                               query_resize="image", progress=False)
    whole_small = pipelines.load_image(str(folder / "im0.jpg"), 16).numpy()[2:15, 1:13]
    np.testing.assert_allclose(small_image[0], _pil_descriptor(tiny_model, whole_small), atol=1e-5)
    with pytest.raises(ValueError, match="query_resize"):
        rm.extract_query_descriptors(tiny_model, gt, folder, query_resize="stretch", progress=False)


def test_evaluate_map_missing_image_is_named(tiny_dataset, tiny_model, tmp_path):
    from tf_netvlad.data.pipelines import ImageReadError

    _, gnd_path, _ = tiny_dataset
    with pytest.raises(ImageReadError, match="im0.jpg"):
        rm.evaluate_map(tiny_model, gnd_path, tmp_path, progress=False)


def test_cli_evaluate_map_prints_the_table_and_writes_the_same_numbers(tiny_dataset, tiny_model,
                                                                       tmp_path, capsys):
    from tf_netvlad.cli import main

    folder, gnd_path, _ = tiny_dataset
    model_path = tmp_path / "m.keras"
    tiny_model.save(model_path)
    expected = rm.evaluate_map(tiny_model, gnd_path, folder, progress=False, box_margin=2)
    out_json = tmp_path / "cli.json"
    assert main.main(["evaluate-map", "--model", str(model_path), "--gt", str(gnd_path),
                     "--images", str(folder), "--box-margin", "2", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out_json.read_text())
    for protocol in rgt.REVISITED_PROTOCOLS:
        assert saved["protocols"][protocol]["mAP"] == pytest.approx(
            expected["protocols"][protocol]["mAP"], abs=1e-9)
    assert printed.splitlines()[0].split()[:3] == ["protocol", "queries", "mAP"]
    assert f"json: {out_json}" in printed
    assert main.main(["evaluate-map", "--model", str(model_path), "--gt", str(tmp_path / "no.pkl"),
                     "--images", str(folder)]) == 2
    assert "no.pkl" in capsys.readouterr().err
