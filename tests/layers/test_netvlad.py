"""NetVLAD layer against independent NumPy implementations of the formula (MATLAB semantics)."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.layer_checks import check_keras_class
from tf_netvlad.layers.netvlad import NetVLAD, default_alpha, top2_margins

EPS = 1e-12


def numpy_netvlad(x, kernel, centroids, bias=None, pre_l2=True, intra=True):
    """Broadcast (B, N, K, D) reference, MATLAB flatten (element (d, k) at d*K + k)."""
    x = x.reshape(x.shape[0], -1, x.shape[-1]).astype("float64")
    if pre_l2:
        x = x / np.sqrt((x**2).sum(-1, keepdims=True) + EPS)
    logits = x @ kernel + (0 if bias is None else bias)
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    residual = x[:, :, None, :] - centroids[None, None]  # (B, N, K, D)
    vlad = (a[..., None] * residual).sum(1)  # (B, K, D)
    if intra:
        vlad = vlad / np.sqrt((vlad**2).sum(-1, keepdims=True) + EPS)
    b, k, d = vlad.shape
    out = np.empty((b, k * d))
    for kk in range(k):
        for dd in range(d):
            out[:, dd * k + kk] = vlad[:, kk, dd]
    return out / (np.linalg.norm(out, axis=1, keepdims=True) + EPS)


def numpy_netvlad_loop(x, kernel, centroids, bias=None):
    """Per-cluster loop form (as the PyTorch ports), MATLAB flatten via column-major ravel."""
    x = x.reshape(x.shape[0], -1, x.shape[-1]).astype("float64")
    x = x / np.sqrt((x**2).sum(-1, keepdims=True) + EPS)
    logits = x @ kernel + (0 if bias is None else bias)
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    outs = []
    for xb, ab in zip(x, a):
        v = np.stack([(ab[:, k : k + 1] * (xb - centroids[k])).sum(0) for k in range(len(centroids))])
        v = v / np.sqrt((v**2).sum(-1, keepdims=True) + EPS)
        flat = v.ravel(order="F")  # column-major K×D: index k + K*d
        outs.append(flat / (np.linalg.norm(flat) + EPS))
    return np.stack(outs)


def _layer(k, d, variant, pre_l2=True, intra=True, seed=0):
    layer = NetVLAD(k, variant=variant, pre_l2=pre_l2, intra_normalize=intra)
    layer.build((None, None, None, d))
    rng = np.random.default_rng(seed)
    layer.assignment_kernel.assign(rng.normal(size=(d, k)).astype("float32") * 3)
    layer.centroids.assign(rng.normal(size=(k, d)).astype("float32") * 0.2)
    if variant == "v2":
        layer.assignment_bias.assign(rng.normal(size=(k,)).astype("float32"))
    return layer


@pytest.mark.parametrize("variant", ["v1", "v2"])
@pytest.mark.parametrize("pre_l2", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy_broadcast_reference(variant, pre_l2, seed):
    rng = np.random.default_rng(seed)
    k, d = int(rng.integers(2, 9)), int(rng.integers(3, 13))
    if k == d:
        d += 1  # D != K so a transposed flatten cannot pass
    h, w, b = int(rng.integers(1, 6)), int(rng.integers(1, 7)), int(rng.integers(1, 4))
    layer = _layer(k, d, variant, pre_l2=pre_l2, seed=seed)
    x = rng.normal(size=(b, h, w, d)).astype("float32")
    bias = None if variant == "v1" else layer.assignment_bias.numpy()
    expected = numpy_netvlad(x, layer.assignment_kernel.numpy(), layer.centroids.numpy(), bias, pre_l2)
    np.testing.assert_allclose(layer(x).numpy(), expected, atol=2e-6)


def test_matches_loop_form_and_intra_off():
    rng = np.random.default_rng(3)
    layer = _layer(5, 7, "v1")
    x = rng.normal(size=(3, 4, 6, 7)).astype("float32")
    loop = numpy_netvlad_loop(x, layer.assignment_kernel.numpy(), layer.centroids.numpy())
    np.testing.assert_allclose(layer(x).numpy(), loop, atol=2e-6)
    layer_no_intra = _layer(5, 7, "v1", intra=False)
    ref = numpy_netvlad(x, layer_no_intra.assignment_kernel.numpy(), layer_no_intra.centroids.numpy(), intra=False)
    np.testing.assert_allclose(layer_no_intra(x).numpy(), ref, atol=2e-6)


def test_flatten_order_is_matlab_d_times_k_plus_k():
    # One feature, hard assignment to cluster 1 (of 3), zero centroids: V(1, :) = x, others 0.
    layer = NetVLAD(3, pre_l2=False, intra_normalize=False)
    layer.build((None, 1, 2))
    layer.assignment_kernel.assign(np.array([[0, 50, 0], [0, 50, 0]], "float32"))
    layer.centroids.assign(np.zeros((3, 2), "float32"))
    out = layer(np.array([[[3.0, 4.0]]], "float32")).numpy()[0]
    expected = np.zeros(6)
    expected[0 * 3 + 1], expected[1 * 3 + 1] = 0.6, 0.8
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_gradients_reach_every_weight_and_input():
    layer = _layer(4, 6, "v2")
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 3, 5, 6)).astype("float32"))
    g = tf.constant(np.random.default_rng(1).normal(size=(2, 24)).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) * g)
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    assert len(layer.trainable_variables) == 3
    for grad in grads:
        assert grad is not None and np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


def test_gradient_matches_finite_differences():
    layer = _layer(3, 4, "v1")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 2, 3, 4)).astype("float64")
    g = rng.normal(size=(1, 12))
    kernel = layer.assignment_kernel.numpy().astype("float64")
    cent = layer.centroids.numpy().astype("float64")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x.astype("float32")) * g)
    grad = tape.gradient(loss, layer.centroids).numpy()
    h = 1e-5
    i, j = 1, 2
    plus, minus = cent.copy(), cent.copy()
    plus[i, j] += h
    minus[i, j] -= h
    fd = ((numpy_netvlad(x, kernel, plus) * g).sum() - (numpy_netvlad(x, kernel, minus) * g).sum()) / (2 * h)
    assert grad[i, j] == pytest.approx(fd, rel=2e-2, abs=1e-5)


def test_symbolic_unknown_spatial_size_and_output_shape():
    inputs = keras.Input(shape=(None, None, 16))
    out = NetVLAD(4)(inputs)
    assert tuple(out.shape) == (None, 64)
    layer = NetVLAD(4)
    y = layer(np.random.rand(2, 5, 7, 16).astype("float32"))
    assert tuple(y.shape) == layer.compute_output_shape((2, 5, 7, 16)) == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), 1.0, atol=1e-6)


def test_config_roundtrip_json():
    layer = NetVLAD(5, variant="v2", pre_l2=False, intra_normalize=False, epsilon=1e-6, name="v")
    config = json.loads(json.dumps(layer.get_config()))
    revived = NetVLAD.from_config(config)
    assert revived.get_config() == layer.get_config()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"num_clusters": 0}, "num_clusters"), ({"num_clusters": 2.5}, "num_clusters"),
     ({"num_clusters": 4, "variant": "v3"}, "variant")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NetVLAD(**kwargs)


def test_wrong_rank_input_is_a_clear_error():
    with pytest.raises(ValueError, match="rank 3 or 4|\\(batch, height, width, D\\)"):
        NetVLAD(4)(np.zeros((2, 8), "float32"))


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_alpha_gives_assignment_ratio_100(variant):
    rng = np.random.default_rng(7)
    k, d = 8, 12
    centroids = rng.normal(size=(k, d)).astype("float32")
    x = (centroids[rng.integers(0, k, 3000)] + 0.7 * rng.normal(size=(3000, d))).astype("float32")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    alpha = default_alpha(centroids, x, variant)
    if variant == "v1":  # hand formula: -ln(0.01) / mean(s1 - s2)
        s = np.sort(x @ centroids.T, axis=1)
        assert alpha == pytest.approx(-math.log(0.01) / np.mean(s[:, -1] - s[:, -2]), rel=1e-5)
    else:
        dist = np.sort(((x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
        assert alpha == pytest.approx(-math.log(0.01) / np.mean(dist[:, 1] - dist[:, 0]), rel=1e-4)
    layer = NetVLAD(k, variant=variant, pre_l2=False)
    layer.build((None, None, d))
    layer.set_centroids(centroids, alpha)
    logits = x @ layer.assignment_kernel.numpy()
    if variant == "v2":
        logits = logits + layer.assignment_bias.numpy()
    top = np.sort(logits, axis=1)
    ratio = np.exp(top[:, -1] - top[:, -2])  # a1 / a2
    assert np.exp(np.mean(np.log(ratio))) == pytest.approx(100.0, rel=1e-3)
    assert top2_margins(centroids, x, variant).min() >= 0


def test_set_centroids_rejects_bad_shape_and_alpha():
    layer = NetVLAD(4)
    layer.build((None, None, None, 6))
    with pytest.raises(ValueError, match="shape"):
        layer.set_centroids(np.zeros((6, 4)), 1.0)
    with pytest.raises(ValueError, match="alpha"):
        layer.set_centroids(np.ones((4, 6)), -1.0)


def test_float32_output_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = NetVLAD(4, dtype="float32")
        out = layer(np.random.rand(2, 3, 3, 8).astype("float16"))
        assert out.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("variant, pre_l2, input_shape", [("v1", True, (2, 5, 7, 8)),
                                                          ("v2", False, (2, 9, 8))])
def test_netvlad_passes_the_shared_keras_checks(tmp_path, variant, pre_l2, input_shape):
    """Config/JSON, serialize/deserialize, .keras round trip and mixed_float16 (the layer follows the
    global policy and computes in float16 on its own; `NetVLADModel` pins it to float32)."""
    inputs = np.random.default_rng(0).normal(size=input_shape).astype("float32")
    out = check_keras_class(
        lambda: NetVLAD(3, variant=variant, pre_l2=pre_l2, intra_normalize=variant == "v1", epsilon=1e-6,
                        name="vlad"),
        inputs, tmp_path)
    assert out.shape == (2, 3 * input_shape[-1])
