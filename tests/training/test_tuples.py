"""The tuple tf.data pipeline: contents, masks, table refresh, row ranges and bad images."""

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import mean_values
from tf_netvlad.training.tuples import TuplePipeline


def test_elements_follow_the_table(colour_images):
    root, paths = colour_images
    pipe = TuplePipeline(paths[:3], paths, root, (6, 8), num_rows=4, num_positives=2,
                         num_negatives=3, batch_size=2)
    rows = np.array([[0, 1, -1, 5, 6, 7], [2, 3, 4, 0, 1, 2], [1, 7, 6, 3, 4, 5]])
    pipe.assign(rows)
    batches = list(pipe.dataset().as_numpy_iterator())
    assert [len(b["query"]) for b in batches] == [2, 1]
    first = batches[0]
    assert first["query"].shape == (2, 6, 8, 3) and first["query"].dtype == np.float32
    assert first["positives"].shape == (2, 2, 6, 8, 3) and first["negatives"].shape == (2, 3, 6, 8, 3)
    np.testing.assert_array_equal(mean_values(first["query"]), [0, 20])
    np.testing.assert_array_equal(mean_values(first["positives"]), [[10, 0], [30, 40]])  # padding is black
    np.testing.assert_array_equal(first["positive_mask"], [[1, 0], [1, 1]])
    np.testing.assert_array_equal(mean_values(first["negatives"]), [[50, 60, 70], [0, 10, 20]])
    np.testing.assert_array_equal(mean_values(batches[1]["negatives"]), [[30, 40, 50]])


@pytest.mark.parametrize("from_memory", [False, True])
def test_reassigned_table_and_start_row_reach_the_next_iteration(colour_images, from_memory):
    from tf_netvlad.data.decoded import DecodedImages

    root, paths = colour_images
    images = DecodedImages.load(paths, root, (6, 8)) if from_memory else None
    pipe = TuplePipeline(paths, paths, root, (6, 8), num_rows=3, num_positives=1, num_negatives=1,
                         batch_size=1, images=images)
    ds = pipe.dataset()  # built once, iterated per epoch like keras.fit
    pipe.assign([[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    assert [int(mean_values(b["query"])[0]) for b in ds.as_numpy_iterator()] == [0, 10, 20]
    pipe.assign([[5, 1, 2], [6, 2, 3], [7, 3, 4]], start_row=1)
    assert [int(mean_values(b["query"])[0]) for b in ds.as_numpy_iterator()] == [60, 70]
    pipe.assign([[4, 1, 2]])
    assert [int(mean_values(b["query"])[0]) for b in ds.as_numpy_iterator()] == [40]


def _corrupt(root, name):
    (root / name).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")


def test_bad_image_skip_pads_the_tuple_in_place_and_counts_it(colour_images):
    root, paths = colour_images
    _corrupt(root, paths[3])
    pipe = TuplePipeline(paths, paths, root, (6, 8), num_rows=5, num_positives=1, num_negatives=2,
                         batch_size=2, on_bad_image="skip")
    rows = [[0, 1, 2, 4], [1, 2, 3, 5], [2, 4, 5, 6], [5, 6, 7, 3], [6, 1, 2, 4]]  # rows 1 and 3 use img3
    pipe.assign(rows)
    batches = list(pipe.dataset().as_numpy_iterator())
    assert [len(b["query"]) for b in batches] == [2, 2, 1]  # every row keeps its slot
    queries = np.concatenate([mean_values(b["query"]) for b in batches])
    masks = np.concatenate([b["positive_mask"][:, 0] for b in batches])
    negatives = np.concatenate([mean_values(b["negatives"]) for b in batches])
    np.testing.assert_array_equal(queries, [0, 0, 20, 0, 60])  # failed rows are black padding
    np.testing.assert_array_equal(masks, [1, 0, 1, 0, 1])  # ... with no positive: they train nothing
    np.testing.assert_array_equal(negatives[[1, 3]], 0)
    assert pipe.skipped == 2
    # a run resumed after one step (2 rows) reads exactly the batches the whole run read next
    pipe.assign(rows, start_row=2)
    resumed = list(pipe.dataset().as_numpy_iterator())
    assert len(resumed) == 2
    for got, want in zip(resumed, batches[1:]):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert pipe.skipped == 3


def test_bad_image_stop_names_the_file(colour_images):
    root, paths = colour_images
    _corrupt(root, paths[6])
    pipe = TuplePipeline(paths, paths, root, (6, 8), num_rows=3, num_positives=1, num_negatives=1,
                         batch_size=1)
    pipe.assign([[0, 1, 2], [1, 2, 3], [2, 3, 6]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="TUPLE_IMAGE_ERROR row=2") as info:
        list(pipe.dataset().as_numpy_iterator())
    message = pipe.describe_failure(info.value)
    assert "img6.png" in message and "img3.png" not in message and "decoded" in message


def test_bad_arguments_are_named(colour_images):
    root, paths = colour_images
    with pytest.raises(ValueError, match="fixed image size"):
        TuplePipeline(paths, paths, root, 64, num_rows=2)
    with pytest.raises(ValueError, match="on_bad_image"):
        TuplePipeline(paths, paths, root, (6, 8), num_rows=2, on_bad_image="ignore")
    pipe = TuplePipeline(paths, paths, root, (6, 8), num_rows=2, num_positives=1, num_negatives=1)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        pipe.assign(np.zeros((3, 3), np.int64))
    with pytest.raises(ValueError, match="at least one positive"):
        pipe.assign([[0, -1, 2]])


def test_filler_negatives_are_loaded_and_masked(colour_images):
    """Mining writes a negative that did not violate the margin as -2 - id (`mark_fillers`): the
    pipeline loads that image and gives it `negative_mask` 0; plain ids have mask 1."""
    root, paths = colour_images
    pipe = TuplePipeline(paths, paths, root, (6, 8), num_rows=2, num_positives=1, num_negatives=3,
                         batch_size=2)
    pipe.assign([[0, 1, 5, -2 - 6, -2 - 0], [2, 3, 4, 7, 6]])  # row 0: db 6 and db 0 are fillers
    (batch,) = list(pipe.dataset().as_numpy_iterator())
    np.testing.assert_array_equal(mean_values(batch["negatives"]), [[50, 60, 0], [40, 70, 60]])
    np.testing.assert_array_equal(batch["negative_mask"], [[1, 0, 0], [1, 1, 1]])
    assert batch["negative_mask"].dtype == np.float32
    with pytest.raises(ValueError, match="filler negative is -2 - id"):
        pipe.assign([[0, 1, 5, -1, 2]])  # -1 is no db id and no filler


def test_declared_length_is_the_cycle_and_fit_never_runs_out_of_data(colour_images, capsys):
    import warnings

    import keras

    from tf_netvlad.models.model import build_model

    root, paths = colour_images
    pipe = TuplePipeline(paths, paths, root, (8, 8), num_rows=8, num_positives=1, num_negatives=2,
                         batch_size=2)
    pipe.assign([[q, (q + 1) % 8, (q + 3) % 8, (q + 5) % 8] for q in range(7)])  # 7 rows: 4 batches
    assert pipe.num_batches == 4 and pipe.dataset().cardinality() == tf.data.UNKNOWN_CARDINALITY
    assert pipe.dataset(num_batches=pipe.num_batches).cardinality() == 4
    pipe.assign(pipe.rows, start_row=3)  # a cycle resumed after 3 rows: 4 rows left, 2 batches
    assert pipe.num_batches == 2 and len(list(pipe.dataset(num_batches=2).as_numpy_iterator())) == 2
    with pytest.raises(ValueError, match="num_batches"):
        pipe.dataset(num_batches=0)

    keras.utils.set_random_seed(0)
    model = build_model("tiny", num_clusters=2)
    model.compile(optimizer=keras.optimizers.SGD(0.01))

    def fit(dataset):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = model.fit(dataset, epochs=1, verbose=1)
        out = capsys.readouterr().out
        return history, out, [str(w.message) for w in caught]

    history, out, caught = fit(pipe.dataset(num_batches=pipe.num_batches))
    assert not [w for w in caught if "ran out of data" in w] and "ran out of data" not in out
    assert "2/2" in out and "Unknown" not in out  # Keras knew the length: n/N steps
    assert int(model.optimizer.iterations.numpy()) == 2 and len(history.history["loss"]) == 1
    # the same epoch without a declared length: Keras shows Unknown and warns at its end
    _, out, caught = fit(pipe.dataset())
    assert [w for w in caught if "ran out of data" in w]


def test_augmentation_is_per_image_per_cycle_and_repeatable(colour_images):
    from tf_netvlad.training.augment import Augmentation

    root, paths = colour_images
    brightness = Augmentation(min_crop=1.0, brightness=0.1, contrast=0.0, saturation=0.0, hue=0.0)
    pipe = TuplePipeline(paths, paths, root, (6, 8), num_rows=2, num_positives=1, num_negatives=2,
                         batch_size=2, augmentation=brightness, seed=5, augment_all_slots=True)
    plain = TuplePipeline(paths, paths, root, (6, 8), num_rows=2, num_positives=1, num_negatives=2,
                          batch_size=2)
    query_only = TuplePipeline(paths, paths, root, (6, 8), num_rows=2, num_positives=1, num_negatives=2,
                               batch_size=2, augmentation=brightness, seed=5)
    rows = [[1, 2, 3, 4], [5, 2, 3, 4]]

    def images(p, cycle):
        p.assign(rows, cycle=cycle)
        b = next(p.dataset().as_numpy_iterator())
        return np.concatenate([b["query"][:, None], b["positives"], b["negatives"]], axis=1)

    base = images(plain, 0)
    first, again, later = images(pipe, 0), images(pipe, 0), images(pipe, 1)
    np.testing.assert_array_equal(first, again)  # same cycle, same rows: the same draws
    shift = (first - base).reshape(2, 4, -1)
    # a uniform image stays uniform under a brightness change, shifted by at most 0.1 * 255
    assert np.ptp(shift, axis=-1).max() < 1e-3 and np.abs(shift).max() <= 25.5 + 1e-3
    # every image of the batch has its own draw, even the same db image in two rows (slots 1-3)
    assert len(np.unique(np.round(shift[..., 0], 3))) == 8
    assert np.abs(later - first).max() > 0.1  # another cycle, other draws
    # the default changes the query slot only, by the draw the query gets when every slot changes;
    # the positives and negatives are the images as read
    only = images(query_only, 0)
    np.testing.assert_allclose(only[:, 0], first[:, 0], atol=1e-4)
    np.testing.assert_array_equal(only[:, 1:], base[:, 1:])
    assert np.abs(only[:, 0] - base[:, 0]).min() > 0.1


def _pipelines(root, paths, images, **kwargs):
    """The same TuplePipeline reading the files, and reading `images` (decoded in memory)."""
    args = (paths[:5], paths, root, (6, 8))
    return TuplePipeline(*args, **kwargs), TuplePipeline(*args, images=images, **kwargs)


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_tuples_from_memory_equal_tuples_from_the_files(colour_images, dtype):
    """Same rows, same batches (fillers, padding and augmentation included), from images held as
    float32 or (files already at the size) as uint8."""
    from tf_netvlad.data.decoded import DecodedImages
    from tf_netvlad.training.augment import Augmentation

    root, paths = colour_images
    images = DecodedImages.load(list(paths) + list(paths[:5]), root, (6, 8), dtype=dtype)
    assert images.pixels.dtype == dtype
    rows = [[0, 1, -1, 5, -2 - 6, 7], [4, 3, 2, 0, 1, 2], [2, 7, 6, -2 - 3, 4, 5]]
    for augmentation, all_slots in ((None, False), (Augmentation(), False), (Augmentation(), True)):
        files, memory = _pipelines(root, paths, images, num_rows=3, num_positives=2, num_negatives=3,
                                   batch_size=2, augmentation=augmentation, seed=3,
                                   augment_all_slots=all_slots)
        for pipe in (files, memory):
            pipe.assign(rows, cycle=1)
        got, want = list(memory.dataset().as_numpy_iterator()), list(files.dataset().as_numpy_iterator())
        assert len(got) == len(want) == 2
        for pipe in (files, memory):  # a run resumed after one step of this epoch
            pipe.assign(rows, start_row=1, cycle=1)
        got += list(memory.dataset().as_numpy_iterator())
        want += list(files.dataset().as_numpy_iterator())
        assert [len(b["query"]) for b in got] == [len(b["query"]) for b in want] == [2, 1, 2]
        if augmentation is None:  # by hand: image k is filled with 10 k
            np.testing.assert_array_equal(mean_values(got[0]["query"]), [0, 40])
            np.testing.assert_array_equal(mean_values(got[0]["negatives"]), [[50, 60, 70], [0, 10, 20]])
            np.testing.assert_array_equal(got[0]["negative_mask"], [[1, 0, 1], [1, 1, 1]])
        for g, w in zip(got, want):
            for key in w:
                np.testing.assert_allclose(g[key], w[key], atol=1e-4, err_msg=key)
    with pytest.raises(ValueError, match=r"decoded images are \(6, 8\); the tuples need \(12, 16\)"):
        TuplePipeline(paths, paths, root, (12, 16), num_rows=2, images=images)


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_a_failed_image_in_memory_fails_its_tuple_as_a_failed_file_does(colour_images, dtype):
    from tf_netvlad.data.decoded import DecodedImages

    root, paths = colour_images
    _corrupt(root, paths[3])
    images = DecodedImages.load(paths, root, (6, 8), dtype=dtype)
    rows = [[0, 1, 2, 4], [1, 2, 3, 5], [2, 4, 5, 6]]  # row 1 uses img3
    skip = TuplePipeline(paths, paths, root, (6, 8), num_rows=3, num_positives=1, num_negatives=2,
                         batch_size=3, on_bad_image="skip", images=images)
    skip.assign(rows)
    (batch,) = list(skip.dataset().as_numpy_iterator())
    np.testing.assert_array_equal(mean_values(batch["query"]), [0, 0, 20])  # row 1: black padding
    np.testing.assert_array_equal(batch["positive_mask"][:, 0], [1, 0, 1])
    assert skip.skipped == 1
    # the batch's second row failed: the error names it, not the batch's first row
    stop = TuplePipeline(paths, paths, root, (6, 8), num_rows=3, num_positives=1, num_negatives=2,
                         batch_size=3, images=images)
    stop.assign(rows)
    with pytest.raises(tf.errors.InvalidArgumentError, match="TUPLE_IMAGE_ERROR row=1:") as info:
        list(stop.dataset().as_numpy_iterator())
    message = stop.describe_failure(info.value)
    assert "img3.png" in message and "img2.png" not in message and "decoded" in message


def test_the_pipelines_run_without_tf_data_autotuning(colour_images):
    """With autotuning on, deleting an iterator waited for tf.data's autotuning thread: a `fit` call
    ended up to 2.3 s late (benchmarks/RESULTS.md, "A step inside `fit`"); so did extraction's
    `data.pipelines.image_dataset`."""
    from tf_netvlad.data.decoded import DecodedImages
    from tf_netvlad.data.pipelines import image_dataset

    root, paths = colour_images
    images = DecodedImages.load(paths, root, (6, 8))
    for memory in (None, images):
        pipe = TuplePipeline(paths, paths, root, (6, 8), num_rows=2, num_positives=1, num_negatives=1,
                             batch_size=2, images=memory)
        pipe.assign([[0, 1, 2], [1, 2, 3]])
        for ds in (pipe.dataset(), pipe.dataset(num_batches=1),
                   pipe.replica_dataset(tf.distribute.InputContext(1, 0, 1))):
            assert ds.options().autotune.enabled is False
            assert len(list(ds.as_numpy_iterator())) == 1
    ds = image_dataset(paths, root, (6, 8), batch_size=4)
    assert ds.options().autotune.enabled is False
    assert [len(batch) for batch in ds.as_numpy_iterator()] == [4, 4]
