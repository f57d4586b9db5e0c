"""Backbones by name: images (preprocessed) -> local feature map (batch, h, w, D)."""

import functools
import os

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops


@keras.saving.register_keras_serializable(package="tf_netvlad")
class MatConvNetLRN(keras.layers.Layer):
    """MatConvNet `normalize` (cross-channel local response normalisation).

    y_k = x_k (κ + α Σ_{t ∈ G(k)} x_t²)^(−β) with G(k) = [k − ⌊(N−1)/2⌋, k + ⌈(N−1)/2⌉] clipped
    to the channels; used by the Caffe-reference (AlexNet) backbones of the official models.

    Args:
        depth: N, the window size in channels.
        kappa, alpha, beta: floats of the formula above.
    """

    def __init__(self, depth, kappa, alpha, beta, **kwargs):
        super().__init__(**kwargs)
        self.depth = int(depth)
        self.kappa = float(kappa)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        below, above = (self.depth - 1) // 2, self.depth // 2  # ⌊(N−1)/2⌋, ⌈(N−1)/2⌉
        t, k = np.meshgrid(np.arange(channels), np.arange(channels), indexing="ij")
        self._band = ((t >= k - below) & (t <= k + above)).astype("float32")  # (C_t, C_k)

    def call(self, inputs):
        window = ops.matmul(ops.square(inputs), ops.convert_to_tensor(self._band, inputs.dtype))
        return inputs * ops.power(self.kappa + self.alpha * window, -self.beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"depth": self.depth, "kappa": self.kappa, "alpha": self.alpha, "beta": self.beta})
        return config


@keras.saving.register_keras_serializable(package="tf_netvlad")
class ChannelGroupNormalization(keras.layers.GroupNormalization):
    """`keras.layers.GroupNormalization` of NHWC feature maps, its statistics taken per channel first.

    Same function, same configuration and weights as the Keras layer (mean and variance over each
    group's channels and positions, the variance around the stop-gradient mean as `tf.nn.moments`),
    so outputs and gradients agree to float32 rounding. Keras reshapes to (B, H, W, G, C/G) and
    reduces over (H, W, C/G): a strided reduction whose innermost axis is C/G channels (2 in the tiny
    backbone's first block). Here the means come from contiguous reductions over (H, W) per channel,
    then over each group's channels: 3.4x faster on the tiny backbone's first normalisation, a
    quarter of a CPU training step less (benchmarks/RESULTS.md). The gradient is written out
    (`ops.custom_gradient`: two reductions and four element-wise passes over the maps, where
    automatic differentiation of the forward pass made about twenty ops per layer, broadcasts
    included): 4 % off the CPU recipe's training step. Other layouts use the Keras code.

    `input_bias=True` adds a learnt per-channel bias to the input before normalising it: the
    function of a `Conv2D` with `use_bias=True` followed by this layer, with the bias held here
    and the convolution built without one (the tiny backbones). The bias only moves each image's
    per-channel constants (the mean subtracted), and its gradient, Σ dx over images and positions,
    follows from per-channel sums the gradient computes anyway; a convolution's own bias gradient
    is a reduction over its output maps fused into the weight gradient: with the biases held here
    the CPU recipe's training step takes 0.83-0.95x the time (benchmarks/RESULTS.md).
    """

    def __init__(self, *args, input_bias=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.input_bias = bool(input_bias)

    def build(self, input_shape):
        super().build(input_shape)
        if self.input_bias:
            self.bias = self.add_weight(shape=(int(input_shape[self.axis]),), name="input_bias",
                                        initializer="zeros")

    def get_config(self):
        config = super().get_config()
        config["input_bias"] = self.input_bias
        return config

    def call(self, inputs):
        if len(inputs.shape) != 4 or self.axis not in (-1, 3):
            return super().call(inputs + ops.cast(self.bias, inputs.dtype) if self.input_bias else inputs)
        low_precision = keras.backend.standardize_dtype(inputs.dtype) in ("float16", "bfloat16")
        x = ops.cast(inputs, "float32") if low_precision else inputs  # as Keras: statistics in float32
        channels = int(x.shape[-1])
        per_group = channels // self.groups

        gamma = ops.cast(self.gamma, "float32") if self.scale else None
        beta = ops.cast(self.beta, "float32") if self.center else None
        shift = ops.cast(self.bias, "float32") if self.input_bias else None
        groups, epsilon, name = self.groups, self.epsilon, self.name

        def group_sum(per_channel):  # (B, C) -> each channel's group sum, (B, C)
            grouped = ops.sum(ops.reshape(per_channel, (-1, groups, per_group)), axis=-1, keepdims=True)
            return ops.reshape(ops.broadcast_to(grouped, (ops.shape(per_channel)[0], groups, per_group)),
                               (-1, channels))

        def maps(per_channel):  # (B, C) -> (B, 1, 1, C)
            return per_channel[:, None, None, :]

        @ops.custom_gradient
        def normalise(x, *weights):
            positions = ops.cast(ops.shape(x)[1] * ops.shape(x)[2], "float32")
            count = positions * per_group
            sums = ops.sum(x, axis=(1, 2))  # per image and channel, of x + b
            sums = sums + positions * shift if shift is not None else sums
            mean = group_sum(sums) / count
            centred = x - maps(mean - shift if shift is not None else mean)  # x + b − μ
            r = ops.rsqrt(group_sum(ops.sum(ops.square(centred), axis=(1, 2))) / count + epsilon)
            x_hat = centred * maps(r)
            # without a learnt scale or offset (the tiny backbones) y is x̂ itself: no pass more
            y = x_hat * gamma if gamma is not None else x_hat
            y = y + beta if beta is not None else y

            def grad(upstream):
                # named "<layer>/backward/...", for benchmarks/profile_train_step.py
                with tf.name_scope(name), tf.name_scope("backward"):
                    return backward(upstream)

            def backward(upstream):
                # y = x̂ γ + β with x̂ = (x + b − μ) r per image and group: the input gradient is
                # γ r dy − (r / M) (Σ_g γ Σ dy + x̂ Σ_g γ Σ dy x̂), M the group's size
                sum_dy = ops.sum(upstream, axis=(1, 2))
                sum_dy_xhat = ops.sum(upstream * x_hat, axis=(1, 2))
                g = gamma if gamma is not None else 1.0
                on_x_hat = -r * group_sum(g * sum_dy_xhat) / count
                constant = -r * group_sum(g * sum_dy) / count
                dx = upstream * maps(r * g) + x_hat * maps(on_x_hat) + maps(constant)
                grads = [dx]
                if gamma is not None:
                    grads.append(ops.sum(sum_dy_xhat, axis=0))
                if beta is not None:
                    grads.append(ops.sum(sum_dy, axis=0))
                if shift is not None:  # Σ dx per channel, from the per-channel sums of its terms
                    sum_x_hat = r * (sums - positions * mean)
                    grads.append(ops.sum(r * g * sum_dy + on_x_hat * sum_x_hat + positions * constant, axis=0))
                return tuple(grads)

            return y, grad

        weights = [v for v in (gamma, beta, shift) if v is not None]
        return ops.cast(normalise(x, *weights), self.compute_dtype)


@keras.saving.register_keras_serializable(package="tf_netvlad")
class StandardizedConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose kernel is weight-standardised before every use.

    Weight standardisation (Qiao et al. 2019, "Micro-Batch Training with Batch-Channel Normalization
    and Weight Standardization"), scaled as the normaliser-free networks of Brock et al. 2021
    ("Characterizing signal propagation to close the performance gap in unnormalized ResNets"): each
    output channel's kernel, over its fan-in `kh·kw·Cin`, is shifted to mean 0 and scaled to
    variance `gain² / fan_in`,

        W' = gain · (W − mean(W)) / sqrt(fan_in · var(W) + epsilon),

    so the activations stay of the order of the input's scale from layer to layer (with `gain` =
    sqrt(2 / (1 − 1/π)) ≈ 1.71 before a ReLU: `RELU_GAIN`) and a constant input maps to the bias.
    Normalises the weights (a few thousand numbers) instead of the activations: the `tiny_ws`
    backbone trains from scratch without GroupNormalization, whose element-wise work over the
    feature maps was a sixth of a CPU training step (benchmarks/RESULTS.md). The stored kernel is
    the raw `W`; every other argument is `Conv2D`'s.
    """

    def __init__(self, *args, gain=1.0, epsilon=1e-4, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = float(gain)
        self.epsilon = float(epsilon)

    def standardized_kernel(self, kernel=None):
        """`W'` of the class docstring for `kernel` (default: the layer's), what the convolution uses."""
        kernel = ops.cast(self.kernel if kernel is None else kernel, "float32")
        fan_in = int(np.prod(kernel.shape[:-1]))
        mean = ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
        variance = ops.var(kernel, axis=(0, 1, 2), keepdims=True)
        return (kernel - mean) * ops.rsqrt(fan_in * variance + self.epsilon) * self.gain

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, ops.cast(self.standardized_kernel(kernel), inputs.dtype))

    def get_config(self):
        config = super().get_config()
        config.update({"gain": self.gain, "epsilon": self.epsilon})
        return config


def _shifted_gemm_kernel_grad(x, upstream, kernel_shape):
    """dL/dW of a stride-1 "same" kh×kw convolution (odd kh, kw) of NHWC `x`, as kh·kw GEMMs.

    Pad `x` and the output gradient `upstream` to the same (H + kh − 1) × (W + kw − 1) grid and
    flatten both to one row per padded pixel. Output pixel row r reads tap (i, j) of the kernel
    at input row r + (i − ph)·Wp + (j − pw): one constant offset per tap over the whole batch. So
    tap (i, j)'s gradient is x_rows[i·Wp + j : … + L]ᵀ · dy_rows[ph·Wp + pw : … + L], a
    (Cin × L)·(L × Cout) GEMM on a contiguous slice of rows. Rows of the padded grid that are not
    output pixels have a zero output gradient and add nothing; the taps of border pixels read the
    padding. No im2col copy (kh·kw times the input) is made.
    """
    kh, kw, cin, cout = kernel_shape
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    shape = tf.shape(x)
    wp = shape[2] + 2 * pw
    padding = [[0, 0], [ph, ph], [pw, pw], [0, 0]]
    x_rows = tf.reshape(tf.pad(x, padding), (-1, cin))
    start = ph * wp + pw  # the padded row of the first image's first output pixel
    length = tf.shape(x_rows)[0] - 2 * start  # through the last image's last output pixel
    dy_rows = tf.reshape(tf.pad(upstream, padding), (-1, cout))[start:start + length]
    taps = [tf.matmul(x_rows[i * wp + j:i * wp + j + length], dy_rows, transpose_a=True)
            for i in range(kh) for j in range(kw)]
    return tf.reshape(tf.stack(taps), (kh, kw, cin, cout))


def one_thread_per_op():
    """True when TensorFlow runs each op on one thread (an intra-op pool of 1, as
    `streams.configure_streams` sets up with one stream per core) and sees no GPU."""
    return (tf.config.threading.get_intra_op_parallelism_threads() == 1
            and not tf.config.list_physical_devices("GPU"))


def cpu_flags(cpuinfo_text=None):
    """The instruction-set flags of the first processor in `/proc/cpuinfo` (or in `cpuinfo_text`),
    a frozenset; empty where there is no such file or line (not Linux, or an ARM CPU's
    "Features")."""
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo_text = f.read()
        except OSError:
            return frozenset()
    for line in cpuinfo_text.split("\n\n")[0].splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@functools.cache
def _this_cpu_flags():
    return cpu_flags()


def gemm_weight_grads_wanted():
    """Whether `GemmGradConv2D` computes its weight gradient as GEMMs: only where that was measured
    as fast as oneDNN's backward-weights convolution or faster (benchmarks/RESULTS.md, "The weight
    gradients as GEMMs"): one thread per op (`one_thread_per_op`: the CPU recipe's two streams on
    2 cores), no GPU, and an x86 CPU with AVX2 but without AVX-512 (a Zen 3). On the Zen 4 with
    AVX-512 oneDNN's weight gradients of these layers run at the speed of their input gradients and
    the step with the GEMMs forced was 0-7 % slower in six pairs of runs; with two threads per op
    the GEMMs were slightly slower in every pair timed; GPUs and other CPUs are unmeasured. Read
    when a training step is traced."""
    flags = _this_cpu_flags()
    return "avx2" in flags and "avx512f" not in flags and one_thread_per_op()


@keras.saving.register_keras_serializable(package="tf_netvlad")
class GemmGradConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose weight gradient is computed as GEMMs when it trains.

    Same function, configuration and weights as `Conv2D`; inference (and every export) runs the
    plain convolution. Called with `training=True`, a stride-1, "same", undilated, ungrouped
    convolution with an odd kernel on NHWC maps keeps the forward convolution and its input
    gradient (oneDNN's kernels) but computes its weight gradient as kh·kw matrix products of
    row-shifted slices of the zero-padded input (`_shifted_gemm_kernel_grad`) where that was
    measured faster (`gemm_weight_grads_wanted`: one thread per op on an AVX2 CPU without AVX-512,
    as the CPU recipe's two streams run on a 2-core Zen 3). There, for the tiny backbones' narrow
    layers (16 to 64 channels), oneDNN's weight-gradient convolution ran at 0.43-0.48 of the GEMM
    rate inside the CPU recipe's training step, the largest single cost of the step. Gradients
    agree with `Conv2D`'s to float32 rounding. Everywhere else the layer is `Conv2D`.
    """

    def _gemm_grad_applies(self, inputs):
        return (keras.backend.backend() == "tensorflow" and gemm_weight_grads_wanted() and len(inputs.shape) == 4
                and self.data_format == "channels_last" and tuple(self.strides) == (1, 1)
                and tuple(self.dilation_rate) == (1, 1) and self.groups == 1
                and self.padding == "same" and all(k % 2 == 1 for k in self.kernel_size))

    def call(self, inputs, training=None):
        if not training or not self._gemm_grad_applies(inputs):
            return super().call(inputs)
        kernel = tf.cast(tf.convert_to_tensor(self.kernel), inputs.dtype)
        name = self.name

        @tf.custom_gradient
        def convolution(x, w):
            def grad(upstream):
                # named "<layer>/backward/...", for benchmarks/profile_train_step.py
                with tf.name_scope(name), tf.name_scope("backward"):
                    dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=w, out_backprop=upstream,
                                                        strides=[1, 1, 1, 1], padding="SAME")
                    return dx, _shifted_gemm_kernel_grad(x, upstream, w.shape)

            return tf.nn.conv2d(x, w, 1, "SAME"), grad

        outputs = convolution(inputs, kernel)
        if self.use_bias:
            outputs = outputs + tf.cast(self.bias, outputs.dtype)
        return self.activation(outputs) if self.activation is not None else outputs


# `StandardizedConv2D` gain before a ReLU: 1 / std(ReLU(z)) for z ~ N(0, 1), so that the ReLU's
# output has unit variance again (Brock et al. 2021, NF-ResNets).
RELU_GAIN = float(np.sqrt(2.0 / (1.0 - 1.0 / np.pi)))


def _vgg16(weights):
    """VGG16 cut at conv5_3 *before* its ReLU (as every NetVLAD reference does).

    keras.applications fuses the ReLU into `block5_conv3`; that conv is rebuilt linear and
    its weights copied.
    """
    app = keras.applications.VGG16(include_top=False, weights=weights, input_shape=(None, None, 3))
    x = inputs = keras.Input(shape=(None, None, 3), name="backbone_input")
    for layer in app.layers[1:]:
        if layer.name == "block5_conv3":
            break
        x = layer(x)
    last = app.get_layer("block5_conv3")
    conv = layers.Conv2D(512, 3, padding="same", activation=None, name="block5_conv3")
    x = conv(x)
    conv.set_weights(last.get_weights())
    return keras.Model(inputs, x, name="vgg16")


def _alexnet(weights):
    """AlexNet in torchvision's layout (64-192-384-256-256), cut at conv5 before its ReLU.

    keras.applications has no AlexNet, so `weights="imagenet"` is not available: load converted
    weights from a file (see `tf_netvlad convert`).
    """
    if weights == "imagenet":
        raise ValueError(
            "No ImageNet AlexNet ships with keras.applications. Pass weights=None, a Keras "
            "weights file for this backbone, or convert official/PyTorch weights with "
            "`tf_netvlad convert`."
        )
    x = inputs = keras.Input(shape=(None, None, 3), name="backbone_input")
    spec = [  # (name, filters, kernel, stride, pad, pool_after)
        ("conv1", 64, 11, 4, 2, True),
        ("conv2", 192, 5, 1, 2, True),
        ("conv3", 384, 3, 1, 1, False),
        ("conv4", 256, 3, 1, 1, False),
        ("conv5", 256, 3, 1, 1, False),
    ]
    for name, filters, kernel, stride, pad, pool in spec:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        x = layers.Conv2D(filters, kernel, strides=stride, name=name)(x)
        if name != "conv5":
            x = layers.ReLU(name=f"{name}_relu")(x)
        if pool:
            x = layers.MaxPooling2D(3, strides=2, name=f"{name}_pool")(x)
    return keras.Model(inputs, x, name="alexnet")


def _cut_application(app, layer_name, name):
    return keras.Model(app.inputs, app.get_layer(layer_name).output, name=name)


def _resnet50(weights):
    """ResNet50 cut after conv4 (`conv4_block6_out`, D = 1024, stride 16), as VPR benchmarks do."""
    app = keras.applications.ResNet50(include_top=False, weights=weights, input_shape=(None, None, 3))
    return _cut_application(app, "conv4_block6_out", "resnet50")


def _mobilenetv2(weights):
    """MobileNetV2 cut at `block_16_project` (linear bottleneck, D = 320, stride 32)."""
    app = keras.applications.MobileNetV2(include_top=False, weights=weights, input_shape=(None, None, 3))
    return _cut_application(app, "block_16_project", "mobilenetv2")


def _tiny(weights, first_stride=1, standardized=False):
    """A 4-conv CNN (D = 64, stride 8) for tests and CPU demos; last conv linear like conv5_3.

    conv1-3 are each followed by 2x2 max pooling, a GroupNormalization (8 groups, no learnt
    scale/offset) and a ReLU; their biases are held by the normalisation (`input_bias`: the same
    function as a convolution with a bias, a faster gradient), so the weights are conv1..conv4's
    kernels, conv4's bias and norm1..norm3's input biases. Trained from
    scratch without the normalisation, the ranking loss collapses the descriptors (every d² -> 0)
    at learning rates that learn anything; normalising after the pooling costs a quarter of
    normalising at full resolution. `first_stride=2` ("tiny_s2", the CPU recipe's backbone): conv1
    strides by 2 instead of being followed by the first max pooling, so no layer works at full
    resolution (conv1 has a quarter of the FLOPs; same stride 8, same weights' shapes). The
    convolutions are `GemmGradConv2D`s: `Conv2D`s whose stride-1 weight gradients are GEMMs in
    training where that is faster (the same function and weights; a `.keras` file saved with plain
    `Conv2D`s loads and trains the same).
    `standardized=True` ("tiny_ws", with `first_stride=2`): every convolution is a
    `StandardizedConv2D` (gain `RELU_GAIN` before a ReLU, 1 for the linear conv4) and there is no
    GroupNormalization; same weight shapes, a CPU training step takes 0.80-0.83x the time of
    "tiny_s2"'s (no normalisation of the feature maps: benchmarks/RESULTS.md), and it trains from
    scratch where the network without normalisation collapses.
    """
    if weights == "imagenet":
        raise ValueError("The `tiny` backbones have no pretrained weights; use weights=None.")

    def conv(filters, stride, gain, name):
        if standardized:
            return StandardizedConv2D(filters, 3, strides=stride, padding="same", gain=gain, name=name)
        # before a normalisation the convolution's bias is the normalisation's `input_bias`
        return GemmGradConv2D(filters, 3, strides=stride, padding="same", use_bias=name == "conv4", name=name)

    x = inputs = keras.Input(shape=(None, None, 3), name="backbone_input")
    for i, filters in enumerate((16, 32, 64), start=1):
        stride = first_stride if i == 1 else 1
        x = conv(filters, stride, RELU_GAIN, f"conv{i}")(x)
        if stride == 1:
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
        if not standardized:
            x = ChannelGroupNormalization(8, center=False, scale=False, input_bias=True, name=f"norm{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    x = conv(64, 1, 1.0, "conv4")(x)
    name = "tiny_ws" if standardized else ("tiny" if first_stride == 1 else f"tiny_s{first_stride}")
    return keras.Model(inputs, x, name=name)


def _tiny_s2(weights):
    return _tiny(weights, first_stride=2)


def _tiny_ws(weights):
    return _tiny(weights, first_stride=2, standardized=True)


# name -> (builder, preprocessing preset, default first trainable layer, ImageNet via keras)
BACKBONES = {
    "vgg16": (_vgg16, "caffe", "block5_conv1", True),
    "alexnet": (_alexnet, "torch", "conv5", False),
    "resnet50": (_resnet50, "caffe", "conv4_block1_1_conv", True),
    "mobilenetv2": (_mobilenetv2, "tf", "block_13_expand", True),
    "tiny": (_tiny, "tf", None, False),
    "tiny_s2": (_tiny_s2, "tf", None, False),
    "tiny_ws": (_tiny_ws, "tf", None, False),
}


def default_preprocessing(name):
    """The preprocessing preset a backbone's ImageNet weights expect (also used for weights=None)."""
    _check_name(name)
    return BACKBONES[name][1]


def _check_name(name):
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}. Valid names: {sorted(BACKBONES)}")


def set_trainable_from(backbone, first_trainable):
    """Freezes every layer before `first_trainable` (a layer name); None trains all layers."""
    if first_trainable is None:
        for layer in backbone.layers:
            layer.trainable = True
        return backbone
    names = [layer.name for layer in backbone.layers]
    if first_trainable not in names:
        raise ValueError(
            f"`trainable_from`={first_trainable!r} is not a layer of backbone {backbone.name!r}. "
            f"Layers: {names}"
        )
    start = names.index(first_trainable)
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= start
    return backbone


def build_backbone(name, weights=None, trainable_from="default"):
    """Builds a backbone that maps preprocessed images to local features `(batch, h, w, D)`.

    Args:
        name: one of `BACKBONES`: "vgg16" (conv5_3 before ReLU, D=512), "alexnet" (conv5 before
            ReLU, D=256), "resnet50" (conv4, D=1024), "mobilenetv2" (block_16_project, D=320),
            "tiny" (D=64), "tiny_s2" (`tiny` with a stride-2 first convolution: the CPU recipe's),
            "tiny_ws" (`tiny_s2` with weight-standardised convolutions, no GroupNormalization).
        weights: None (random), "imagenet" (keras.applications download; needs internet), or a
            path to a weights file (`.h5`/`.weights.h5`). For keras.applications backbones the
            file is the application's own no-top weights file; for the others, weights saved
            from this backbone.
        trainable_from: name of the first trainable layer (the paper trains conv5_1 and above
            of VGG16), None to train everything, or "default" for the backbone's default.
    """
    _check_name(name)
    builder, _, default_first, has_imagenet = BACKBONES[name]
    path = None
    if weights not in (None, "imagenet"):
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Weights file for backbone {name!r} not found: {path}")
    app_weights = path if (path and has_imagenet) else weights
    try:
        backbone = builder(None if path and not has_imagenet else app_weights)
    except Exception as err:  # keras.applications download or file mismatch
        if weights == "imagenet" and has_imagenet:
            raise RuntimeError(
                f"Could not load ImageNet weights for {name!r} ({err}). The weights are "
                "downloaded by keras.applications on first use into ~/.keras/models; on an "
                "offline machine copy the no-top weights file there or pass weights=FILE."
            ) from err
        raise
    if path and not has_imagenet:
        backbone.load_weights(path)
    return set_trainable_from(backbone, default_first if trainable_from == "default" else trainable_from)


def feature_dim(backbone):
    """Channels D of the local features, read from the backbone itself."""
    return int(backbone.output_shape[-1])
