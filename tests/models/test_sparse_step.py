"""`sparse_backward`: the training step back-propagates only through the images that train.

Which images have a gradient is checked on hand-made 2-D descriptors; the step itself against the
full step (the same loss and gradients, the same weights after `fit`), through both of its paths.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_netvlad.models.model import SPARSE_MAX_VIOLATING, NetVLADModel, build_model

# Hand-made descriptors (margin 0.3), `_tuple_images` order: queries, positives, negatives.
# Query 0 = (1, 0): positives (1, 0) d² = 0 and (0, 1) d² = 2; negatives (0, 1) d² = 2 (hinge
# 0 + 0.3 - 2 < 0), (1, 0.5) d² = 0.25 (hinge 0.05 > 0) and (-1, 0) d² = 4.
# Query 1 = (0, 1): positives (1, 0) d² = 2 and (0, 1) d² = 0; negatives at d² 2, 2 and 4: no hinge.
QUERIES = [[1, 0], [0, 1]]
POSITIVES = [[[1, 0], [0, 1]], [[1, 0], [0, 1]]]
NEGATIVES = [[[0, 1], [1, 0.5], [-1, 0]], [[1, 0], [-1, 0], [0, -1]]]
# flat rows: q0 0, q1 1, q0's positives 2 3, q1's 4 5, q0's negatives 6 7 8, q1's 9 10 11


def _rows(model, queries=QUERIES, positives=POSITIVES, negatives=NEGATIVES, positive_mask=None):
    x = {"query": tf.zeros((2, 1, 1, 3)), "positives": tf.zeros((2, 2, 1, 1, 3)),
         "negatives": tf.zeros((2, 3, 1, 1, 3))}
    if positive_mask is not None:
        x["positive_mask"] = tf.constant(positive_mask, tf.float32)
    flat = np.concatenate([np.reshape(queries, (-1, 2)), np.reshape(positives, (-1, 2)),
                           np.reshape(negatives, (-1, 2))]).astype("float32")
    return model._images_with_gradient(x, tf.constant(flat)).numpy().tolist()


@pytest.fixture(scope="module")
def model():
    return build_model("tiny", num_clusters=4, margin=0.3)


def test_images_with_a_gradient_hand_computed(model):
    # q0 has one violating negative (row 7): q0, its best positive (row 2) and that negative.
    assert _rows(model) == [0, 2, 7]
    # Two positives at the minimum share the min's gradient: both train.
    tied = [[[1, 0], [1, 0]], POSITIVES[1]]
    assert _rows(model, positives=tied) == [0, 2, 3, 7]
    # Masked positive 0 of q0: the best is (0, 1) at d² = 2, so (0, 1) and (1, 0.5) violate
    # (hinges 0.3 and 2.05); q1 still has none.
    assert _rows(model, positive_mask=[[0, 1], [1, 1]]) == [0, 3, 6, 7]
    # q1 violating instead of q0 ((0.5, 1) at d² 0.25 from q1; q0's negatives at d² 4, 2, 2): q1,
    # its best positive (row 5) and that negative (row 9); the first query is always included,
    # so that the list is never empty.
    far_from_q0 = [[-1, 0], [0, -1], [0, 1]]
    assert _rows(model, negatives=[far_from_q0, [[0.5, 1], [-1, 0], [0, -1]]]) == [0, 1, 5, 9]
    assert _rows(model, negatives=[far_from_q0, NEGATIVES[1]]) == [0]


def _batch(seed=0, size=(24, 32)):
    rng = np.random.default_rng(seed)
    return {
        "query": (rng.random((4,) + size + (3,)) * 255).astype("float32"),
        "positives": (rng.random((4, 2) + size + (3,)) * 255).astype("float32"),
        "positive_mask": np.array([[1, 0], [1, 1], [0, 1], [1, 1]], "float32"),
        "negatives": (rng.random((4, 3) + size + (3,)) * 255).astype("float32"),
    }


def _median_gap_margin(model, batch):
    """A margin at which about half of the batch's negatives violate (the untrained model's
    descriptors are all close, so the default margin would make every one violate)."""
    q, p, n = (np.asarray(t) for t in model.tuple_descriptors(batch))
    best = np.where(batch["positive_mask"] > 0, ((q[:, None] - p) ** 2).sum(-1), np.inf).min(1)
    return float(np.median(((q[:, None] - n) ** 2).sum(-1) - best[:, None]))


def test_sparse_gradients_equal_the_full_step():
    keras.utils.set_random_seed(4)
    model = build_model("tiny", num_clusters=4)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    batch = {k: tf.constant(v) for k, v in _batch().items()}
    model.margin = _median_gap_margin(model, batch)
    rows = model._images_with_gradient(batch, tf.concat(
        [tf.reshape(t, (-1, t.shape[-1])) for t in model.tuple_descriptors(batch)], 0))
    assert 3 <= len(rows) < 4 * 6  # the case leaves images out
    full, full_objective, full_report, _ = model._gradients(batch, sparse=False)
    sparse, objective, report, _ = model._gradients(batch, sparse=True)
    assert float(full_report) > 0
    np.testing.assert_allclose(float(objective), float(full_objective), rtol=1e-6)
    np.testing.assert_allclose(float(report), float(full_report), rtol=1e-6)
    for variable, a, b in zip(model.trainable_variables, full, sparse):
        scale = np.abs(a.numpy()).max()
        assert scale > 0, variable.name
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5 * scale, err_msg=variable.name)


def test_fit_with_sparse_backward_ends_with_the_weights_of_the_full_step():
    """Through `fit` (the first step of the epoch runs sparse: no violation measured yet), then one
    more step with the epoch's violating fraction above SPARSE_MAX_VIOLATING (the full pass)."""
    keras.utils.set_random_seed(5)
    reference = build_model("tiny", num_clusters=4)
    batches = [_batch(seed) for seed in (1, 2, 3)]
    margin = _median_gap_margin(reference, batches[0])
    dataset = tf.data.Dataset.from_tensor_slices(
        {k: np.stack([b[k] for b in batches]) for k in batches[0]})
    weights, history = {}, {}
    for sparse in (False, True):
        model = build_model("tiny", num_clusters=4, margin=margin)
        model.set_weights(reference.get_weights())
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        model.set_training_options(sparse_backward=sparse)
        history[sparse] = model.fit(dataset, epochs=1, shuffle=False, verbose=0).history
        model.violating_tracker.reset_state()
        model.violating_tracker.update_state(1.0)
        assert model.violating_tracker.result() > SPARSE_MAX_VIOLATING
        model.train_function(iter([{k: tf.constant(v) for k, v in _batch(4).items()}]))
        weights[sparse] = model.get_weights()
    assert 0 < history[True]["violating_triplets"][0] < 1
    np.testing.assert_allclose(history[True]["loss"], history[False]["loss"], rtol=1e-5)
    # The two passes round differently (the sparse one runs the backbone on a gathered batch and
    # sums its weight gradients over other rows), and four steps of momentum carry that forward:
    # conv1 ended up to 0.23 % of its update apart (oneDNN, the weight gradients as GEMMs;
    # 2026-12-03), where a sparse gradient that left out or doubled an image's contribution moves
    # a weight by the order of the update itself.
    for a, b, start in zip(weights[False], weights[True], reference.get_weights()):
        update = np.abs(a - start).max()
        assert update > 0
        assert np.abs(b - a).max() <= 1e-2 * update


def test_sparse_backward_is_refused_for_batch_normalisation():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    model = NetVLADModel(keras.Model(inputs, x), num_clusters=4)
    with pytest.raises(ValueError, match=r"bn1 \(BatchNormalization\).*without --sparse-backward"):
        model.set_training_options(sparse_backward=True)
    assert model.sparse_backward is False
    model.set_training_options(sparse_backward=False)  # turning it off is always allowed
