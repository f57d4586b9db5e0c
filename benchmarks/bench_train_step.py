"""One CPU-recipe training step against the forward+backward FLOP time of its images.

The step is `training.config.CPU_RECIPE`'s: the tiny backbone (4 convs, GroupNormalization), K
clusters, a batch of `batch_size` tuples of 1 query + P positives + N negatives, i.e.
batch_size × (1 + P + N) images at the recipe's image size, Adam, the ranking loss, run through
Keras' own compiled train function (`model.train_function`, what `fit` calls per step) on an
in-memory batch. Its FLOPs are counted from the layer shapes: 2 × the multiply-adds of every
convolution (Kh·Kw·Cin·Cout per output pixel) plus the NetVLAD layer (4·N·D·K + 3ND + 6NK + 8KD per
image, as benchmarks/RESULTS.md); forward + backward = 3 × forward (the backward pass computes the
input and the weight gradients, two products of the forward's size). The machine's rate is a
float32 GEMM timed in the same run, interleaved with the variants (this machine's throughput is
bimodal, see the performance notes), so "FLOP time" = FLOPs / same-run GEMM rate and the ratio
step ÷ FLOP time is a same-run ratio. A GEMM of the largest convolution's im2col shape is timed too:
the rate a convolution of that shape can reach at best.

The pieces (forward, forward+backward without the optimizer, the backbone alone, the backbone
without its GroupNormalization layers, NetVLAD alone, the optimizer update, each backbone layer
with `--layers`) and the step with Keras' own `GroupNormalization` in place of the package's
`models.backbones.ChannelGroupNormalization` (same function and weights, statistics taken per
group instead of per channel first: the step before that layer) and the previous recipe's step
(`tiny` backbone, 4 positives per tuple: `previous_recipe`) and the recipe's step with the
`tiny_ws` backbone (weight-standardised convolutions, no GroupNormalization: `step_tiny_ws`, its
ratio against its own FLOP time) and the recipe's network with conv1..conv3's biases in the
convolutions instead of the GroupNorms (`step_conv_biases`: same function and weights, the step
before the normalisations held them) are timed in the same round-robin, so what makes the step
slower than its FLOPs can be read off. As the package does,
TF_ENABLE_ONEDNN_OPTS defaults to 1 (pass TF_ENABLE_ONEDNN_OPTS=0 to time TensorFlow's own
default on this CPU).
Where the step's wall time goes, op by op: benchmarks/profile_train_step.py.
Results and their reading: benchmarks/RESULTS.md.

Usage:
    python benchmarks/bench_train_step.py                  # TF defaults, 7 repeats of 10 steps
    python benchmarks/bench_train_step.py --layers         # also every backbone layer alone
    python benchmarks/bench_train_step.py --jit --bf16     # also the XLA and mixed_bfloat16 steps
    python benchmarks/bench_train_step.py --data demo_data # also the tuple pipeline alone (files, memory)
                                                           # and a `model.fit` epoch from memory
    python benchmarks/bench_train_step.py --compare-onednn # alternates processes with
                                                           # TF_ENABLE_ONEDNN_OPTS=0 and =1
    python benchmarks/bench_train_step.py --intra 2 --inter 1
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `import tf_netvlad` turns oneDNN on (unless the variable is set); TensorFlow is imported before
# tf_netvlad here, so the package default is set the same way first.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


# the instruction sets that decide oneDNN's convolution kernels on x86 (AVX2 or AVX-512, BF16)
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_info(cpuinfo_text=None):
    """The CPU the benchmark ran on, from `/proc/cpuinfo` (its first processor): model name, family,
    model and which of `CPU_FLAGS` it has. The step's ratio to the GEMM rate differs between CPUs
    (benchmarks/RESULTS.md: 1.32-1.48x on a Zen 4 with AVX-512, 1.42-1.98x on a Zen 3), so every
    result names its CPU. {} where there is no /proc/cpuinfo."""
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo_text = f.read()
        except OSError:
            return {}
    fields = {}
    for line in cpuinfo_text.split("\n\n")[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    return {"model_name": fields.get("model name"), "family": fields.get("cpu family"),
            "model": fields.get("model"), "flags": [f for f in CPU_FLAGS if f in flags]}


def describe_cpu(info):
    """One line: 'AMD EPYC (family 25, model 1; avx2 fma)'."""
    if not info:
        return "unknown CPU"
    return (f"{info['model_name']} (family {info['family']}, model {info['model']}; "
            f"{' '.join(info['flags']) or 'none of ' + '/'.join(CPU_FLAGS)})")


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="round-robin rounds (median over them)")
    parser.add_argument("--steps", type=int, default=10, help="calls per variant and round")
    parser.add_argument("--jit", action="store_true", help="also time the step compiled with XLA")
    parser.add_argument("--data", help="a generated demo-data folder: also time the tuple pipeline "
                        "(files, memory) and a `model.fit` epoch from memory")
    parser.add_argument("--cpu-streams", default="auto", metavar="auto|N",
                        help="as `tf_netvlad --cpu-streams` (models.streams.configure_streams): each batch "
                             "in N independent parts, each op on cores // N threads; the GEMMs are timed "
                             "in N parts side by side too (the machine's rate either way)")
    parser.add_argument("--compare-streams", action="store_true",
                        help="run this benchmark in fresh processes with --cpu-streams 1 and auto, "
                             "alternating, and compare the step times")
    parser.add_argument("--intra", type=int, default=0, help="TF intra-op threads (0: TF's default)")
    parser.add_argument("--inter", type=int, default=0, help="TF inter-op threads (0: TF's default)")
    parser.add_argument("--bf16", action="store_true",
                        help="also time the step under Keras' mixed_bfloat16 policy")
    parser.add_argument("--layers", action="store_true",
                        help="also time every backbone layer's forward+backward alone (the step's shapes, "
                             "the whole batch in one op: under 2 streams that op has one core while the GEMM "
                             "has two, so compare layers with --cpu-streams 1)")
    parser.add_argument("--only", help="comma-separated variant names to time (default: all)")
    parser.add_argument("--compare-onednn", action="store_true",
                        help="run this benchmark in fresh processes with TF_ENABLE_ONEDNN_OPTS=0 and =1, "
                             "alternating, and compare the step times")
    parser.add_argument("--rounds", type=int, default=3,
                        help="process pairs for --compare-onednn and --compare-streams")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- setup
def recipe():
    """The CPU recipe's TrainConfig."""
    from tf_netvlad.training.config import CPU_RECIPE, TrainConfig

    return TrainConfig(**CPU_RECIPE)


def previous_recipe(cfg):
    """`cfg` with the backbone and positives of the CPU recipe before this benchmark's last change."""
    import dataclasses

    return dataclasses.replace(cfg, backbone="tiny", num_positives=4)


def build_recipe_model(cfg, jit_compile=False, keras_groupnorm=False, conv_biases=False, plain_convs=False,
                       policy=None):
    """The recipe's model, compiled as `training.train` compiles it.

    `keras_groupnorm`: the backbone's `ChannelGroupNormalization` layers replaced by Keras' own
    `GroupNormalization` (same function and configuration). `conv_biases`: conv1..conv3's biases
    in the convolutions instead of the normalisations (`_with_conv_biases`). `plain_convs`: the
    backbone's `GemmGradConv2D` layers replaced by Keras' `Conv2D` (same function and weights, the
    weight gradients by oneDNN's convolution: `_with_plain_convs`). `policy`: a Keras dtype policy
    to build under (e.g. "mixed_bfloat16"; NetVLAD and the loss stay float32).
    """
    import inspect

    import keras

    from tf_netvlad.models.model import NetVLADModel, build_model

    keras.utils.set_random_seed(0)
    previous = keras.config.dtype_policy()
    if policy:
        keras.config.set_dtype_policy(policy)
    try:
        model = build_model(cfg.backbone, weights=cfg.weights, trainable_from=cfg.trainable_from,
                            num_clusters=cfg.num_clusters, variant=cfg.variant, margin=cfg.margin)
        if keras_groupnorm or conv_biases or plain_convs:
            backbone = _with_conv_biases(model.backbone) if keras_groupnorm or conv_biases else model.backbone
            backbone = _with_keras_groupnorm(backbone) if keras_groupnorm else backbone
            backbone = _with_plain_convs(backbone) if plain_convs else backbone
            model = NetVLADModel(backbone, preprocessing=keras.layers.serialize(model.preprocessing),
                                 num_clusters=cfg.num_clusters, variant=cfg.variant, margin=cfg.margin)
    finally:
        keras.config.set_dtype_policy(previous)
    optimizer = (keras.optimizers.Adam(learning_rate=cfg.lr) if cfg.optimizer == "adam"
                 else keras.optimizers.SGD(learning_rate=cfg.lr, momentum=cfg.momentum))
    model.compile(optimizer=optimizer, jit_compile=jit_compile)
    options = dict(loss_reduction=cfg.loss_reduction, weight_decay=cfg.weight_decay)
    if "exclude_very_hard" in inspect.signature(model.set_training_options).parameters:
        options["exclude_very_hard"] = cfg.exclude_very_hard and getattr(cfg, "violating_only", False)
    model.set_training_options(**options)
    model.optimizer.build(model.trainable_variables)
    return model


def tuple_batch(cfg, seed=0):
    """A batch of random tuples shaped as `training.tuples` yields them (float32 pixels 0..255)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    b, p, n = cfg.batch_size, cfg.num_positives, cfg.num_negatives
    h, w = cfg.image_size

    def pixels(*shape):
        return (rng.random(shape + (h, w, 3)) * 255).astype("float32")

    return {"query": pixels(b), "positives": pixels(b, p), "positive_mask": np.ones((b, p), "float32"),
            "negatives": pixels(b, n), "negative_mask": np.ones((b, n), "float32")}


def images_per_step(cfg):
    return cfg.batch_size * (1 + cfg.num_positives + cfg.num_negatives)


# --------------------------------------------------------------------------- FLOPs
def count_flops(model, image_size):
    """Forward FLOPs per image: 2 × conv/dense multiply-adds from the layer shapes, plus NetVLAD.

    Returns (total forward FLOPs, list of (layer name, FLOPs, im2col GEMM shape (M per image, K, N))).
    """
    import keras
    import numpy as np

    backbone = model.backbone
    weighted = [layer for layer in backbone.layers
                if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense))]
    probe = keras.Model(backbone.input, [layer.output for layer in weighted] + [backbone.output])
    outputs = probe(np.zeros((1,) + tuple(image_size) + (3,), "float32"))
    rows, total = [], 0
    for layer, out in zip(weighted, outputs[:-1]):
        spatial = int(np.prod(out.shape[1:-1]))
        c_out = int(out.shape[-1])
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            k = kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            k = kh * kw * int(layer.kernel.shape[2])
        else:
            k = int(layer.kernel.shape[0])
        flops = 2 * spatial * c_out * k
        rows.append((layer.name, flops, (spatial, k, c_out)))
        total += flops
    features = outputs[-1]
    n, d, kc = int(np.prod(features.shape[1:-1])), int(features.shape[-1]), model.num_clusters
    netvlad = 4 * n * d * kc + 3 * n * d + 6 * n * kc + 8 * kc * d
    rows.append(("netvlad", netvlad, (n, d, kc)))
    return total + netvlad, rows


def step_flops(model, cfg):
    """Forward + backward FLOPs of one training step of `model` under `cfg` (3x the forward)."""
    return 3 * count_flops(model, cfg.image_size)[0] * images_per_step(cfg)


# --------------------------------------------------------------------------- variants
# violating fractions (%) of the batch's negatives at which the sparse step is timed: late in the
# CPU recipe's 10-minute runs 15-20 % ("small"), 35-45 % (demo data, "other"); early 50-80 %
SPARSE_VIOLATING_PERCENTS = (20, 45, 70, 100)


def _margin_for_violating(model, batch, fraction):
    """(a margin at which `fraction` of `batch`'s negatives violate, the number of the batch's images
    whose descriptor then has a gradient)."""
    import numpy as np
    import tensorflow as tf

    q, p, n = (np.asarray(t) for t in model.tuple_descriptors(batch))
    best = (((q[:, None] - p) ** 2).sum(-1)).min(1)
    gaps = np.sort((((q[:, None] - n) ** 2).sum(-1) - best[:, None]).ravel())
    count = int(round(fraction * gaps.size))  # a negative violates iff its gap is below the margin
    if count == 0:
        margin = float(gaps[0]) - 1e-3
    elif count == gaps.size:
        margin = float(gaps[-1]) + 1.0
    else:
        margin = 0.5 * float(gaps[count - 1] + gaps[count])
    model.margin = margin
    flat = tf.concat([tf.reshape(t, (-1, t.shape[-1])) for t in (q, p, n)], 0)
    return margin, int(len(model._images_with_gradient(batch, flat)))


def set_sparse(model, batch, fraction):
    """Turns `model`'s sparse step on with a margin at which `fraction` of `batch`'s negatives violate
    and a learning rate of 0, so that the fraction stays put (Adam still computes its update).
    Returns the number of the batch's images that then train."""
    model.set_training_options(sparse_backward=True)
    model.optimizer.learning_rate.assign(0.0)
    model.margin, trained = _margin_for_violating(model, batch, fraction)
    return trained


def _trace_with_gemm_weight_grads(step):
    """Calls `step` (a training step not yet traced) once with GemmGradConv2D's GEMM form forced on,
    so that its trace keeps that form; returns how many weight gradients were built as GEMMs."""
    from unittest import mock

    from tf_netvlad.models import backbones

    built = []
    gemm_grad = backbones._shifted_gemm_kernel_grad

    def counted(*args):
        built.append(1)
        return gemm_grad(*args)

    with mock.patch.object(backbones, "gemm_weight_grads_wanted", lambda: True), \
            mock.patch.object(backbones, "_shifted_gemm_kernel_grad", counted):
        step()
    if not built:
        raise RuntimeError("step_gemm_weight_grads was traced without the GEMM form")
    return len(built)


def make_variants(cfg, args):
    """name -> a zero-argument callable running one of the timed things to completion."""
    import dataclasses
    import inspect

    import numpy as np
    import tensorflow as tf

    from tf_netvlad.models import losses, streams

    batch = tuple_batch(cfg)
    model = build_recipe_model(cfg)
    # non-zero biases in the normalisations (zero at initialisation), so that the descriptors of the
    # variants with the same weights but the biases elsewhere are compared on a function that uses them
    rng = np.random.default_rng(0)
    for layer in model.backbone.layers:
        if getattr(layer, "input_bias", False):
            layer.bias.assign(rng.normal(0, 0.5, layer.bias.shape).astype("float32"))
    ds = tf.data.Dataset.from_tensors(batch).repeat()
    iterator = iter(ds)
    model.make_train_function()
    variants = {}

    def keras_step(m=model, it=iterator):
        logs = m.train_function(it)
        return float(logs["loss"])  # waits for the step

    variants["step"] = keras_step

    def add_step(name, m, dataset=ds, same_weights=False):
        """Times `m`'s compiled training step as variant `name`, on `dataset`'s batch."""
        if same_weights:
            m.set_weights(model.get_weights())
        it = iter(dataset)
        m.make_train_function()
        variants[name] = lambda: keras_step(m, it)
        return m

    before = add_step("step_keras_groupnorm", build_recipe_model(cfg, keras_groupnorm=True), same_weights=True)
    probe = tuple_batch(cfg, seed=1)["negatives"][0]
    checks = {"keras_groupnorm_max_abs_diff": float(np.max(np.abs(model(probe) - before(probe))))}
    # the recipe's network with conv1..conv3's biases in the convolutions (the step before the
    # normalisations held them): the same function, the convolutions' fused bias gradients
    biased = add_step("step_conv_biases", build_recipe_model(cfg, conv_biases=True), same_weights=True)
    checks["conv_biases_max_abs_diff"] = float(np.max(np.abs(model(probe) - biased(probe))))
    # the recipe's network with Keras' Conv2D in place of GemmGradConv2D: the same function, the
    # weight gradients by oneDNN's backward-weights convolution (the step before the GEMMs)
    add_step("step_onednn_weight_grads", build_recipe_model(cfg, plain_convs=True), same_weights=True)
    # ... and with GemmGradConv2D's GEMM form forced on, whatever backbones.gemm_weight_grads_wanted()
    # says on this CPU: both forms of the weight gradients are timed on every CPU, `step` being one
    add_step("step_gemm_weight_grads", build_recipe_model(cfg), same_weights=True)
    checks["gemm_weight_grads_traced"] = _trace_with_gemm_weight_grads(variants["step_gemm_weight_grads"])
    # the step of the recipe before `tiny_s2` and 2 positives: `tiny` (conv1 and pool1 at full
    # resolution) with 4 positives per tuple
    previous_cfg = previous_recipe(cfg)
    previous = add_step("step_previous_recipe", build_recipe_model(previous_cfg),
                        tf.data.Dataset.from_tensors(tuple_batch(previous_cfg)).repeat())
    checks["previous_recipe_step_flops"] = step_flops(previous, previous_cfg)
    # the recipe with the `tiny_ws` backbone (weight-standardised convolutions, no GroupNormalization)
    ws_cfg = dataclasses.replace(cfg, backbone="tiny_ws")
    checks["tiny_ws_step_flops"] = step_flops(add_step("step_tiny_ws", build_recipe_model(ws_cfg)), ws_cfg)
    if "sparse_backward" in inspect.signature(model.set_training_options).parameters:
        # The step back-propagating only through the images that train (the CPU recipe's
        # `sparse_backward`) at set fractions of the batch's negatives violating.
        for percent in SPARSE_VIOLATING_PERCENTS:
            sparse = build_recipe_model(cfg)
            sparse.set_weights(model.get_weights())
            checks[f"sparse_{percent}_images_trained"] = set_sparse(sparse, batch, percent / 100)
            add_step(f"step_sparse_{percent}", sparse)
    if args.bf16:
        add_step("step_bf16", build_recipe_model(cfg, policy="mixed_bfloat16"), same_weights=True)
    if args.jit:
        add_step("step_xla", build_recipe_model(cfg, jit_compile=True), same_weights=True)

    x = {k: tf.constant(v) for k, v in batch.items()}
    images = tf.concat([x["query"], tf.reshape(x["positives"], (-1,) + cfg.image_size + (3,)),
                        tf.reshape(x["negatives"], (-1,) + cfg.image_size + (3,))], 0)

    @tf.function
    def forward():
        return model(images, training=True)

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            q, p, n = model.tuple_descriptors(x, training=True)
            loss = losses.ranking_loss(q, p, n, positive_mask=x["positive_mask"],
                                       negative_mask=x["negative_mask"], margin=model.margin)
        return tape.gradient(loss, model.trainable_variables)

    grads = [tf.zeros_like(v) for v in model.trainable_variables]
    opt_model = build_recipe_model(cfg)

    @tf.function
    def optimizer_apply():
        opt_model.optimizer.apply(grads, opt_model.trainable_variables)

    pre = model.preprocessing(images)
    backbone = model.backbone
    feat_shape = backbone(pre[:1]).shape
    g_feat = tf.random.stateless_normal((images.shape[0],) + tuple(feat_shape[1:]), seed=[1, 2])

    @tf.function
    def backbone_fb():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(backbone(pre, training=True) * g_feat)
        return tape.gradient(loss, backbone.trainable_variables)

    plain = _without_normalisation(backbone)

    @tf.function
    def backbone_no_gn_fb():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(plain(pre, training=True) * g_feat)
        return tape.gradient(loss, plain.trainable_variables)

    netvlad = model.netvlad
    feats = tf.constant(np.random.default_rng(1).normal(size=(images.shape[0],) + tuple(feat_shape[1:]))
                        .astype("float32"))
    g_vlad = tf.random.stateless_normal((images.shape[0], model.descriptor_dim), seed=[3, 4])

    @tf.function
    def netvlad_fb():
        with tf.GradientTape() as tape:
            tape.watch(feats)
            loss = tf.reduce_sum(netvlad(feats) * g_vlad)
        return tape.gradient(loss, [feats] + netvlad.trainable_variables)

    def run(fn):
        def call():
            out = fn()
            tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
        return call

    variants.update({"forward": run(forward), "forward_backward": run(forward_backward),
                     "optimizer_update": run(optimizer_apply), "backbone_fwd_bwd": run(backbone_fb),
                     "backbone_no_groupnorm_fwd_bwd": run(backbone_no_gn_fb), "netvlad_fwd_bwd": run(netvlad_fb)})

    # the machine: a square GEMM of about the step's FLOPs, and the largest conv's im2col GEMM, each
    # in as many row blocks side by side as the step has streams (one op per core, as the step's)
    a = tf.random.normal((2048, 2048))
    gemm = tf.function(lambda: tf.reduce_sum(streams.in_streams(lambda rows: tf.matmul(rows, a), a)))
    variants["gemm_2048"] = run(gemm)
    _, rows = count_flops(model, cfg.image_size)
    name, _, (m, k, n) = max(rows[:-1], key=lambda r: r[1])
    m *= images_per_step(cfg)
    lhs, rhs = tf.random.normal((m, k)), tf.random.normal((k, n))
    im2col = tf.function(lambda: tf.reduce_sum(streams.in_streams(lambda rows: tf.matmul(rows, rhs), lhs)))
    variants["gemm_im2col"] = run(im2col)
    shapes = {"gemm_2048": 2 * 2048 ** 3, "gemm_im2col": 2 * m * k * n,
              "gemm_im2col_shape": f"{name}: ({m} x {k}) @ ({k} x {n})"}

    if args.layers:
        variants.update({f"layer:{k}": run(fn) for k, fn in _layer_variants(backbone, pre).items()})
    if args.only:
        keep = set(args.only.split(",")) | {"step", "step_previous_recipe", "step_tiny_ws", "gemm_2048",
                                            "gemm_im2col", "step_onednn_weight_grads",
                                            "step_gemm_weight_grads"}
        variants = {k: v for k, v in variants.items() if k in keep}
    return model, variants, dict(shapes, **checks)


def _layer_variants(backbone, x):
    """name -> tf.function: forward+backward of one backbone layer alone on the step's activations
    (gradients of its weights, and of its input except for the first layer, as in the step)."""
    import keras
    import tensorflow as tf

    def timed(fn, variables, inp, g, first):
        @tf.function
        def fwd_bwd():
            with tf.GradientTape() as tape:
                if not first:
                    tape.watch(inp)
                loss = tf.reduce_sum(fn(inp) * g)
            return tape.gradient(loss, list(variables) + ([] if first else [inp]))
        return fwd_bwd

    out = {}
    for i, layer in enumerate(backbone.layers[1:]):
        inp = tf.constant(x.numpy())
        y = layer(inp, training=True)
        g = tf.random.stateless_normal(y.shape, seed=[i, 7])
        out[layer.name] = timed(lambda t, layer=layer: layer(t, training=True), layer.trainable_variables,
                                inp, g, i == 0)
        if isinstance(layer, keras.layers.GroupNormalization):
            config = layer.get_config()
            config.pop("input_bias", None)  # Keras' layer has none: the normalisation alone
            plain = keras.layers.GroupNormalization.from_config(config)
            out[layer.name + "_keras"] = timed(lambda t, plain=plain: plain(t, training=True), [], inp, g, False)
        x = y
    return out


def _with_keras_groupnorm(backbone):
    """A copy of a sequential backbone (same weights) with Keras' `GroupNormalization` in place of
    the package's `ChannelGroupNormalization` (a subclass: same configuration, other statistics);
    the biases must be in the convolutions (`_with_conv_biases`)."""
    import keras

    x = inputs = keras.Input(shape=(None, None, 3))
    for layer in backbone.layers[1:]:
        cls = (keras.layers.GroupNormalization if isinstance(layer, keras.layers.GroupNormalization)
               else layer.__class__)
        config = layer.get_config()
        config.pop("input_bias", None)  # (False: `_with_conv_biases` first)
        clone = cls.from_config(config)
        x = clone(x)
        if layer.weights:
            clone.set_weights(layer.get_weights())
    return keras.Model(inputs, x, name=backbone.name)


def _with_conv_biases(backbone):
    """A copy of a tiny backbone (same function and weights) with conv1..conv3's biases in the
    convolutions, as before `ChannelGroupNormalization(input_bias=True)` held them."""
    import keras

    from tf_netvlad.models.backbones import ChannelGroupNormalization

    biases = {layer.name.replace("norm", "conv"): layer.get_weights()[0] for layer in backbone.layers
              if isinstance(layer, ChannelGroupNormalization) and layer.input_bias}
    x = inputs = keras.Input(shape=(None, None, 3))
    for layer in backbone.layers[1:]:
        config = layer.get_config()
        if layer.name in biases:
            config["use_bias"] = True
        if isinstance(layer, ChannelGroupNormalization):
            config["input_bias"] = False
        clone = layer.__class__.from_config(config)
        x = clone(x)
        if clone.weights:
            clone.set_weights(layer.get_weights() + ([biases[layer.name]] if layer.name in biases else []))
    return keras.Model(inputs, x, name=backbone.name)


def _with_plain_convs(backbone):
    """A copy of a tiny backbone (same function and weights) with Keras' `Conv2D` in place of its
    `GemmGradConv2D` layers: the weight gradients by oneDNN's convolution, as before the GEMMs."""
    import keras

    from tf_netvlad.models.backbones import GemmGradConv2D

    x = inputs = keras.Input(shape=(None, None, 3))
    for layer in backbone.layers[1:]:
        cls = keras.layers.Conv2D if isinstance(layer, GemmGradConv2D) else layer.__class__
        clone = cls.from_config(layer.get_config())
        x = clone(x)
        if layer.weights:
            clone.set_weights(layer.get_weights())
    return keras.Model(inputs, x, name=backbone.name)


def _without_normalisation(backbone):
    """The same backbone (same conv weights) with its GroupNormalization layers left out."""
    import keras

    x = inputs = keras.Input(shape=(None, None, 3))
    for layer in backbone.layers[1:]:
        if isinstance(layer, keras.layers.GroupNormalization):
            continue
        clone = layer.__class__.from_config(layer.get_config())
        x = clone(x)
        if layer.weights:
            clone.set_weights(layer.get_weights())
    return keras.Model(inputs, x, name="tiny_without_groupnorm")


def _tuple_pipeline(cfg, data_dir, rows_n, memory, augment=False):
    """The training `TuplePipeline` of `data_dir`'s training split, its table filled with `rows_n`
    random tuples; `memory`: the images decoded once (`data.decoded.DecodedImages`), as
    `training.train` holds them when they fit `image_cache_mb`; `augment`: the recipe's augmentation."""
    import numpy as np

    from tf_netvlad.data import split_loading
    from tf_netvlad.data.decoded import DecodedImages
    from tf_netvlad.training import tuples
    from tf_netvlad.training.augment import Augmentation

    split = split_loading.load_split(os.path.join(data_dir, "demo_train.mat"))
    images = (DecodedImages.load(list(split.db_paths) + list(split.query_paths), split.root, cfg.image_size)
              if memory else None)
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(split.num_queries, size=(rows_n, 1)),
                           rng.integers(split.num_db, size=(rows_n, cfg.num_positives + cfg.num_negatives))], 1)
    pipe = tuples.TuplePipeline(split.query_paths, split.db_paths, split.root, cfg.image_size, num_rows=rows_n,
                                num_positives=cfg.num_positives, num_negatives=cfg.num_negatives,
                                batch_size=cfg.batch_size, on_bad_image=cfg.on_bad_image, images=images,
                                augmentation=Augmentation() if augment else None)
    pipe.assign(rows)
    return pipe


def pipeline_ms_per_batch(cfg, data_dir, batches=60, warmup=10, memory=False):
    """ms per batch of the real tuple pipeline alone (JPEG read + decode + resize of every image, or
    with `memory` a gather from the images decoded once), pulled back to back so that its prefetch
    buffer cannot hide the production cost."""
    pipe = _tuple_pipeline(cfg, data_dir, 400, memory)
    iterator = iter(pipe.dataset().repeat())
    for _ in range(warmup):
        next(iterator)["query"].numpy()
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)["query"].numpy()
    return (time.perf_counter() - start) / batches * 1000


def fit_ms_per_step(cfg, data_dir, model, bare_step, rounds, batches=100):
    """(fit, bare) ms per step, medians over `rounds`: per round one `model.fit` call over an epoch
    of `batches` batches of the tuple pipeline from memory with the recipe's augmentation (the call's
    start and end included: `training.train` makes one call per refresh cycle), then as many bare
    compiled steps (`bare_step`, the benchmark's "step") on an in-memory batch."""
    pipe = _tuple_pipeline(cfg, data_dir, batches * cfg.batch_size, memory=True, augment=cfg.augment)
    model.fit(pipe.dataset(num_batches=pipe.num_batches), verbose=0)  # trace
    fit, bare = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        model.fit(pipe.dataset(num_batches=pipe.num_batches), verbose=0)
        fit.append((time.perf_counter() - start) / batches * 1000)
        start = time.perf_counter()
        for _ in range(batches):
            bare_step()
        bare.append((time.perf_counter() - start) / batches * 1000)
    return _median(fit), _median(bare)


# --------------------------------------------------------------------------- timing
def time_variants(variants, repeats, steps, cpu=None):
    """Round-robin: per round, `steps` calls of each variant; returns name -> per-round ms/call.

    `cpu`, a dict, receives name -> per-round CPU ms/call of the whole process (all threads: the
    operations' work, and the thread pools' spinning and dispatch while they wait).
    """
    for fn in variants.values():  # trace, compile, warm up
        fn()
        fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps * 1000)
            if cpu is not None:
                cpu.setdefault(name, []).append((time.process_time() - start_cpu) / steps * 1000)
    return times


def _median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def measure(args):
    import tensorflow as tf

    from tf_netvlad.models import backbones
    from tf_netvlad.models.streams import configure_streams

    cpu_streams = configure_streams(args.cpu_streams)  # before any TensorFlow work
    if args.intra:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra)
    if args.inter:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    cfg = recipe()
    model, variants, shapes = make_variants(cfg, args)
    fwd_per_image, rows = count_flops(model, cfg.image_size)
    n_images = images_per_step(cfg)
    recipe_flops = 3 * fwd_per_image * n_images
    cpu = {}
    times = time_variants(variants, args.repeats, args.steps, cpu=cpu)
    med = {k: _median(v) for k, v in times.items()}
    cpu_med = {k: _median(v) for k, v in cpu.items()}
    best = {k: min(v) for k, v in times.items()}
    gemm_rate = shapes["gemm_2048"] / (med["gemm_2048"] / 1000) / 1e9
    def ms_at_gemm_rate(flops):
        return flops / (gemm_rate * 1e9) * 1000

    flop_ms = ms_at_gemm_rate(recipe_flops)
    try:
        from tensorflow.python.util import _pywrap_util_port
        onednn = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        onednn = None
    result = {
        "recipe": {"backbone": cfg.backbone, "num_clusters": cfg.num_clusters, "image_size": list(cfg.image_size),
                   "batch_size": cfg.batch_size, "num_positives": cfg.num_positives,
                   "num_negatives": cfg.num_negatives, "images_per_step": n_images,
                   "optimizer": cfg.optimizer, "loss_reduction": cfg.loss_reduction},
        "flops": {"forward_per_image": fwd_per_image, "layers": [[n, f] for n, f, _ in rows],
                  "layer_shapes": [[n, f, list(shape)] for n, f, shape in rows[:-1]],
                  "step_forward_backward": recipe_flops},
        "gemm_2048_gflops": gemm_rate,
        "gemm_im2col_gflops": shapes["gemm_im2col"] / (med["gemm_im2col"] / 1000) / 1e9 if "gemm_im2col" in med
        else None,
        "gemm_im2col_shape": shapes["gemm_im2col_shape"],
        "keras_groupnorm_max_abs_diff": shapes["keras_groupnorm_max_abs_diff"],
        "conv_biases_max_abs_diff": shapes["conv_biases_max_abs_diff"],
        "gemm_weight_grads_wanted": backbones.gemm_weight_grads_wanted(),
        "gemm_weight_grads_traced": shapes.get("gemm_weight_grads_traced"),
        "step_ms_median": med["step"], "step_ms_best": best["step"],
        "previous_recipe": {"backbone": "tiny", "num_positives": 4, "step_ms_median": med["step_previous_recipe"],
                            "flop_ms_at_gemm_rate": ms_at_gemm_rate(shapes["previous_recipe_step_flops"])},
        "tiny_ws": {"backbone": "tiny_ws", "step_ms_median": med["step_tiny_ws"],
                    "flop_ms_at_gemm_rate": ms_at_gemm_rate(shapes["tiny_ws_step_flops"])},
        "flop_ms_at_gemm_rate": flop_ms, "ratio": med["step"] / flop_ms,
        "ms_median": med, "ms_best": best, "cpu_ms_median": cpu_med,
        "env": {"TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"), "onednn": onednn,
                "intra": tf.config.threading.get_intra_op_parallelism_threads(),
                "inter": tf.config.threading.get_inter_op_parallelism_threads(),
                "nproc": os.cpu_count(), "cpu_streams": cpu_streams, "loadavg_end": os.getloadavg()[0],
                "tensorflow": tf.__version__, "cpu": cpu_info()},
        "repeats": args.repeats, "steps": args.steps,
    }
    if args.data:
        result["tuple_pipeline_ms_per_batch"] = pipeline_ms_per_batch(cfg, args.data)
        result["tuple_pipeline_memory_ms_per_batch"] = pipeline_ms_per_batch(cfg, args.data, memory=True)
        result["fit_ms_per_step"], result["fit_bare_ms_per_step"] = fit_ms_per_step(
            cfg, args.data, model, variants["step"], args.repeats)
    result["sparse"] = {
        str(percent): {"step_ms_median": med[f"step_sparse_{percent}"],
                       "images_trained": shapes[f"sparse_{percent}_images_trained"],
                       "ratio": med[f"step_sparse_{percent}"] / flop_ms}
        for percent in SPARSE_VIOLATING_PERCENTS if f"step_sparse_{percent}" in med}
    if "step_xla" in med:
        result["step_xla_ms_median"] = med["step_xla"]
        result["ratio_xla"] = med["step_xla"] / flop_ms
    return result


def _print_same_function_variant(result, name, label, recipe_note):
    """One line for a variant that computes the recipe's function another way: its step, its ratio to
    the FLOP time, and the recipe's step as a multiple of it."""
    ms = result["ms_median"][name]
    print(f"{label}: step {ms:.1f} ms, ratio {ms / result['flop_ms_at_gemm_rate']:.2f}x; the recipe's step "
          f"{recipe_note}takes {result['step_ms_median'] / ms:.2f}x its time")


def print_report(result):
    r = result["recipe"]
    print(f"CPU recipe step: {r['backbone']} backbone, K = {r['num_clusters']}, {r['batch_size']} tuples x "
          f"(1 + {r['num_positives']} + {r['num_negatives']}) = {r['images_per_step']} images at "
          f"{r['image_size'][0]}x{r['image_size'][1]}, {r['optimizer']}, loss reduction {r['loss_reduction']}")
    f = result["flops"]
    print(f"forward FLOPs per image {f['forward_per_image'] / 1e6:.1f} M ("
          + ", ".join(f"{n} {v / 1e6:.1f}" for n, v in f["layers"]) + "); step forward+backward "
          f"{f['step_forward_backward'] / 1e9:.2f} GFLOP")
    print(f"same-run GEMM 2048^3: {result['gemm_2048_gflops']:.0f} GFLOP/s; im2col GEMM "
          f"{result['gemm_im2col_shape']}: {result['gemm_im2col_gflops']:.0f} GFLOP/s")
    print(f"descriptors with Keras' GroupNormalization vs the package's: max |diff| "
          f"{result['keras_groupnorm_max_abs_diff']:.1e}")
    print(f"step, every image training (the full step) {result['step_ms_median']:.1f} ms (best {result['step_ms_best']:.1f}); FLOPs at the GEMM rate "
          f"{result['flop_ms_at_gemm_rate']:.1f} ms; ratio {result['ratio']:.2f}x"
          + (f"; XLA step {result['step_xla_ms_median']:.1f} ms (ratio {result['ratio_xla']:.2f}x)"
             if "step_xla_ms_median" in result else ""))
    if "step_conv_biases" in result["ms_median"]:
        _print_same_function_variant(
            result, "step_conv_biases", f"the recipe with conv1..conv3's biases in the convolutions (same "
            f"function, max |diff| {result['conv_biases_max_abs_diff']:.1e})", "")
    if "step_onednn_weight_grads" in result["ms_median"]:
        _print_same_function_variant(
            result, "step_onednn_weight_grads", "the recipe with oneDNN's weight-gradient convolutions (Keras' "
            "Conv2D, same function)", "(weight gradients as GEMMs where backbones.gemm_weight_grads_wanted(), "
            "else the same) ")
    if "step_gemm_weight_grads" in result["ms_median"]:
        _print_same_function_variant(
            result, "step_gemm_weight_grads", f"the recipe with its weight gradients as GEMMs, forced "
            f"({result['gemm_weight_grads_traced']} built; same function)", "(GEMMs here "
            f"{'wanted' if result['gemm_weight_grads_wanted'] else 'not wanted'}) ")
    prev = result["previous_recipe"]
    print(f"previous recipe (tiny, 4 positives): step {prev['step_ms_median']:.1f} ms; FLOPs at the GEMM rate "
          f"{prev['flop_ms_at_gemm_rate']:.1f} ms; ratio {prev['step_ms_median'] / prev['flop_ms_at_gemm_rate']:.2f}x; "
          f"this recipe's step takes {result['step_ms_median'] / prev['step_ms_median']:.2f}x its time")
    ws = result["tiny_ws"]
    print(f"the recipe with the tiny_ws backbone (weight-standardised convolutions, no GroupNormalization): "
          f"step {ws['step_ms_median']:.1f} ms; FLOPs at the GEMM rate {ws['flop_ms_at_gemm_rate']:.1f} ms; "
          f"ratio {ws['step_ms_median'] / ws['flop_ms_at_gemm_rate']:.2f}x")
    for percent, sparse in result.get("sparse", {}).items():
        print(f"the step with sparse_backward, {percent} % of the negatives violating "
              f"({sparse['images_trained']} of {r['images_per_step']} images train): "
              f"{sparse['step_ms_median']:.1f} ms, {sparse['ratio']:.2f}x the FLOP time of all its images, "
              f"{sparse['step_ms_median'] / result['step_ms_median']:.2f}x the full step")
    cpu = result["cpu_ms_median"]
    cores = {name: cpu[name] / result["ms_median"][name] for name in ("step", "gemm_2048")}
    print(f"CPU time of the process: step {cpu['step']:.1f} ms ({cores['step']:.2f} cores busy), the GEMM "
          f"{cpu['gemm_2048']:.1f} ms ({cores['gemm_2048']:.2f}); the step's FLOPs at the GEMM's CPU rate "
          f"{result['flop_ms_at_gemm_rate'] * cores['gemm_2048']:.1f} CPU ms "
          f"(CPU ratio {cpu['step'] / (result['flop_ms_at_gemm_rate'] * cores['gemm_2048']):.2f}x)")
    print("pieces (median / best ms per call; CPU ms of the process per call):")
    for name, value in result["ms_median"].items():
        print(f"  {name:32s} {value:8.1f} {result['ms_best'][name]:8.1f} {cpu[name]:8.1f}")
    if "tuple_pipeline_ms_per_batch" in result:
        print(f"tuple pipeline alone (JPEG files, back to back): {result['tuple_pipeline_ms_per_batch']:.1f} ms "
              f"per batch; from the images decoded in memory: {result['tuple_pipeline_memory_ms_per_batch']:.1f} ms")
        fit, bare = result["fit_ms_per_step"], result["fit_bare_ms_per_step"]
        print(f"model.fit over an epoch from memory (augmented, call start and end included): {fit:.1f} ms per "
              f"step against {bare:.1f} ms for the bare step in the same rounds ({fit / bare:.2f}x)")
    layers = {k.split(":", 1)[1]: v for k, v in result["ms_median"].items() if k.startswith("layer:")}
    if layers:
        shapes = result["flops"]["layer_shapes"]
        # forward+backward FLOPs of the step's images: the first layer needs no input gradient (2x
        # its forward), every other convolution 3x
        conv = {n: f * result["recipe"]["images_per_step"] * (2 if i == 0 else 3)
                for i, (n, f, _) in enumerate(shapes)}
        print(f"backbone layers alone, forward+backward (sum {sum(layers.values()):.1f} ms):")
        for name, ms in layers.items():
            extra = ""
            if name in conv:
                flops = conv[name]
                extra = (f"  {flops / 1e9:.2f} GFLOP, {flops / ms / 1e6:.0f} GFLOP/s, FLOP time at the GEMM "
                         f"rate {flops / result['gemm_2048_gflops'] / 1e6:.1f} ms")
            print(f"  {name:10s} {ms:8.1f} ms{extra}")
        conv_ms = sum(ms for name, ms in layers.items() if name in conv)
        conv_flop_ms = sum(conv[name] for name in layers if name in conv) / result["gemm_2048_gflops"] / 1e6
        print(f"the convolutions alone: {conv_ms:.1f} ms against {conv_flop_ms:.1f} ms of FLOP time "
              f"({conv_ms / conv_flop_ms:.2f}x; with nothing else in the step, its ratio would be "
              f"{conv_ms / result['flop_ms_at_gemm_rate']:.2f}x)")
    print(f"CPU: {describe_cpu(result['env']['cpu'])}")
    print("env:", json.dumps(result["env"]))


def compare_processes(args, flag, settings):
    """Alternates fresh processes of this benchmark, one per `(label, env, argv)` of `settings`
    (`flag` dropped from the command line); prints each run and the median step ratios."""
    results = {label: [] for label, _, _ in settings}
    argv = [a for a in sys.argv[1:] if a != flag]
    print(f"CPU: {describe_cpu(cpu_info())}, {os.cpu_count()} cores", flush=True)
    for _ in range(args.rounds):
        for label, env, extra in settings:
            out = subprocess.run([sys.executable, __file__, "--json"] + argv + extra, env=dict(os.environ, **env),
                                 capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[label].append(res)
            pieces = ", ".join(f"{k} {v:.1f}" for k, v in res["ms_median"].items() if not k.startswith("gemm"))
            print(f"{label} (oneDNN {res['env']['onednn']}, {res['env']['cpu_streams']} stream(s)): GEMM "
                  f"{res['gemm_2048_gflops']:.0f} GFLOP/s, FLOP time {res['flop_ms_at_gemm_rate']:.1f} ms, step "
                  f"ratio {res['ratio']:.2f}x; ms: {pieces}; load {res['env']['loadavg_end']:.1f}", flush=True)
    summary = {}
    for label, runs in results.items():
        summary[label] = {name: _median([r["ms_median"][name] / r["flop_ms_at_gemm_rate"] for r in runs])
                          for name in runs[0]["ms_median"] if name.startswith("step")}
    step = {k: _median([r["step_ms_median"] for r in v]) for k, v in results.items()}
    first, second = (label for label, _, _ in settings)
    print(json.dumps({"ratio_to_flop_time": summary, "step_ms": step, "speedup": step[first] / step[second]}))


def compare_onednn(args):
    """Alternates fresh processes with TF_ENABLE_ONEDNN_OPTS=0 and =1; prints both and the ratio."""
    compare_processes(args, "--compare-onednn", [(f"TF_ENABLE_ONEDNN_OPTS={flag}", {"TF_ENABLE_ONEDNN_OPTS": flag}, [])
                                                 for flag in ("0", "1")])


def compare_streams(args):
    """Alternates fresh processes with --cpu-streams 1 and auto; prints both and the ratio."""
    compare_processes(args, "--compare-streams", [(f"--cpu-streams {value}", {}, ["--cpu-streams", value])
                                                  for value in ("1", "auto")])


def main():
    args = _parse_args()
    if args.compare_onednn:
        compare_onednn(args)
        return
    if args.compare_streams:
        compare_streams(args)
        return
    result = measure(args)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)


if __name__ == "__main__":
    main()
