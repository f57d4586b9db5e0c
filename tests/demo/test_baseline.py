"""Tests for tf_netvlad.demo.baseline: raw-pixel thumbnails retrieve exactly what they should,
and the generated queries are hard for them."""

import dataclasses

import numpy as np
import pytest

from tf_netvlad.data import split_loading
from tf_netvlad.demo import baseline, dataset


def test_raw_pixel_recall_is_exact_on_identical_images_and_low_on_queries(demo):
    split = split_loading.load_split(demo["train_mat"])
    # queries replaced by db images: every query retrieves itself -> recall 1
    idx = np.arange(0, split.num_db, 7)
    same = dataclasses.replace(split, query_paths=[split.db_paths[i] for i in idx],
                               query_utm=split.db_utm[idx], query_conditions=None)
    assert baseline.raw_pixel_recall(same, ns=(1,)) == {1: 1.0}
    recall = baseline.raw_pixel_recall(split, ns=(1, 5, 10))
    assert recall[1] <= recall[5] <= recall[10]
    # hard for raw pixels even on this small split (chance level ~ 16 positives / 105 db)
    assert recall[1] < 0.45, recall


@pytest.mark.slow
def test_full_size_dataset_is_hard_for_raw_pixels(tmp_path):
    paths = dataset.generate_demo_data(tmp_path / "full", progress=False, workers=2)  # same files as 1
    test = split_loading.load_split(paths["test_mat"])
    assert (test.num_db, test.num_queries) == (300, 150)
    recall = baseline.raw_pixel_recall(test)
    assert recall[1] <= 0.3, recall


def test_grey_and_rgb_thumbnails_in_one_read_equal_one_mode_at_a_time(demo, monkeypatch):
    from PIL import Image

    split = split_loading.load_split(demo["test_mat"])
    separate = {"grey": baseline.raw_pixel_recall(split, ns=(1, 5), grey=True),
                "rgb": baseline.raw_pixel_recall(split, ns=(1, 5), grey=False)}
    assert separate["grey"] != separate["rgb"]  # two different baselines, not one computed twice
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    both = baseline.raw_pixel_recalls(split, ns=(1, 5), modes=("grey", "rgb"))
    assert both == separate
    images = split.db_image_paths() + split.query_image_paths()
    assert sorted(opened) == sorted(str(p) for p in images)  # every image opened once, for both modes
    with pytest.raises(ValueError, match="Unknown thumbnail modes"):
        baseline.raw_pixel_recalls(split, modes=("hsv",))
