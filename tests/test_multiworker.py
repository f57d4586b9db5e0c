"""Multi-worker training (MultiWorkerMirroredStrategy): the per-replica tuple input, and two real
worker processes on localhost against a single-process run."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_netvlad.tuples import ERROR_MARKER, TuplePipeline

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- per-replica input


@pytest.fixture
def colour_images(tmp_path):
    """8 PNG images of 6x8 pixels, image k filled with the value 10*k (lossless)."""
    paths = []
    for k in range(8):
        path = tmp_path / f"img{k}.png"
        Image.fromarray(np.full((6, 8, 3), 10 * k, np.uint8)).save(path)
        paths.append(path.name)
    return tmp_path, paths


def _values(images):
    return images.reshape(images.shape[:-3] + (-1,)).mean(axis=-1)


def _replica_batches(pipe, workers, worker, replicas=None):
    context = tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=worker,
                                         num_replicas_in_sync=replicas or workers)
    return list(pipe.replica_dataset(context).as_numpy_iterator())


ROWS = np.array([[0, 1, -1, 5, 6, 7], [2, 3, 4, 0, 1, 2], [1, 7, 6, 3, 4, 5], [3, 0, -1, 1, 2, 4],
                 [4, 5, 6, 7, 0, 1]])


def test_replica_batches_split_each_global_batch_in_single_device_order(colour_images):
    root, paths = colour_images
    pipe = TuplePipeline(paths[:5], paths, root, (6, 8), num_rows=6, num_positives=2, num_negatives=3,
                         batch_size=4)
    pipe.assign(ROWS)  # 5 rows: global batches of 4 and 1 rows
    single = list(pipe.dataset().as_numpy_iterator())
    w0, w1 = _replica_batches(pipe, 2, 0), _replica_batches(pipe, 2, 1)
    assert len(w0) == len(w1) == len(single) == 2  # same number of steps on every worker
    assert all(len(b["query"]) == 2 for b in w0 + w1)  # S = ceil(4 / 2) rows on every replica
    for step in range(2):
        joined = {k: np.concatenate([w0[step][k], w1[step][k]]) for k in w0[step]}
        real = joined["positive_mask"].max(axis=1) > 0  # padding rows have no positive
        for key in single[step]:
            np.testing.assert_array_equal(joined[key][real], single[step][key])
    np.testing.assert_array_equal(_values(w0[0]["query"]), [0, 20])  # rows 0, 1 on replica 0
    np.testing.assert_array_equal(_values(w1[0]["query"]), [10, 30])  # rows 2, 3 on replica 1
    np.testing.assert_array_equal(_values(w0[1]["query"]), [40, 0])  # row 4, then padding
    assert w1[1]["positive_mask"].max() == 0 and w1[1]["negatives"].max() == 0  # padding only
    # an odd batch size: S = 2 of 3 rows on replica 0, 1 row + padding on replica 1
    pipe3 = TuplePipeline(paths[:5], paths, root, (6, 8), num_rows=6, num_positives=2, num_negatives=3,
                          batch_size=3)
    pipe3.assign(ROWS)
    q0 = [_values(b["query"]).tolist() for b in _replica_batches(pipe3, 2, 0)]
    q1 = [list(b["positive_mask"].max(axis=1)) for b in _replica_batches(pipe3, 2, 1)]
    assert q0 == [[0, 20], [30, 40]] and q1 == [[1, 0], [0, 0]]  # rows 0 1 | 2 -, then 3 4 | - -


def test_replica_batches_resume_mid_epoch_and_two_local_replicas(colour_images):
    root, paths = colour_images
    pipe = TuplePipeline(paths[:5], paths, root, (6, 8), num_rows=6, num_positives=2, num_negatives=3,
                         batch_size=2)
    pipe.assign(ROWS, start_row=2)  # rows 2, 3, 4
    w0, w1 = _replica_batches(pipe, 2, 0), _replica_batches(pipe, 2, 1)
    assert [_values(b["query"]).tolist() for b in w0] == [[10], [40]]
    assert [_values(b["query"]).tolist() for b in w1] == [[30], [0]]
    assert w1[1]["positive_mask"].max() == 0
    # 2 workers x 2 local replicas, batch 4: worker 1 feeds replicas 2 and 3 (one row each)
    pipe = TuplePipeline(paths[:5], paths, root, (6, 8), num_rows=6, num_positives=2, num_negatives=3,
                         batch_size=4)
    pipe.assign(ROWS)
    w1 = _replica_batches(pipe, 2, 1, replicas=4)
    assert [_values(b["query"]).tolist() for b in w1] == [[10], [30], [0], [0]]


def test_replica_batches_bad_image_skip_masks_the_tuple_and_stop_names_the_file(colour_images):
    root, paths = colour_images
    (root / paths[6]).write_bytes(b"not a png")
    for mode in ("skip", "stop"):
        pipe = TuplePipeline(paths[:5], paths, root, (6, 8), num_rows=6, num_positives=2, num_negatives=3,
                             batch_size=4, on_bad_image=mode)
        pipe.assign(ROWS)  # rows 0, 2 and 4 use img6; worker 1 holds rows 2 and 3
        if mode == "skip":
            w1 = _replica_batches(pipe, 2, 1)
            assert len(w1) == 2 and [list(b["positive_mask"].max(axis=1)) for b in w1] == [[0, 1], [0, 0]]
            np.testing.assert_array_equal(_values(w1[0]["query"]), [0, 30])  # row 2 masked, row 3 kept
            np.testing.assert_array_equal(_values(w1[0]["negatives"][0]), [0, 0, 0])
            np.testing.assert_array_equal(_values(w1[0]["negatives"][1]), [10, 20, 40])
            assert pipe.skipped == 1
        else:
            with pytest.raises(tf.errors.InvalidArgumentError, match=f"{ERROR_MARKER} row=2") as info:
                _replica_batches(pipe, 2, 1)
            assert "img6.png" in pipe.describe_failure(info.value)
