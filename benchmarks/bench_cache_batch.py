"""A CPU-recipe cache refresh's extraction by `cache_batch_size`: images per model call.

Every refresh cycle of a `tf_netvlad train` run extracts the cycle's queries and the whole training
database (about 2,200 images on "small"), and validation 600 more, through
`extract.extract_descriptors` from the images decoded once (`data.decoded.DecodedImages`), as the
run does. This times that call on the same images with each batch size, the sizes interleaved in
every round (the first round is a warm-up and is dropped), with the recipe's model (`tiny_s2`,
K = 16, random weights: the cost, not the values, is measured) at the recipe's 96×128. The rate
is also given in GFLOP/s of forward FLOPs (`bench_train_step.count_flops`) next to the same-run
rate of a 2048³ matmul.

Usage:
    python benchmarks/bench_cache_batch.py --data DIR [--sizes 8,16,32,64,128] [--repeats 4]

DIR: a folder of `tf_netvlad demo-data` (its `demo_train.mat`); the refresh's images are the
database and the first queries, as many as one refresh of the recipe extracts.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN on, as `import tf_netvlad` sets it for a training run (TensorFlow is imported first here)
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a `tf_netvlad demo-data` folder")
    parser.add_argument("--sizes", default="8,16,32,64,128", help="batch sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=4, help="rounds; the first is a warm-up")
    parser.add_argument("--queries", type=int, default=1000, help="queries of the refresh (recipe: 1000)")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf
    from bench_train_step import count_flops

    import tf_netvlad
    from tf_netvlad.data.decoded import DecodedImages
    from tf_netvlad.models import extract

    recipe = tf_netvlad.TrainConfig(**tf_netvlad.CPU_RECIPE)
    split = tf_netvlad.load_split(os.path.join(args.data, "demo_train.mat"))
    paths = list(split.db_paths) + list(split.query_paths)[: args.queries]
    images = DecodedImages.load(paths, root=split.root, image_size=recipe.image_size, batch_size=64)
    model = tf_netvlad.build_model(recipe.backbone, weights=None, num_clusters=recipe.num_clusters)
    flops = count_flops(model, recipe.image_size)[0]
    sizes = [int(size) for size in args.sizes.split(",")]
    a = tf.random.stateless_normal((2048, 2048), (0, 1))
    gemm = tf.function(lambda: tf.reduce_sum(tf.matmul(a, a)))
    times = {size: [] for size in sizes}
    gemm_times = []
    for _ in range(args.repeats):
        for size in sizes:
            start = time.perf_counter()
            extract.extract_descriptors(model, paths, root=split.root, image_size=recipe.image_size,
                                        batch_size=size, progress=False, images=images)
            times[size].append(time.perf_counter() - start)
        start = time.perf_counter()
        float(gemm())
        gemm_times.append(time.perf_counter() - start)
    gemm_rate = 2 * 2048**3 / float(np.median(gemm_times[1:])) / 1e9
    print(f"{len(paths)} images at {recipe.image_size[0]}x{recipe.image_size[1]}, forward "
          f"{flops / 1e6:.1f} MFLOP per image; same-run GEMM 2048^3: {gemm_rate:.0f} GFLOP/s")
    result = {"images": len(paths), "gemm_gflops": gemm_rate, "sizes": {}}
    for size in sizes:
        median = float(np.median(times[size][1:]))
        rate = len(paths) / median
        result["sizes"][size] = {"s": median, "images_per_s": rate, "gflops": rate * flops / 1e9}
        print(f"batch {size:4d}: {median:.2f} s, {rate:.0f} images/s, {rate * flops / 1e9:.0f} GFLOP/s "
              f"(rounds: {', '.join(f'{t:.2f}' for t in times[size])} s)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
