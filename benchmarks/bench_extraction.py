"""Extraction cost: VGG16 conv5_3 backbone alone vs the full model (NetVLAD K=64 + whitening).

Both run at 480×640 through the same `extract.make_predict_fn` path, timed interleaved in one
process (same-run ratio). Whitening here is 32768 -> 4096 (the official models' WPCA), with
random weights: the cost, not the values, is what is measured.

Usage:
    python benchmarks/bench_extraction.py [--batch 4] [--repeats 3]
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import keras
    import numpy as np

    from tf_netvlad.models.extract import make_predict_fn
    from tf_netvlad.models.model import build_model

    full = build_model("vgg16", num_clusters=64, whitening_dim=4096)
    backbone_only = keras.Model(full.input, full.netvlad.input)
    images = np.random.default_rng(0).uniform(0, 255, (args.batch, 480, 640, 3)).astype("float32")
    fns = {"backbone": make_predict_fn(backbone_only, (480, 640)),
           "full_model": make_predict_fn(full, (480, 640))}
    for fn in fns.values():
        np.asarray(fn(images))
    times = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            np.asarray(fn(images))
            times[name].append(time.perf_counter() - start)
    med = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
    print(json.dumps({
        "batch": args.batch,
        "backbone_images_per_s": args.batch / med["backbone"],
        "full_model_images_per_s": args.batch / med["full_model"],
        "overhead_of_netvlad_and_whitening": med["full_model"] / med["backbone"] - 1.0,
        "best_overhead": min(times["full_model"]) / min(times["backbone"]) - 1.0,
    }))


if __name__ == "__main__":
    main()
