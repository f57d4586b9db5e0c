"""Tests for tf_netvlad.demo.dataset: determinism, split files, geometry, raw-pixel hardness."""

import dataclasses
import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tf_netvlad.data import places
from tf_netvlad.demo import dataset

SCALE = 0.15  # 5 + 2 + 3 streets of 63 / 45 / 45 m: 180 db images, 375 + 45 + 22 queries
TINY = 0.01  # streets of 30 m: 100 db images, 25 + 5 + 5 queries


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "data"
    return dataset.generate_demo_data(out, seed=0, scale=SCALE, progress=False)


def _tree_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_module_does_not_import_tensorflow():
    code = "import sys, tf_netvlad.demo.dataset; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_outputs_and_split_files(demo):
    root = demo["root"]
    assert set(demo) >= {"root", "manifest", "readme", "train_mat", "test_csv", "val_mat"}
    manifest = json.loads(demo["manifest"].read_text())
    assert manifest["seed"] == 0 and manifest["file_count"] == len(_tree_files(root))
    assert "night" in demo["readme"].read_text()
    for name in ("train", "val", "test"):
        from_mat = places.load_split(demo[f"{name}_mat"])
        from_csv = places.load_split(demo[f"{name}_csv"])
        from_dir = places.load_split(root / "images" / name)  # @-named files
        assert from_mat.db_paths == from_csv.db_paths
        np.testing.assert_allclose(from_mat.db_utm, from_csv.db_utm)
        np.testing.assert_allclose(np.sort(from_dir.db_utm, 0), np.sort(from_mat.db_utm, 0), atol=0.006)
        assert from_mat.pos_dist_thr == 25.0 and from_mat.non_triv_pos_dist_sq_thr == 100.0
        assert manifest["splits"][name] == {"db": from_mat.num_db, "queries": from_mat.num_queries}
        # every query has a positive within 25 m and a non-trivial one within 10 m
        assert len(from_mat.queries_without_positives()) == 0
        assert min(len(p) for p in from_mat.non_trivial_positives()) >= 1
        tokens = [set(c.split(";")) for c in from_csv.query_conditions]
        assert all(len(t & {"day", "dusk", "night"}) == 1 for t in tokens)
        assert all(len(t & {"summer", "autumn", "winter"}) == 1 for t in tokens)
        img = Image.open(from_mat.query_image_paths()[0])
        assert img.size == (128, 96) and img.mode == "RGB" and img.format == "JPEG"
    conds = [c for n in ("train", "val", "test") for c in places.load_split(demo[f"{n}_csv"]).query_conditions]
    for token in ("day", "dusk", "night", "summer", "autumn", "winter", "occluded"):
        assert any(token in c.split(";") for c in conds), token


def test_splits_are_far_apart(demo):
    pts = {}
    for name in ("train", "val", "test"):
        s = places.load_split(demo[f"{name}_mat"])
        pts[name] = np.concatenate([s.db_utm, s.query_utm])
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        d = np.linalg.norm(pts[a][:, None] - pts[b][None], axis=2)
        assert d.min() > 1000, (a, b, d.min())


def test_same_seed_identical_other_seed_differs_and_rerun_is_noop(tmp_path):
    (tmp_path / ".again.tmp-4999999").mkdir()  # left by an interrupted run (dead pid)
    demo = dataset.generate_demo_data(tmp_path / "first", seed=0, scale=TINY, progress=False)
    again = dataset.generate_demo_data(tmp_path / "again", seed=0, scale=TINY, progress=False)
    files = _tree_files(demo["root"])
    assert files == _tree_files(again["root"])
    match, mismatch, errors = filecmp.cmpfiles(demo["root"], again["root"], files, shallow=False)
    assert not mismatch and not errors and len(match) == len(files)

    # rerun on a complete dataset: nothing is rewritten
    mtimes = {f: os.stat(again["root"] / f).st_mtime_ns for f in files}
    dataset.generate_demo_data(tmp_path / "again", seed=0, scale=TINY, progress=False)
    assert {f: os.stat(again["root"] / f).st_mtime_ns for f in files} == mtimes

    # an incomplete dataset is regenerated; a different seed replaces it with different images
    os.remove(again["root"] / files[-1])
    dataset.generate_demo_data(tmp_path / "again", seed=0, scale=TINY, progress=False)
    assert _tree_files(again["root"]) == files
    other = dataset.generate_demo_data(tmp_path / "again", seed=1, scale=TINY, progress=False)
    assert json.loads(other["manifest"].read_text())["seed"] == 1
    new_files = _tree_files(other["root"])
    for sub in ("images/test/queries", "images/test/database"):
        a = [f for f in files if f.startswith(sub)][0]
        b = [f for f in new_files if f.startswith(sub)][0]
        assert a != b  # positions differ, hence the @-names
        assert not np.array_equal(np.asarray(Image.open(demo["root"] / a)),
                                  np.asarray(Image.open(other["root"] / b)))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_refuses_foreign_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a tf_netvlad demo dataset"):
        dataset.generate_demo_data(tmp_path, scale=SCALE, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match=r"image_size.*\(8, 8\)"):
        dataset.generate_demo_data(tmp_path / "x", image_size=(8, 8))


def test_raw_pixel_recall_is_exact_on_identical_images_and_low_on_queries(demo):
    split = places.load_split(demo["train_mat"])
    # queries replaced by db images: every query retrieves itself -> recall 1
    idx = np.arange(0, split.num_db, 7)
    same = dataclasses.replace(split, query_paths=[split.db_paths[i] for i in idx],
                               query_utm=split.db_utm[idx], query_conditions=None)
    assert dataset.raw_pixel_recall(same, ns=(1,)) == {1: 1.0}
    recall = dataset.raw_pixel_recall(split, ns=(1, 5, 10))
    assert recall[1] <= recall[5] <= recall[10]
    # hard for raw pixels even on this small split (chance level ~ 16 positives / 105 db)
    assert recall[1] < 0.45, recall


@pytest.mark.slow
def test_full_size_dataset_is_hard_for_raw_pixels(tmp_path):
    paths = dataset.generate_demo_data(tmp_path / "full", progress=False)
    test = places.load_split(paths["test_mat"])
    assert (test.num_db, test.num_queries) == (300, 150)
    recall = dataset.raw_pixel_recall(test)
    assert recall[1] <= 0.3, recall
