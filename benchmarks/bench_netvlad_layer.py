"""NetVLAD layer forward+backward at paper size: our matmul form vs broadcast vs per-cluster loop.

Paper size: B = 24 images, 30×40 local features of D = 512 (VGG16 conv5_3 at 480×640), K = 64.
Each formulation is timed interleaved (round-robin) with a 2048³ float32 GEMM in the same
process, so the GFLOP/s ratio is a same-run ratio (this machine's throughput is bimodal, see
../shared/docs/performance-notes.md). Peak memory is measured in a fresh process per form
(VmHWM reset through /proc/self/clear_refs).

Usage:
    python benchmarks/bench_netvlad_layer.py               # all forms, writes a JSON line per form
    python benchmarks/bench_netvlad_layer.py --memory-only FORM
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

B, H, W, D, K = 24, 30, 40, 512, 64
N = H * W
FWD_FLOP = 4 * N * D * K + 3 * N * D + 6 * N * K + 8 * K * D  # per image, as performance-notes.md
FWD_BWD_FLOP = 3 * FWD_FLOP


def _layer_and_data():
    import numpy as np
    import tensorflow as tf

    from tf_netvlad.layers.netvlad import NetVLAD

    rng = np.random.default_rng(0)
    layer = NetVLAD(K)
    layer.build((None, H, W, D))
    layer.set_centroids(rng.normal(size=(K, D)).astype("float32"), 10.0)
    x = tf.constant(rng.normal(size=(B, H, W, D)).astype("float32"))
    g = tf.constant(rng.normal(size=(B, K * D)).astype("float32"))
    return layer, x, g


def _forms(layer):
    """The three formulations as functions of (x) -> descriptor, sharing the layer's weights."""
    import tensorflow as tf

    from tf_netvlad.layers.netvlad import l2_normalize_norm, l2_normalize_sqrt

    def assign(x):
        flat = l2_normalize_sqrt(tf.reshape(x, (tf.shape(x)[0], -1, D)))
        return flat, tf.nn.softmax(tf.matmul(flat, layer.assignment_kernel), axis=-1)

    def finish(vlad):  # (B, K, D) -> MATLAB flatten + L2
        vlad = l2_normalize_sqrt(vlad)
        return l2_normalize_norm(tf.reshape(tf.transpose(vlad, (0, 2, 1)), (-1, K * D)))

    def ours(x):
        return layer(x)

    def broadcast(x):
        flat, a = assign(x)
        residual = flat[:, :, None, :] - layer.centroids[None, None]  # (B, N, K, D)
        return finish(tf.reduce_sum(a[..., None] * residual, axis=1))

    def loop(x):
        flat, a = assign(x)
        parts = [tf.reduce_sum(a[:, :, k : k + 1] * (flat - layer.centroids[k]), axis=1) for k in range(K)]
        return finish(tf.stack(parts, axis=1))

    return {"ours": ours, "broadcast": broadcast, "loop": loop}


def _step_fn(fn, layer, g):
    import tensorflow as tf

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(fn(x) * g)
        return tape.gradient(loss, [x, layer.assignment_kernel, layer.centroids])

    return step


def _gemm():
    import tensorflow as tf

    a = tf.random.normal((2048, 2048))
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, a)))
    matmul()
    return matmul, 2 * 2048**3


def time_forms(repeats):
    layer, x, g = _layer_and_data()
    forms = _forms(layer)
    steps = {name: _step_fn(fn, layer, g) for name, fn in forms.items()}
    gemm, gemm_flop = _gemm()
    for step in steps.values():  # trace + warm up
        step(x)
    times = {name: [] for name in list(steps) + ["gemm"]}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            out = step(x)
            _ = [t.numpy() for t in out]
            times[name].append(time.perf_counter() - start)
        start = time.perf_counter()
        gemm().numpy()
        times["gemm"].append(time.perf_counter() - start)
    med = {name: sorted(v)[len(v) // 2] for name, v in times.items()}
    gemm_rate = gemm_flop / med["gemm"] / 1e9
    rows = []
    for name in steps:
        rate = B * FWD_BWD_FLOP / med[name] / 1e9
        rows.append({"form": name, "median_s": med[name], "best_s": min(times[name]), "gflops": rate,
                     "gemm_gflops_same_run": gemm_rate, "fraction_of_gemm": rate / gemm_rate,
                     "speedup_vs_ours": med[name] / med["ours"]})
    return rows


def peak_memory(form):
    """Peak RSS growth (MiB) of one forward+backward in this fresh process."""
    layer, x, g = _layer_and_data()
    step = _step_fn(_forms(layer)[form], layer, g)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    baseline = _vm("VmRSS")
    _ = [t.numpy() for t in step(x)]
    return (_vm("VmHWM") - baseline) / 1024


def _vm(key):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(key)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-only", choices=("ours", "broadcast", "loop"))
    args = parser.parse_args()
    if args.memory_only:
        print(json.dumps({"form": args.memory_only, "peak_mib": peak_memory(args.memory_only)}))
        return
    memory = {}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    for form in ("ours", "broadcast", "loop"):
        out = subprocess.run([sys.executable, __file__, "--memory-only", form], env=env,
                             capture_output=True, text=True, check=True)
        memory[form] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
    for row in time_forms(args.repeats):
        row["peak_mib"] = memory[row["form"]]
        print(json.dumps(row))


if __name__ == "__main__":
    main()
