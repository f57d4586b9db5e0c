"""Backbone registry and the MatConvNetLRN layer (the backbones' structure and weights are tested in
tests/models/test_model.py)."""

import numpy as np
import pytest

from tests.layer_checks import check_keras_class
from tf_netvlad import defaults
from tf_netvlad.models import backbones
from tf_netvlad.models.backbones import MatConvNetLRN


def test_backbone_names_default_lists_exactly_the_registered_builders():
    # defaults.py may not import TensorFlow, so it repeats the names; they must not drift apart.
    assert sorted(defaults.BACKBONE_NAMES) == sorted(backbones.BACKBONES)
    assert len(set(defaults.BACKBONE_NAMES)) == len(defaults.BACKBONE_NAMES)


def _numpy_lrn(x, depth, kappa, alpha, beta):
    """Channel loop of the MatConvNet formula: window [k - floor((N-1)/2), k + ceil((N-1)/2)]."""
    out = np.empty_like(x, dtype="float64")
    channels = x.shape[-1]
    for k in range(channels):
        lo, hi = max(0, k - (depth - 1) // 2), min(channels - 1, k + depth // 2)
        out[..., k] = x[..., k] * (kappa + alpha * (x[..., lo:hi + 1].astype("float64") ** 2).sum(-1)) ** -beta
    return out


@pytest.mark.parametrize("depth, kappa, alpha, beta", [(5, 1.0, 0.05, 0.75), (4, 2.0, 1e-2, 0.5)])
def test_matconvnet_lrn_passes_the_shared_keras_checks(tmp_path, depth, kappa, alpha, beta):
    """Config/JSON, serialize/deserialize, .keras round trip and mixed_float16 (float16 compute, as
    the conv layers around it in an AlexNet backbone)."""
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 7)).astype("float32") * 3
    out = check_keras_class(lambda: MatConvNetLRN(depth, kappa, alpha, beta, name="norm1"), x, tmp_path)
    np.testing.assert_allclose(out, _numpy_lrn(x, depth, kappa, alpha, beta), rtol=1e-5, atol=1e-6)


def _numpy_group_norm(x, groups, epsilon, gamma=None, beta=None):
    """GroupNorm by its definition, in float64: statistics over (H, W, the group's channels)."""
    b, h, w, c = x.shape
    g = x.astype("float64").reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    out = ((g - mean) / np.sqrt(var + epsilon)).reshape(b, h, w, c)
    return out * (1 if gamma is None else gamma) + (0 if beta is None else beta)


@pytest.mark.parametrize("channels, groups, affine", [(16, 8, False), (32, 8, False), (12, 3, True)])
def test_channel_group_normalization_is_keras_group_normalization(tmp_path, channels, groups, affine):
    """Same outputs as the definition (NumPy) and as Keras' layer, same input and weight gradients, on
    maps with a large non-zero mean (where a one-pass variance would lose digits); passes the shared
    Keras checks (config, .keras round trip, mixed_float16)."""
    import keras
    import tensorflow as tf

    from tf_netvlad.models.backbones import ChannelGroupNormalization

    rng = np.random.default_rng(channels)
    x = (rng.normal(size=(3, 5, 7, channels)) * rng.uniform(0.5, 3, channels) + 4).astype("float32")
    kwargs = dict(groups=groups, center=affine, scale=affine, epsilon=1e-3)
    ours, theirs = ChannelGroupNormalization(**kwargs), keras.layers.GroupNormalization(**kwargs)
    ours.build(x.shape), theirs.build(x.shape)
    if affine:
        weights = [rng.normal(size=channels).astype("float32") for _ in range(2)]
        ours.set_weights(weights), theirs.set_weights(weights)
    want = _numpy_group_norm(x, groups, 1e-3, *(weights if affine else ()))
    np.testing.assert_allclose(ours(x).numpy(), want, atol=2e-5)

    upstream = tf.constant(rng.normal(size=x.shape).astype("float32"))
    grads = []
    for layer in (ours, theirs):
        inp = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inp)
            loss = tf.reduce_sum(layer(inp) * upstream)
        grads.append(tape.gradient(loss, [inp] + layer.trainable_variables))
    for mine, keras_grad in zip(*grads):
        np.testing.assert_allclose(mine.numpy(), keras_grad.numpy(), atol=2e-5, rtol=1e-4)
    # a group's outputs do not change when its inputs shift: the input gradient sums to 0 per group
    per_group = grads[0][0].numpy().reshape(3, -1, groups, channels // groups).sum(axis=(1, 3))
    np.testing.assert_allclose(per_group, 0, atol=1e-3)

    out = check_keras_class(lambda: ChannelGroupNormalization(**kwargs, name="norm1"), x, tmp_path)
    if not affine:  # (the checks perturb the weights of an affine layer)
        np.testing.assert_allclose(out, want, atol=2e-5)


def test_tiny_backbone_normalises_with_channel_group_normalization_and_old_models_still_load(tmp_path):
    """New tiny backbones use the faster layer; a model saved with Keras' GroupNormalization (before
    the change) loads through the standard Keras path and gives the same features."""
    import keras

    from tf_netvlad.models.backbones import ChannelGroupNormalization

    tiny = backbones.build_backbone("tiny")
    norms = [layer for layer in tiny.layers if "norm" in layer.name]
    assert [type(layer) for layer in norms] == [ChannelGroupNormalization] * 3

    x = keras.Input(shape=(None, None, 3))
    y = x
    for layer in tiny.layers[1:]:  # the same network with Keras' own layer, as saved before
        y = (keras.layers.GroupNormalization(8, center=False, scale=False, name=layer.name)
             if isinstance(layer, ChannelGroupNormalization) else layer)(y)
    old = keras.Model(x, y)
    old.save(tmp_path / "old.keras")
    reloaded = keras.saving.load_model(tmp_path / "old.keras")
    assert isinstance(reloaded.get_layer("norm1"), keras.layers.GroupNormalization)
    assert not isinstance(reloaded.get_layer("norm1"), ChannelGroupNormalization)
    images = np.random.default_rng(1).uniform(-1, 1, size=(2, 24, 32, 3)).astype("float32")
    np.testing.assert_allclose(reloaded(images).numpy(), tiny(images).numpy(), atol=1e-4)


def test_tiny_s2_strides_its_first_convolution_and_keeps_stride_8():
    """`tiny_s2` (the CPU recipe's backbone): conv1 with stride 2 replaces conv1 + pool1 of `tiny`, so
    no layer runs at full resolution; same weight shapes, output stride 8, minimum input 7 px."""
    import keras

    from tf_netvlad.models import extract
    from tf_netvlad.models.model import build_model

    tiny, fast = backbones.build_backbone("tiny"), backbones.build_backbone("tiny_s2")
    assert [layer.name for layer in fast.layers[1:]] == [
        "conv1", "norm1", "relu1", "conv2", "pool2", "norm2", "relu2", "conv3", "pool3", "norm3", "relu3", "conv4"]
    assert [w.shape for w in fast.weights] == [w.shape for w in tiny.weights]
    probe = keras.Model(fast.input, [layer.output for layer in fast.layers[1:]])
    shapes = [tuple(out.shape[1:3]) for out in probe(np.zeros((1, 96, 128, 3), "float32"))]
    assert max(shapes) == (48, 64) and shapes[-1] == (12, 16)
    # TF's "same" padding with stride 2 on an even size pads one row / column at the end only, so
    # output (i, j) is centred on input (2i + 1, 2j + 1): the stride-1 convolution sampled there
    fast.get_layer("conv1").set_weights(tiny.get_layer("conv1").get_weights())
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 10, 14, 3)).astype("float32")
    full = tiny.get_layer("conv1")(x).numpy()
    np.testing.assert_allclose(fast.get_layer("conv1")(x).numpy(), full[:, 1::2, 1::2], atol=1e-5)
    # ceil(h / 2) >= 4 survives two 2x2 poolings: h >= 7 (tiny: 2**3 = 8)
    assert extract.minimum_input_size(build_model("tiny_s2", num_clusters=2)) == (7, 7)
