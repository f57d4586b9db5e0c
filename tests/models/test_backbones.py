"""Backbone registry and the MatConvNetLRN layer (the backbones' structure and weights are tested in
tests/models/test_model.py)."""

import os

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


@pytest.mark.parametrize("channels, groups, affine, input_bias",
                         [(16, 8, False, False), (16, 8, False, True), (32, 8, False, False), (12, 3, True, False),
                          (12, 3, True, True)])
def test_channel_group_normalization_is_keras_group_normalization(tmp_path, channels, groups, affine, input_bias):
    """Same outputs as the definition (NumPy) and as Keras' layer, same input and weight gradients, on
    maps with a large non-zero mean (where a one-pass variance would lose digits); passes the shared
    Keras checks (config, .keras round trip, mixed_float16). With `input_bias` the reference is Keras'
    layer applied to x + b, b a variable: the function of a convolution's bias before the layer."""
    import keras
    import tensorflow as tf

    from tf_netvlad.models.backbones import ChannelGroupNormalization

    rng = np.random.default_rng(channels)
    x = (rng.normal(size=(3, 5, 7, channels)) * rng.uniform(0.5, 3, channels) + 4).astype("float32")
    kwargs = dict(groups=groups, center=affine, scale=affine, epsilon=1e-3)
    ours, theirs = ChannelGroupNormalization(**kwargs, input_bias=input_bias), keras.layers.GroupNormalization(**kwargs)
    ours.build(x.shape), theirs.build(x.shape)
    weights = [rng.normal(size=channels).astype("float32") for _ in range(2)] if affine else []
    theirs.set_weights(weights)
    bias = (rng.normal(size=channels) * 2).astype("float32") if input_bias else np.zeros(channels, "float32")
    ours.set_weights(weights + ([bias] if input_bias else []))
    want = _numpy_group_norm(x + bias, groups, 1e-3, *weights)
    np.testing.assert_allclose(ours(x).numpy(), want, atol=2e-5)

    upstream = tf.constant(rng.normal(size=x.shape).astype("float32"))
    shift = tf.Variable(bias)
    grads = []
    for layer, shifted in ((ours, False), (theirs, True)):
        inp = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inp)
            loss = tf.reduce_sum(layer(inp + shift if shifted else inp) * upstream)
        variables = layer.trainable_variables[:2 if affine else 0]
        grads.append(tape.gradient(loss, [inp] + variables + ([ours.bias if not shifted else shift] if input_bias else [])))
    assert len(grads[0]) == 1 + 2 * affine + input_bias
    for mine, keras_grad in zip(*grads):
        np.testing.assert_allclose(mine.numpy(), keras_grad.numpy(), atol=2e-5, rtol=1e-4)
    # a group's outputs do not change when its inputs shift: the input gradient sums to 0 per group
    per_group = grads[0][0].numpy().reshape(3, -1, groups, channels // groups).sum(axis=(1, 3))
    np.testing.assert_allclose(per_group, 0, atol=1e-3)
    if input_bias:  # and the bias's gradient is the input gradient summed per channel
        np.testing.assert_allclose(grads[0][-1].numpy(), grads[0][0].numpy().sum(axis=(0, 1, 2)), atol=1e-4)

    out = check_keras_class(lambda: ChannelGroupNormalization(**kwargs, input_bias=input_bias, name="norm1"),
                            x, tmp_path)
    if not affine and not input_bias:  # (the checks perturb the weights)
        np.testing.assert_allclose(out, want, atol=2e-5)


def test_channel_group_normalization_gradient_is_the_definitions_at_the_tiny_backbones_size():
    """The layer's hand-written gradient against central differences of the float64 NumPy definition,
    along random directions of the input, gamma, beta and the input bias, at the shape of the tiny
    backbone's first normalisation (48x64 maps, 16 channels in 8 groups; the maps' mean far from 0,
    where the bias's gradient from per-channel sums could lose digits)."""
    import tensorflow as tf

    from tf_netvlad.models.backbones import ChannelGroupNormalization

    rng = np.random.default_rng(7)
    x = (rng.normal(size=(3, 48, 64, 16)) * rng.uniform(0.5, 3, 16) + 3).astype("float32")
    gamma, beta, bias = (rng.normal(size=16).astype("float32") for _ in range(3))
    upstream = rng.normal(size=x.shape)
    layer = ChannelGroupNormalization(groups=8, epsilon=1e-3, input_bias=True)
    layer.build(x.shape)
    layer.set_weights([gamma, beta, bias])
    inp = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inp)
        loss = tf.reduce_sum(tf.cast(layer(inp), "float64") * upstream)
    grads = [g.numpy().astype("float64") for g in tape.gradient(loss, [inp, layer.gamma, layer.beta, layer.bias])]

    def definition(x_, gamma_, beta_, bias_):  # the loss from the float64 definition
        return float(np.sum(_numpy_group_norm(x_ + bias_, 8, 1e-3, gamma_, beta_) * upstream))

    point = [v.astype("float64") for v in (x, gamma, beta, bias)]
    for which, grad in enumerate(grads):
        for _ in range(3):
            direction = rng.normal(size=grad.shape)
            step = 1e-4 / np.sqrt(np.mean(direction ** 2))
            plus, minus = list(point), list(point)
            plus[which], minus[which] = point[which] + step * direction, point[which] - step * direction
            numeric = (definition(*plus) - definition(*minus)) / (2 * step)
            assert np.sum(grad * direction) == pytest.approx(numeric, rel=1e-4, abs=1e-3)


def test_tiny_backbone_normalises_with_channel_group_normalization_and_old_models_still_load(tmp_path):
    """New tiny backbones use the faster layer, which holds the convolution's bias; models saved
    before either change (convolutions with a bias, then Keras' GroupNormalization or this layer
    without `input_bias`) load through the standard Keras path and compute the same features from
    the same weights."""
    import keras

    from tf_netvlad.models.backbones import ChannelGroupNormalization

    tiny = backbones.build_backbone("tiny")
    norms = [layer for layer in tiny.layers if "norm" in layer.name]
    assert [type(layer) for layer in norms] == [ChannelGroupNormalization] * 3
    assert all(layer.input_bias for layer in norms)
    assert [layer.use_bias for layer in tiny.layers if "conv" in layer.name] == [False, False, False, True]
    rng = np.random.default_rng(1)
    for layer in norms:
        layer.set_weights([rng.normal(size=layer.bias.shape).astype("float32")])
    images = rng.uniform(-1, 1, size=(2, 24, 32, 3)).astype("float32")

    for old_norm in (lambda name: keras.layers.GroupNormalization(8, center=False, scale=False, name=name),
                     lambda name: ChannelGroupNormalization(8, center=False, scale=False, name=name)):
        x = keras.Input(shape=(None, None, 3))
        y, biases = x, {}
        for layer in tiny.layers[1:]:  # the same network as saved before: the biases in the convolutions
            if isinstance(layer, keras.layers.Conv2D) and not layer.use_bias:
                y = keras.layers.Conv2D(layer.filters, 3, strides=layer.strides, padding="same", name=layer.name)(y)
            elif isinstance(layer, ChannelGroupNormalization):
                biases[layer.name.replace("norm", "conv")] = layer.get_weights()[0]
                y = old_norm(layer.name)(y)
            else:
                y = layer.__class__.from_config(layer.get_config())(y)
        old = keras.Model(x, y)
        for layer in old.layers:
            if layer.weights:
                kernel_and_bias = tiny.get_layer(layer.name).get_weights()
                layer.set_weights(kernel_and_bias if layer.name == "conv4" else
                                  kernel_and_bias + [biases[layer.name]])
        old.save(tmp_path / "old.keras")
        reloaded = keras.saving.load_model(tmp_path / "old.keras")
        assert reloaded.get_layer("conv1").use_bias
        assert not getattr(reloaded.get_layer("norm1"), "input_bias", False)
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


def _numpy_conv_same(x, kernel, bias, stride):
    """A 'same'-padded 2-D convolution of a batch: the MatConvNet NumPy forward of the converter
    tests (`_np_conv`, float64) per image, with TF's padding: the total padding
    max((ceil(n / s) - 1)·s + k - n, 0), its smaller half first."""
    from tests.convert.test_converters import _np_conv

    (h, w), (kh, kw) = x.shape[1:3], kernel.shape[:2]
    pad_h = max((-(-h // stride) - 1) * stride + kh - h, 0)
    pad_w = max((-(-w // stride) - 1) * stride + kw - w, 0)
    pad = (pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2)
    return np.stack([_np_conv(image.astype("float64"), kernel, bias, stride, pad) for image in x])


@pytest.mark.parametrize("stride, gain", [(1, 1.0), (2, backbones.RELU_GAIN)])
def test_standardized_conv2d_convolves_with_the_standardised_kernel(tmp_path, stride, gain):
    """`StandardizedConv2D` (Qiao et al. 2019, scaled as Brock et al. 2021): every output channel's
    kernel shifted to mean 0 and scaled to variance gain² / fan_in, checked against a NumPy
    convolution with that kernel; the stored kernel stays raw; passes the shared Keras checks."""
    from tf_netvlad.models.backbones import StandardizedConv2D

    rng = np.random.default_rng(stride)
    x = rng.normal(size=(2, 7, 10, 3)).astype("float32")
    layer = StandardizedConv2D(4, 3, strides=stride, padding="same", gain=gain, epsilon=0.0)
    layer.build(x.shape)
    raw = (rng.normal(size=(3, 3, 3, 4)) * [0.1, 1.0, 5.0, 20.0] + [0.0, 3.0, -1.0, 100.0]).astype("float32")
    bias = rng.normal(size=4).astype("float32")
    layer.set_weights([raw, bias])
    flat = raw.reshape(27, 4).astype("float64")
    want_kernel = (gain * (flat - flat.mean(0)) / np.sqrt(27 * flat.var(0))).reshape(3, 3, 3, 4)
    used = layer.standardized_kernel().numpy().reshape(27, 4)
    np.testing.assert_allclose(used.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(used.var(0), gain ** 2 / 27, rtol=1e-4)  # the channel's scale is gone
    np.testing.assert_allclose(layer(x).numpy(), _numpy_conv_same(x, want_kernel, bias, stride),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(layer.get_weights()[0], raw)
    check_keras_class(lambda: StandardizedConv2D(4, 3, strides=stride, padding="same", gain=gain,
                                                 name="conv1"), x, tmp_path)


def test_tiny_ws_has_no_normalisation_keeps_tiny_s2_shapes_and_the_scale_of_its_input(tmp_path):
    """`tiny_ws`: `tiny_s2`'s layers and weight shapes without the GroupNormalizations, every
    convolution weight-standardised (ReLU gain before a ReLU, 1 for the linear conv4). At the random
    initialisation the features keep the order of the input's scale (the point of the gain): E[x²]
    of the output for unit-variance inputs was 1.86–1.92 over seeds 0–4, where plain convolutions
    with Keras' default initialiser shrink it about 100-fold (0.014–0.022; measured 2026-12-02).
    Loads with `keras.saving.load_model`."""
    import keras

    from tf_netvlad.models.backbones import RELU_GAIN, StandardizedConv2D

    keras.utils.set_random_seed(0)
    s2, ws = backbones.build_backbone("tiny_s2"), backbones.build_backbone("tiny_ws")
    assert [layer.name for layer in ws.layers[1:]] == [
        "conv1", "relu1", "conv2", "pool2", "relu2", "conv3", "pool3", "relu3", "conv4"]
    assert [w.shape for w in ws.weights] == [w.shape for w in s2.weights]
    convs = [layer for layer in ws.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(isinstance(layer, StandardizedConv2D) for layer in convs)
    assert [layer.gain for layer in convs] == [RELU_GAIN] * 3 + [1.0]
    # 1 / std(ReLU(z)) for z ~ N(0, 1): E[ReLU(z)²] = 1/2, E[ReLU(z)] = 1/sqrt(2π), var = 0.340845
    assert abs(RELU_GAIN - 1.712859) < 1e-6

    x = np.random.default_rng(0).normal(size=(4, 96, 128, 3)).astype("float32")
    second_moment = float(np.mean(ws(x).numpy() ** 2))
    assert 0.5 < second_moment < 4.0, second_moment
    plain = keras.Sequential([keras.Input((None, None, 3))] + [
        keras.layers.Conv2D(f, 3, strides=2 if i == 0 else 1, padding="same",
                            activation=None if i == 3 else "relu") for i, f in enumerate((16, 32, 64, 64))])
    assert float(np.mean(plain(x).numpy() ** 2)) < second_moment / 20

    ws.save(tmp_path / "ws.keras")
    reloaded = keras.saving.load_model(tmp_path / "ws.keras")
    np.testing.assert_array_equal(reloaded(x[:1]).numpy(), ws(x[:1]).numpy())


def _numpy_conv_grads(x, kernel, upstream, stride):
    """The input, kernel and bias gradients of `_numpy_conv_same` (TF's 'same' padding) for the output
    gradient `upstream`, from the definition y[n, r, c, o] = Σ_ijk xpad[n, r·s + i, c·s + j, k] ·
    W[i, j, k, o] + b[o], in float64."""
    (n, h, w, _), (kh, kw) = x.shape, kernel.shape[:2]
    out_h, out_w = upstream.shape[1:3]
    pad_h = max((out_h - 1) * stride + kh - h, 0)
    pad_w = max((out_w - 1) * stride + kw - w, 0)
    top, left = pad_h // 2, pad_w // 2
    xpad = np.zeros((n, h + pad_h, w + pad_w, x.shape[3]))
    xpad[:, top:top + h, left:left + w] = x
    g = upstream.astype("float64")
    d_kernel = np.zeros(kernel.shape)
    d_xpad = np.zeros_like(xpad)
    rows, cols = slice(None, (out_h - 1) * stride + 1, stride), slice(None, (out_w - 1) * stride + 1, stride)
    for i in range(kh):
        for j in range(kw):
            window = xpad[:, i:, j:][:, rows, cols]  # the input each output pixel meets under tap (i, j)
            d_kernel[i, j] = np.einsum("nrck,nrco->ko", window, g)
            d_xpad[:, i:, j:][:, rows, cols] += np.einsum("nrco,ko->nrck", g, kernel[i, j])
    return d_xpad[:, top:top + h, left:left + w], d_kernel, g.sum((0, 1, 2))


@pytest.mark.parametrize("kernel_size, stride, use_bias", [(3, 1, False), (3, 1, True), ((5, 3), 1, True),
                                                           (1, 1, False), (3, 2, True)])
def test_gemm_grad_conv2d_trains_with_the_gradients_of_the_convolution(tmp_path, monkeypatch, kernel_size,
                                                                        stride, use_bias):
    """`GemmGradConv2D` called with training=True on one thread per op: output and the input,
    kernel and bias gradients against a float64 NumPy convolution and its gradients from the
    definition (the weight gradient as GEMMs of row-shifted slices for stride 1 and odd kernels;
    stride 2 is Conv2D's own code); maps whose width is not the height, 5 -> 7 channels, 3 images.
    Passes the shared Keras checks (config, `.keras` round trip, mixed precision)."""
    import tensorflow as tf

    from tf_netvlad.models.backbones import GemmGradConv2D

    monkeypatch.setattr(backbones, "gemm_weight_grads_wanted", lambda: True)  # whatever this CPU and pool

    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 9, 11, 5)).astype("float32")
    layer = GemmGradConv2D(7, kernel_size, strides=stride, padding="same", use_bias=use_bias)
    layer.build(x.shape)
    kh, kw = layer.kernel_size
    kernel = rng.normal(size=(kh, kw, 5, 7)).astype("float32")
    bias = rng.normal(size=7).astype("float32")
    layer.set_weights([kernel, bias] if use_bias else [kernel])
    want = _numpy_conv_same(x, kernel, bias if use_bias else np.zeros(7), stride)
    upstream = rng.normal(size=want.shape).astype("float32")
    want_dx, want_dkernel, want_dbias = _numpy_conv_grads(x, kernel, upstream, stride)

    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        y = layer(inputs, training=True)
        loss = tf.reduce_sum(y * upstream)
    grads = tape.gradient(loss, [inputs] + layer.trainable_variables)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer(x, training=False).numpy(), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads[0].numpy(), want_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads[1].numpy(), want_dkernel, rtol=1e-4, atol=1e-3)
    if use_bias:
        np.testing.assert_allclose(grads[2].numpy(), want_dbias, rtol=1e-4, atol=1e-3)
    check_keras_class(lambda: GemmGradConv2D(7, kernel_size, strides=stride, padding="same",
                                             use_bias=use_bias, name="conv2"), x, tmp_path)


def _training_step_ops(backbone, names=False):
    """The op types (or `(name, type)` pairs) of a traced gradient step of `backbone`."""
    import tensorflow as tf

    @tf.function
    def step(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(backbone(images, training=True))
        return tape.gradient(loss, backbone.trainable_variables)

    spec = tf.TensorSpec((None, 32, 48, 3), tf.float32)
    ops = step.get_concrete_function(spec).graph.get_operations()
    return [(op.name, op.type) if names else op.type for op in ops]


def test_tiny_backbones_train_their_stride_1_convolutions_with_gemm_weight_gradients(monkeypatch):
    """In a traced training step of `tiny_s2` (the CPU recipe's backbone) and `tiny` where the GEMMs
    are wanted, the stride-1 3x3 convolutions' weight gradients are matrix products, not oneDNN's
    backward-weights convolution (only `tiny_s2`'s stride-2 conv1 keeps one); where they are not,
    all four are the convolution's; inference traces no matrix product."""
    import tensorflow as tf

    from tf_netvlad.models.backbones import GemmGradConv2D

    for name, plain_filter_grads in (("tiny_s2", 1), ("tiny", 0)):
        backbone = backbones.build_backbone(name)
        assert [type(layer) for layer in backbone.layers if "conv" in layer.name] == [GemmGradConv2D] * 4
        monkeypatch.setattr(backbones, "gemm_weight_grads_wanted", lambda: True)
        ops = _training_step_ops(backbone)
        assert ops.count("Conv2DBackpropFilter") == plain_filter_grads, name
        assert ops.count("MatMul") == 9 * (4 - plain_filter_grads), name
        monkeypatch.setattr(backbones, "gemm_weight_grads_wanted", lambda: False)
        ops = _training_step_ops(backbone)
        assert ops.count("Conv2DBackpropFilter") == 4 and "MatMul" not in ops, name
        monkeypatch.setattr(backbones, "gemm_weight_grads_wanted", lambda: True)
        spec = tf.TensorSpec((None, 32, 48, 3), tf.float32)
        inference = tf.function(lambda images, backbone=backbone: backbone(images, training=False))
        assert "MatMul" not in [op.type for op in inference.get_concrete_function(spec).graph.get_operations()]


def test_hand_written_gradients_name_their_layer(monkeypatch):
    """benchmarks/profile_train_step.py counts an op as a layer's when the layer's name is in the
    op's scope. The hand-written gradients (the normalisations', the GEMM convolutions') open
    "<layer>/backward", so their ops count as that layer's backward pass, not as "other"."""
    from tf_netvlad.models.backbones import ChannelGroupNormalization

    monkeypatch.setattr(backbones, "gemm_weight_grads_wanted", lambda: True)
    backbone = backbones.build_backbone("tiny_s2")
    ops = _training_step_ops(backbone, names=True)
    norms = [layer.name for layer in backbone.layers if isinstance(layer, ChannelGroupNormalization)]
    assert len(norms) == 3
    for name in norms:  # its two reductions of the upstream gradient among them
        assert [t for n, t in ops if f"{name}/backward/" in n].count("Sum") >= 2, name
    for name in ("conv2", "conv3", "conv4"):  # stride 1: the nine GEMMs of the weight gradient
        assert [t for n, t in ops if f"{name}/backward/" in n].count("MatMul") == 9, name


ONE_THREAD_CASE = """
import sys
import tensorflow as tf
if sys.argv[1] != "default":
    tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
from tf_netvlad.models import backbones
print(backbones.one_thread_per_op(), tf.config.list_physical_devices("GPU") == [])
"""


@pytest.mark.parametrize("intra, expected", [("1", True), ("2", False), ("default", False)])
def test_gemm_weight_gradients_follow_the_intra_op_pool_of_a_fresh_process(intra, expected):
    """One thread per op means an intra-op pool of one thread (as `configure_streams(2)` makes on
    2 cores), not two threads per op nor TensorFlow's default."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", ONE_THREAD_CASE, intra], capture_output=True, text=True,
                         check=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    chosen, no_gpu = out.stdout.split()[-2:]
    if no_gpu != "True":
        pytest.skip("on a GPU the layer keeps the convolution's gradient")
    assert chosen == str(expected)


# Excerpts of /proc/cpuinfo's first processor on the two hosts of benchmarks/RESULTS.md (flags cut
# to those that matter here) and an ARM host's, which names its flags "Features".
ZEN3 = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n\nprocessor\t: 1\n"
ZEN4 = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nflags\t\t: avx2 avx512f avx512dq avx512_bf16\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes\nCPU implementer\t: 0x41\n"


def test_cpu_flags_reads_the_first_processor():
    assert backbones.cpu_flags(ZEN3) == {"fpu", "sse2", "avx", "fma", "avx2", "bmi2"}
    assert "avx512f" in backbones.cpu_flags(ZEN4)
    assert backbones.cpu_flags(ARM) == frozenset() and backbones.cpu_flags("") == frozenset()


@pytest.mark.parametrize("cpuinfo, one_thread, expected", [(ZEN3, True, True), (ZEN3, False, False),
                                                           (ZEN4, True, False), (ARM, True, False)])
def test_gemm_weight_gradients_only_where_measured_faster(monkeypatch, cpuinfo, one_thread, expected):
    """AVX2 without AVX-512 and one thread per op (the Zen 3 runs of benchmarks/RESULTS.md); not on
    the AVX-512 CPU whose oneDNN gradients were already fast, nor on CPUs never measured."""
    monkeypatch.setattr(backbones, "_this_cpu_flags", lambda: backbones.cpu_flags(cpuinfo))
    monkeypatch.setattr(backbones, "one_thread_per_op", lambda: one_thread)
    assert backbones.gemm_weight_grads_wanted() is expected
