"""A CPU's cores as independent streams of images: each op on one core, the batch split across them.

TensorFlow runs each op of a step with all the cores (its intra-op thread pool), and the ops one
after another where they depend on each other. The CPU recipe's step is hundreds of short ops on
small maps (normalisations, ReLUs, pooling, NetVLAD, their gradients) beside its convolutions,
and those short ops are where its time above its FLOPs goes (benchmarks/RESULTS.md). With
`configure_streams(2)` on a 2-core CPU every op runs on one core, and the model's training step
(`NetVLADModel`) and extraction (`extract.make_predict_fn`) split each batch of images into two
halves whose ops do not depend on each other, so TensorFlow's two inter-op threads run one half
each, side by side: the recipe's step took 0.94× the time of one stream in paired benchmark runs.
Every layer of a NetVLAD model works image by image (group normalisation; a batch normalisation
that trains keeps one stream), so the descriptors are those of the whole batch and the gradients
their sum, to float32 rounding.

The thread pools are fixed when TensorFlow's runtime starts, so this is a process setting made
before any TensorFlow work: the `tf_netvlad` command does it (`tf_netvlad --cpu-streams auto|N`),
a notebook or script calls `configure_streams()` first. Once TensorFlow is running with other
pools, `configure_streams` logs why and keeps the streams it had (one by default). On a GPU `auto`
is one stream (the split would only add kernel launches). Measured only on the 2-core host of
benchmarks/RESULTS.md, where `auto` is 2 streams; on more cores `auto` keeps 2 streams of
`cores // 2` threads each.

Example:
>>> import tf_netvlad.models.streams as streams
>>> streams.configure_streams("auto")        # before building a model; 2 on a 2-core CPU
>>> streams.in_streams(lambda x: model(x), images)   # model(images), computed in 2 halves
"""

import logging
import os

logger = logging.getLogger(__name__)

_state = {"streams": 1}


def available_cores():
    """The cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_streams(value):
    """`"auto"` or a whole number ≥ 1 (str or int) -> `"auto"` or that int; ValueError otherwise."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = int(value)
        valid = number >= 1 and float(value) == number
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"cpu streams must be 'auto' or a whole number of at least 1. Received: {value!r}")
    return number


def configure_streams(streams="auto"):
    """Splits the cores into `streams` streams of images; returns the number in effect after.

    `"auto"`: 2 on a CPU-only host with at least 2 cores, else 1. With `n` > 1 streams TensorFlow's
    intra-op pool gets `max(1, cores // n)` threads and its inter-op pool `max(n, cores)`; 1 gives
    both pools back to TensorFlow's defaults. Call it before any TensorFlow work in the process:
    once the runtime runs with other pools they cannot change, so it logs a warning and keeps the
    streams it had. Calling it again with the same value does nothing.
    """
    wanted = parse_streams(streams)
    import tensorflow as tf

    cores = available_cores()
    if wanted == "auto":
        wanted = 1 if cores < 2 or tf.config.list_physical_devices("GPU") else 2
    intra, inter = (0, 0) if wanted == 1 else (max(1, cores // wanted), max(wanted, cores))
    try:  # TensorFlow accepts the value it already has, also once running
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        logger.warning("TensorFlow is already running with other thread pools, so the cores cannot be "
                       "split into %d stream(s) of images; keeping %d. Call configure_streams() before "
                       "any TensorFlow work.", wanted, _state["streams"])
        return _state["streams"]
    _state["streams"] = wanted
    if wanted > 1:
        logger.info("%d streams of images, %d intra-op thread(s) each.", wanted, intra)
    return wanted


def stream_count():
    """The number of streams `configure_streams` set up in this process (1 by default)."""
    return _state["streams"]


def in_streams(fn, images, streams=None):
    """`fn(images)` computed as `fn` of `streams` consecutive parts of the batch, concatenated.

    `fn` must treat each image on its own (a NetVLAD model does) and return one tensor. `streams`
    defaults to `stream_count()`; with 1 this is `fn(images)`. Part i holds images
    `[i·n // streams, (i + 1)·n // streams)` (sizes differ by at most one). With fewer images than
    streams a part that would be empty runs on one neighbouring image instead and its output is
    dropped: some kernels fail on an empty batch, and a branch that skipped the part would stop
    TensorFlow from running the parts side by side. Works inside a `tf.function` with an unknown
    batch size.
    """
    streams = stream_count() if streams is None else int(streams)
    if streams == 1:
        return fn(images)
    import tensorflow as tf

    n = tf.shape(images)[0]
    outputs = []
    for i in range(streams):
        low, high = i * n // streams, (i + 1) * n // streams
        start = tf.maximum(tf.minimum(low, n - 1), 0)  # = low unless the part is empty
        stop = tf.maximum(high, start + 1)  # = high unless the part is empty
        outputs.append(fn(images[start:stop])[low - start:high - start])
    return tf.concat(outputs, axis=0)
