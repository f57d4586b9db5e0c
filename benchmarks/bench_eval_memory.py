"""Peak memory of evaluating a Tokyo 24/7-sized database: 75,984 x 4096-D, 315 queries, no CNN.

The descriptors are random but structured like Tokyo 24/7: 6,332 panoramas of 12 consecutive
cutouts each (a cutout is its panorama's unit vector plus noise, then L2-normalised), panoramas
scattered over 3 km x 3 km, and 315 queries near random panoramas. They are generated chunk by
chunk (float32, never float64) straight into the storage under test: a RAM array or an `.npy`
memmap on disk, in float32 or float16. Then `evaluation.evaluate_descriptors` runs the Tokyo 24/7
protocol (positives from the split's KD-tree, exact streamed search with panorama NMS at
MATLAB's recall Ns, day/sunset/night) and optionally the IVF-PQ index beside it.

Reported (one JSON line): RSS before the evaluation (the database in RAM counts here), the peak
RSS during it (VmHWM after a reset through /proc/self/clear_refs) and their difference; the peak
of anonymous memory (RssAnon sampled every 10 ms; a memmap's pages are file-backed, counted in
VmHWM but reclaimable by the kernel, so this is the memory the evaluation really needs); the
NumPy peak seen by tracemalloc during the evaluation; the database size and wall times.

Usage:
    python benchmarks/bench_eval_memory.py                         # RAM, float32, exact only
    python benchmarks/bench_eval_memory.py --storage memmap --approx auto
    python benchmarks/bench_eval_memory.py --dtype float16 --num-panoramas 1000   # quicker
"""

import argparse
import json
import os
import tempfile
import threading
import time
import tracemalloc

import numpy as np

CUTOUTS = 12


def _vm(key):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # MiB
    raise RuntimeError(key)


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


class _AnonSampler(threading.Thread):
    """Max of RssAnon (MiB), read from /proc/self/status every `interval` seconds."""

    def __init__(self, interval=0.01):
        super().__init__(daemon=True)
        self.interval, self.peak, self._done = interval, 0.0, threading.Event()

    def run(self):
        while not self._done.is_set():
            self.peak = max(self.peak, _vm("RssAnon"))
            time.sleep(self.interval)

    def stop(self):
        self._done.set()
        self.join()
        self.peak = max(self.peak, _vm("RssAnon"))
        return self.peak


def _unit_rows(x):
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_data(args, folder):
    """Database (RAM or memmap), queries, a PlaceSplit with the Tokyo-like layout."""
    from tf_netvlad.data.places import PlaceSplit

    rng = np.random.default_rng(args.seed)
    num_db, dim = args.num_panoramas * CUTOUTS, args.dim
    centres = _unit_rows(rng.standard_normal((args.num_panoramas, dim), dtype=np.float32))
    if args.storage == "memmap":
        db = np.lib.format.open_memmap(os.path.join(folder, "db.npy"), mode="w+",
                                       dtype=args.dtype, shape=(num_db, dim))
    else:
        db = np.empty((num_db, dim), args.dtype)
    step = 512 * CUTOUTS
    for start in range(0, num_db, step):
        stop = min(start + step, num_db)
        block = np.repeat(centres[start // CUTOUTS : stop // CUTOUTS], CUTOUTS, axis=0)
        block += args.noise / np.sqrt(dim) * rng.standard_normal(block.shape, dtype=np.float32)
        db[start:stop] = _unit_rows(block)
    if args.storage == "memmap":
        db.flush()
        del db
        db = np.load(os.path.join(folder, "db.npy"), mmap_mode="r")
    place = rng.integers(0, args.num_panoramas, args.num_queries)
    queries = centres[place] + args.noise / np.sqrt(dim) * rng.standard_normal(
        (args.num_queries, dim), dtype=np.float32)
    queries = _unit_rows(queries)
    del centres
    pano_utm = rng.uniform(0, 3000, (args.num_panoramas, 2))
    split = PlaceSplit(
        "tokyo247_synthetic", [f"db/{i:06d}.jpg" for i in range(num_db)],
        np.repeat(pano_utm, CUTOUTS, axis=0), [f"q/{q:03d}.jpg" for q in range(args.num_queries)],
        pano_utm[place] + rng.uniform(-5, 5, (args.num_queries, 2)),
    )
    return db, queries, split


def run(args):
    from tf_netvlad.evaluation import recall, recall_metrics

    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        started = time.perf_counter()
        db, queries, split = make_data(args, folder)
        generated = time.perf_counter() - started
        rss_before, anon_before = _vm("VmRSS"), _vm("RssAnon")
        _reset_peak()
        sampler = _AnonSampler()
        sampler.start()
        tracemalloc.start()
        started = time.perf_counter()
        positives = split.positives()
        results = recall.evaluate_descriptors(
            db, queries, positives, ns=recall_metrics.REFERENCE_RECALL_NS, protocol="tokyo247",
            approximate=args.approx,
        )
        seconds = time.perf_counter() - started
        _, numpy_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peak, anon_peak = _vm("VmHWM"), sampler.stop()
        report = {
            "num_db": int(db.shape[0]), "dim": int(db.shape[1]), "num_queries": len(queries),
            "storage": args.storage, "dtype": args.dtype, "approx": args.approx,
            "db_mib": round(db.nbytes / 2**20, 1),
            "rss_before_eval_mib": round(rss_before, 1),
            "peak_rss_during_eval_mib": round(peak, 1),
            "peak_rss_growth_mib": round(peak - rss_before, 1),
            "anon_before_eval_mib": round(anon_before, 1),
            "peak_anon_during_eval_mib": round(anon_peak, 1),
            "numpy_peak_during_eval_mib": round(numpy_peak / 2**20, 1),
            "generate_s": round(generated, 1), "evaluate_s": round(seconds, 1),
        }
        report.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items()
                       if k in ("recall@1", "recall@5", "recall@10", "recall@1/night",
                                "approx/recall@1", "approx/recall@5", "approx/recall@10",
                                "approx_index", "approx_train_size", "approx_nprobe")})
        del db
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-panoramas", type=int, default=6332, help="x 12 cutouts = database")
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--num-queries", type=int, default=315)
    parser.add_argument("--noise", type=float, default=5.0,
                        help="noise norm relative to the unit panorama vector")
    parser.add_argument("--storage", choices=("ram", "memmap"), default="ram")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--approx", default=None,
                        help="also score an approximate index: 'auto' or a faiss factory string")
    parser.add_argument("--tmp", default=None, help="folder for the memmap (default: system temp)")
    parser.add_argument("--seed", type=int, default=0)
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
