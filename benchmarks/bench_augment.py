"""Tuple augmentation (`--augment`): what it costs per batch, and what the fused form saves.

A batch of the CPU recipe is 4 tuples × (1 query + 2 positives + 5 negatives) = 32 images at
96×128. Timed, interleaved in one process (median over rounds, per batch of 32 images; each
variant but the pipelines is one `tf.function`, as a tf.data map is one graph):

* `fused`: `training.augment.augment_images` as the pipeline calls it, once per tuple of 8 images
  (crop_and_resize of the stack, then one XLA-compiled pass for brightness, contrast, saturation
  and hue), 4 calls;
* `fused, colour only` / `crop only`: its two halves;
* `per-image tf.image`: the form it replaced, one image at a time with `tf.image.crop_and_resize`,
  `adjust_saturation` and `adjust_hue` (HSV) and the brightness / contrast arithmetic, 32 calls;
* `pipeline off` / `pipeline on`: `TuplePipeline` batches from images held in memory
  (`data.decoded`-style, a random table of rows), augmentation off and on, through tf.data.

Usage:
    python benchmarks/bench_augment.py [--rounds 7] [--batches 20]
Results: benchmarks/RESULTS.md ("Augmentation per batch").
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _per_image(image, seed, aug):
    """One image with tf.image's per-image ops (the replaced form; HSV saturation and hue)."""
    import tensorflow as tf

    draws = tf.random.stateless_uniform([8], seed)
    side_h = aug.min_crop + (1 - aug.min_crop) * draws[0]
    side_w = aug.min_crop + (1 - aug.min_crop) * draws[1]
    top, left = draws[2] * (1 - side_h), draws[3] * (1 - side_w)
    box = tf.stack([top, left, top + side_h, left + side_w])[None]
    image = tf.image.crop_and_resize(image[None], box, [0], tf.shape(image)[:2])[0]
    unit = image / 255.0 + aug.brightness * (2 * draws[4] - 1)
    mean = tf.reduce_mean(unit, axis=[0, 1], keepdims=True)
    unit = tf.clip_by_value(mean + (unit - mean) * (1 + aug.contrast * (2 * draws[5] - 1)), 0.0, 1.0)
    unit = tf.clip_by_value(tf.image.adjust_saturation(unit, 1 + aug.saturation * (2 * draws[6] - 1)), 0.0, 1.0)
    unit = tf.image.adjust_hue(unit, aug.hue * (2 * draws[7] - 1))
    return tf.clip_by_value(unit, 0.0, 1.0) * 255.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=20, help="batches per variant and round")
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from tf_netvlad.training import augment
    from tf_netvlad.training.tuples import TuplePipeline

    rng = np.random.default_rng(0)
    batch = tf.constant(rng.uniform(0, 255, (32, 96, 128, 3)).astype(np.float32))
    tuples = tf.reshape(batch, (4, 8, 96, 128, 3))
    aug = augment.Augmentation()
    colour = augment.Augmentation(min_crop=1.0)
    crop = augment.Augmentation(min_crop=aug.min_crop, brightness=0, contrast=0, saturation=0, hue=0)

    def stack_variant(strengths):  # one graph, as in the tf.data map
        return tf.function(lambda: [augment.augment_images(tuples[t], (t, 1), strengths) for t in range(4)])

    class _Images:  # the interface TuplePipeline reads from data.decoded.DecodedImages
        image_size = (96, 128)
        pixels = tf.constant(rng.uniform(0, 255, (200, 96, 128, 3)).astype(np.float32))
        ok = np.ones(200, bool)

        @staticmethod
        def rows(paths):
            return np.array([int(p.rsplit("/", 1)[-1]) for p in paths])

    paths = [f"/mem/{i}" for i in range(200)]
    rows = np.concatenate([rng.integers(0, 200, (4 * args.batches, 3)),
                           rng.integers(0, 200, (4 * args.batches, 5))], axis=1)
    pipes = {}
    for name, strengths in (("pipeline off", None), ("pipeline on", aug)):
        pipe = TuplePipeline(paths, paths, None, (96, 128), num_rows=len(rows), num_positives=2,
                             num_negatives=5, batch_size=4, augmentation=strengths, images=_Images())
        pipe.assign(rows)
        pipes[name] = pipe

    def pipeline_variant(pipe):
        dataset = pipe.dataset()  # built (traced) once; each run iterates it anew
        return lambda: list(dataset.as_numpy_iterator())

    variants = {
        "fused": (stack_variant(aug), 1),
        "fused, colour only": (stack_variant(colour), 1),
        "crop only": (stack_variant(crop), 1),
        "per-image tf.image": (tf.function(lambda: [_per_image(batch[i], (i, 1), aug) for i in range(32)]), 1),
        "pipeline off": (pipeline_variant(pipes["pipeline off"]), args.batches),
        "pipeline on": (pipeline_variant(pipes["pipeline on"]), args.batches),
    }
    times = {name: [] for name in variants}
    for name, (run, _) in variants.items():  # warm-up: tracing and XLA compilation
        run()
    for _ in range(args.rounds):
        for name, (run, per_call) in variants.items():
            repeats = max(1, args.batches // per_call)
            start = time.perf_counter()
            for _ in range(repeats):
                out = run()
            if not isinstance(out[-1], dict):  # a tensor: wait for it (pipelines yield NumPy)
                out[-1].numpy()
            times[name].append((time.perf_counter() - start) / (repeats * per_call))
    print(f"{'variant':<22} ms per batch of 32 images (median of {args.rounds} rounds)")
    for name, values in times.items():
        print(f"{name:<22} {1000 * np.median(values):8.1f}")


if __name__ == "__main__":
    main()
