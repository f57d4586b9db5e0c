"""Where the CPU recipe's training step spends its wall time: a `tf.profiler` trace of the step.

`bench_train_step.py` times the step against the FLOP time of its images; this script says where
the difference goes. It traces `steps` calls of the recipe's compiled step (Keras'
`model.train_function` on an in-memory batch, as the benchmark times it), reads the trace's op
events from TensorFlow's executor threads, and prints:

- the step's wall time split by how many ops run at once (0, 1, 2, ...: the executor runs
  independent ops side by side, e.g. a convolution's input and weight gradients);
- the wall time during which at least one convolution runs, against the convolutions' FLOP time at
  the same-run GEMM rate, and what is left for everything else under the ≤ 1.5× target of the
  step's FLOP time;
- op time per backbone layer, forward and backward (summed over threads, so two ops running side by
  side both count), and the ops that take the longest.

The trace itself slows the step by a few per cent (its wall time is printed beside the untraced
one). Results and their reading: benchmarks/RESULTS.md.

Usage:
    python benchmarks/profile_train_step.py                 # the full step, 20 traced steps
    python benchmarks/profile_train_step.py --sparse 20     # the sparse step, 20 % of negatives violating
    python benchmarks/profile_train_step.py --cpu-streams 1 # one stream (TensorFlow's own threading)
    python benchmarks/profile_train_step.py --onednn-weight-grads  # the convolutions' weight gradients
                                                            # by oneDNN, as before GemmGradConv2D
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the package does (see bench_train_step.py)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="traced steps")
    parser.add_argument("--sparse", type=int, choices=(20, 45, 70, 100),
                        help="trace the sparse_backward step with this percentage of the negatives violating")
    parser.add_argument("--top", type=int, default=25, help="how many of the longest ops to list")
    parser.add_argument("--onednn-weight-grads", action="store_true",
                        help="the recipe's network with Keras' Conv2D in place of GemmGradConv2D: the weight "
                             "gradients by oneDNN's backward-weights convolution, as before the GEMMs")
    parser.add_argument("--cpu-streams", default="auto", metavar="auto|N",
                        help="as `tf_netvlad --cpu-streams` (models.streams.configure_streams): the step runs "
                             "each batch as N parts side by side, and the GEMM rate is timed in N parts too, "
                             "as bench_train_step.py does (default: auto, the CLI's default)")
    return parser.parse_args(argv)


def op_events(logdir):
    """[(start_ps, end_ps, thread, op name, op type)] of the executor threads' op events in the trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as f:
        space.ParseFromString(f.read())
    events = []
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or name.startswith("Executor"):
                    continue  # the executor's own regions, not ops
                op_name, op_type = name.rsplit(":", 1)
                start = line.timestamp_ns * 1000 + event.offset_ps
                events.append((start, start + event.duration_ps, line.name, op_name, op_type))
    return events


def concurrency(events):
    """{number of ops running at once: picoseconds} over the span of `events`."""
    points = sorted([(s, 1) for s, *_ in events] + [(e, -1) for _, e, *_ in events])
    spans, running, last = collections.Counter(), 0, points[0][0]
    for t, delta in points:
        spans[running] += t - last
        running, last = running + delta, t
    return spans


def covered(events):
    """Picoseconds during which at least one of `events` runs."""
    total, end = 0, None
    for s, e, *_ in sorted(events):
        if end is None or s > end:
            total, end = total + (e - s), e
        elif e > end:
            total, end = total + (e - end), e
    return total


def is_conv(op_type, op_name=""):
    """Conv2D, its input and weight gradients, and oneDNN's fused forms (`_MklNativeFusedConv2D`, ...);
    the matrix products of a `GemmGradConv2D`'s weight gradient ("conv<i>/backward/MatMul")."""
    return "Conv2D" in op_type or ("MatMul" in op_type and re.search(r"(^|/)conv\d+(_\d+)?/backward/", op_name)
                                   is not None)


def layer_of(op_name, layer_names):
    """The backbone/NetVLAD layer an op belongs to (Keras scopes a layer `name` as `name_<n>`)."""
    for part in op_name.split("/"):
        base = re.sub(r"_\d+$", "", part)
        if base in layer_names:
            return base
    return "loss, optimizer, other"


def profile(args):
    import bench_train_step as bench
    import tensorflow as tf

    from tf_netvlad.models import streams

    cpu_streams = streams.configure_streams(args.cpu_streams)  # before any TensorFlow work
    cfg = bench.recipe()
    model = bench.build_recipe_model(cfg, plain_convs=args.onednn_weight_grads)
    batch = bench.tuple_batch(cfg)
    label = "the full step (every image trains)"
    if args.sparse:
        trained = bench.set_sparse(model, batch, args.sparse / 100)
        label = (f"the sparse step, {args.sparse} % of the negatives violating "
                 f"({trained} of {bench.images_per_step(cfg)} images train)")
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    model.make_train_function()

    def step():
        return float(model.train_function(iterator)["loss"])

    a = tf.random.normal((2048, 2048))
    # in N parts side by side under N streams, as the step runs its images (bench_train_step.py)
    gemm = tf.function(lambda: tf.reduce_sum(streams.in_streams(lambda rows: tf.matmul(rows, a), a)))
    times = bench.time_variants({"gemm": lambda: float(gemm()), "step": step}, repeats=5, steps=5)
    gemm_rate = 2 * 2048 ** 3 / (bench._median(times["gemm"]) / 1000)  # FLOP/s
    untraced_ms = bench._median(times["step"])

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        traced_ms = (time.perf_counter() - start) / args.steps * 1000
        tf.profiler.experimental.stop()
        events = op_events(logdir)

    n = args.steps
    per_step = lambda ps: ps / 1e9 / n  # noqa: E731  (picoseconds over the run -> ms per step)
    fwd_per_image, rows = bench.count_flops(model, cfg.image_size)
    images = bench.images_per_step(cfg)
    step_flop_ms = 3 * fwd_per_image * images / gemm_rate * 1000
    conv_flop_ms = 3 * sum(f for name, f, _ in rows[:-1]) * images / gemm_rate * 1000
    spans = concurrency(events)
    conv_wall = per_step(covered([e for e in events if is_conv(e[4], e[3])]))

    print(f"CPU: {bench.describe_cpu(bench.cpu_info())}")
    print(f"{label}, {cpu_streams} stream(s): {untraced_ms:.1f} ms untraced, {traced_ms:.1f} ms traced "
          f"({n} steps); same-run GEMM {gemm_rate / 1e9:.0f} GFLOP/s; the forward and backward FLOPs of all its images at that rate "
          f"{step_flop_ms:.1f} ms (ratio {untraced_ms / step_flop_ms:.2f}x untraced)")
    print("wall time per step by ops running at once: "
          + ", ".join(f"{k}: {per_step(v):.1f} ms" for k, v in sorted(spans.items()) if k >= 0))
    print(f"convolutions, forward and backward: {conv_wall:.1f} ms of wall time with at least one running, "
          f"against {conv_flop_ms:.1f} ms of FLOP time ({conv_wall / conv_flop_ms:.2f}x); the rest of the "
          f"traced step {traced_ms - conv_wall:.1f} ms; the 1.5x target ({1.5 * step_flop_ms:.1f} ms) leaves "
          f"it {1.5 * step_flop_ms - conv_wall:.1f} ms")

    names = {layer.name for layer in model.backbone.layers} | {model.netvlad.name, model.preprocessing.name}
    by_layer = collections.defaultdict(lambda: [0, 0, 0])
    by_op = collections.Counter()
    for s, e, _, op_name, op_type in events:
        backward = ("gradient_tape" in op_name or "/backward/" in op_name or "Grad" in op_type
                    or "Backprop" in op_type)
        entry = by_layer[layer_of(op_name, names)]
        entry[1 if backward else 0] += e - s
        entry[2] += 1
        by_op[f"{op_name}:{op_type}"] += e - s
    print("op time per step (ms, summed over the executor's threads): forward, backward, ops")
    order = [layer.name for layer in model.backbone.layers] + [model.netvlad.name, model.preprocessing.name,
                                                                "loss, optimizer, other"]
    for name in sorted(by_layer, key=lambda k: order.index(k) if k in order else len(order)):
        fwd, bwd, count = by_layer[name]
        print(f"  {name:24s} {per_step(fwd):7.2f} {per_step(bwd):7.2f} {count / n:6.1f}")
    print(f"the {args.top} longest ops (ms per step):")
    for name, ps in by_op.most_common(args.top):
        print(f"  {per_step(ps):7.2f}  {name[-100:]}")


if __name__ == "__main__":
    profile(_parse_args())
