"""One hard-negative mining refresh vs plain extraction of the same images (target ≤ 1.2×).

A refresh (`HardNegativeMiner.mine(model, cycle)`) extracts the whole training database and the
cycle's queries with the current model (`compute_cache`) and then mines one tuple per query from
those cached descriptors (`mine_tuples`: positives ranked by d², a random negative pool plus the
remembered negatives ranked by d² read from one Gram matrix per block of queries). The baseline is one `extract.extract_descriptors` call
over exactly the same image paths, same batch size and image size. Both are timed interleaved
(round-robin) in one process, so the ratio is a same-run ratio (this machine's throughput is
bimodal, see ../shared/docs/performance-notes.md).

Part 1, end to end on images on disk (the generated demo dataset, JPEGs):
  --config cpu-recipe  the README's CPU recipe (`training.CPU_RECIPE`): tiny backbone, K = 16
                       (1024-D), 96×128, P = 4, N = 5, pool 300, exclude_very_hard, 1000 queries
                       per refresh. Extraction is cheap here, so this is the hard case for the ratio.
  --config paper       VGG16 (weights=None: random weights cost the same), K = 64 (32768-D), the
                       paper's mining (P = 1, N = 10, pool 1000); at --image-size (default 240×320
                       to keep the run short; the per-query mining cost does not depend on it).
Part 2 (synthetic, --paper-db > 0): `mine_tuples` alone at paper scale (10k database descriptors,
1000 queries, pool 1000, N = 10) at 4096-D and 32768-D, next to the VGG16 480×640 extraction rate
measured in the same run, which gives the refresh/extraction ratio projected to Pittsburgh 30k.

The breakdown splits a refresh into extraction (`compute_cache`) and mining (`mine_tuples`), and
mining into the Gram matrix (`gram_blocks`: one GEMM per block of queries), candidate ranking
(`rank_by_d2`), pool sampling (`sample_pool`), positive distances (`sq_dists`) and the remaining
NumPy set operations.

Usage:
    python benchmarks/bench_mining.py --quick            # small smoke run (~1 min)
    python benchmarks/bench_mining.py                    # CPU recipe, full demo train split
    python benchmarks/bench_mining.py --config paper --scale 0.1 --repeats 3 --paper-db 0
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CONFIGS = {
    "cpu-recipe": None,  # filled from training.CPU_RECIPE
    "paper": dict(backbone="vgg16", weights=None, trainable_from=None, num_clusters=64,
                  image_size=(240, 320), num_positives=1, num_negatives=10, negative_pool_size=1000,
                  keep_factor=10, exclude_very_hard=False, cache_refresh_queries=1000,
                  cache_batch_size=8),
}


def _recipe(name, image_size, batch):
    from tf_netvlad.training.config import CPU_RECIPE, TrainConfig

    cfg = TrainConfig(**(CPU_RECIPE if name == "cpu-recipe" else CONFIGS[name]))
    changes = {}
    if image_size:
        changes["image_size"] = tuple(image_size)
    if batch:
        changes["cache_batch_size"] = batch
    import dataclasses

    return dataclasses.replace(cfg, **changes)


class Timer:
    """Accumulates wall time per name; `wrap` times every call of a function."""

    def __init__(self):
        self.total, self.calls = {}, {}

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total[name] = self.total.get(name, 0.0) + time.perf_counter() - start
                self.calls[name] = self.calls.get(name, 0) + 1
        return timed

    def wrap_generator(self, name, fn):
        """Times the work done inside each step of the generator `fn` returns."""
        def timed(*args, **kwargs):
            iterator = fn(*args, **kwargs)
            while True:
                start = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                finally:
                    self.total[name] = self.total.get(name, 0.0) + time.perf_counter() - start
                yield item
        return timed


def _median(values):
    return statistics.median(values)


def _build(cfg, data_dir, scale):
    from tf_netvlad.data import split_loading
    from tf_netvlad.demo import dataset
    from tf_netvlad.models.model import build_model

    paths = dataset.generate_demo_data(data_dir, scale=scale, progress=False)
    split = split_loading.load_split(paths["train_mat"])
    model = build_model(cfg.backbone, weights=cfg.weights, trainable_from=cfg.trainable_from,
                        num_clusters=cfg.num_clusters)
    # Centroids from random local features would need an extraction pass; the cost of a refresh
    # does not depend on the centroid values, so random unit centroids are used.
    import numpy as np

    dim = model.netvlad.centroids.shape[-1]
    centroids = np.random.default_rng(0).normal(size=(cfg.num_clusters, dim)).astype("float32")
    model.netvlad.set_centroids(centroids / np.linalg.norm(centroids, axis=1, keepdims=True), 10.0)
    return split, model


def end_to_end(cfg, data_dir, scale, repeats):
    """Part 1: `miner.mine` vs `extract_descriptors` of the same paths, interleaved."""

    from tf_netvlad.models import extract
    from tf_netvlad.training import mining

    split, model = _build(cfg, data_dir, scale)
    miner = mining.HardNegativeMiner(
        split, image_size=cfg.image_size, num_positives=cfg.num_positives,
        num_negatives=cfg.num_negatives, pool_size=cfg.negative_pool_size, keep_factor=cfg.keep_factor,
        margin=cfg.margin, cache_refresh_queries=cfg.cache_refresh_queries, seed=cfg.seed,
        batch_size=cfg.cache_batch_size, progress=False, exclude_very_hard=cfg.exclude_very_hard)
    cache_timer = Timer()
    miner.compute_cache = cache_timer.wrap("compute_cache", miner.compute_cache)

    def plain(cycle):
        ids = miner.queries_for_cycle(cycle)
        paths = list(split.db_paths) + [split.query_paths[i] for i in ids]
        return extract.extract_descriptors(model, paths, root=split.root, image_size=cfg.image_size,
                                           batch_size=cfg.cache_batch_size, progress=False)

    plain(0), miner.mine(model, 0)  # warm-up: traces, tf.data start-up, page cache
    times = {"mine": [], "extract": [], "compute_cache": [], "mine_tuples": []}
    for cycle in range(1, repeats + 1):
        start = time.perf_counter()
        desc = plain(cycle)
        times["extract"].append(time.perf_counter() - start)
        before = cache_timer.total["compute_cache"]
        start = time.perf_counter()
        miner.mine(model, cycle)
        total = time.perf_counter() - start
        cache = cache_timer.total["compute_cache"] - before
        times["mine"].append(total)
        times["compute_cache"].append(cache)
        times["mine_tuples"].append(total - cache)
    # Breakdown of mine_tuples on the last cache (same inputs as a refresh), functions wrapped.
    q_ids = miner.queries_for_cycle(repeats)
    q_desc, db_desc = desc[split.num_db :], desc[: split.num_db]
    parts = profile_mine_tuples(miner, q_ids, q_desc, db_desc, repeats)
    med = {k: _median(v) for k, v in times.items()}
    return {
        "config": cfg.backbone, "image_size": list(cfg.image_size), "batch": cfg.cache_batch_size,
        "descriptor_dim": int(desc.shape[1]), "db_images": split.num_db, "queries": len(q_ids),
        "images": split.num_db + len(q_ids), "pool": miner.pool_size, "N": miner.num_negatives,
        "P": miner.num_positives, "exclude_very_hard": miner.exclude_very_hard,
        "extract_s": med["extract"], "mine_s": med["mine"], "compute_cache_s": med["compute_cache"],
        "mine_tuples_s": med["mine_tuples"], "ratio": med["mine"] / med["extract"],
        "ratio_best": min(times["mine"]) / min(times["extract"]),
        # Each refresh is timed right after its extraction: the median of the pairwise ratios is
        # robust to the slow regime changes of this machine.
        "ratio_paired": _median([m / e for m, e in zip(times["mine"], times["extract"])]),
        "cache_vs_extract_paired": _median([c / e for c, e in zip(times["compute_cache"], times["extract"])]),
        "mine_tuples_vs_extract": med["mine_tuples"] / med["extract"],
        "images_per_s": (split.num_db + len(q_ids)) / med["extract"],
        "mine_tuples_ms_per_query": 1e3 * med["mine_tuples"] / len(q_ids),
        "breakdown_ms_per_query": parts, "raw": times,
    }


def profile_mine_tuples(miner, q_ids, q_desc, db_desc, repeats=3):
    """ms per query of mine_tuples and of its parts (median over `repeats` runs)."""
    import numpy as np

    from tf_netvlad.training import tuple_mining

    names = ("gram_blocks", "rank_by_d2", "sample_pool", "sq_dists")
    originals = {name: getattr(tuple_mining, name) for name in names}
    runs = []
    try:
        for r in range(repeats):
            timer = Timer()
            for name in names:
                wrap = timer.wrap_generator if name == "gram_blocks" else timer.wrap
                setattr(tuple_mining, name, wrap(name, originals[name]))
            start = time.perf_counter()
            tuple_mining.mine_tuples(
                q_ids, q_desc, db_desc, miner.positives, miner.non_negatives, miner.neg_cache,
                np.random.default_rng([miner.seed, r, 1]), num_positives=miner.num_positives,
                num_negatives=miner.num_negatives, pool_size=miner.pool_size,
                keep_factor=miner.keep_factor, margin=miner.margin,
                exclude_very_hard=miner.exclude_very_hard)
            total = time.perf_counter() - start
            row = {name: timer.total.get(name, 0.0) for name in names}
            row["other_numpy"] = total - sum(row.values())
            row["total"] = total
            runs.append(row)
    finally:
        for name, fn in originals.items():
            setattr(tuple_mining, name, fn)
    return {k: round(1e3 * _median([r[k] for r in runs]) / len(q_ids), 4) for k in runs[0]}


class _SyntheticMiner:
    """Stand-in with the attributes profile_mine_tuples reads (paper mining recipe)."""

    def __init__(self, num_db, num_queries, rng):
        import numpy as np

        self.seed, self.num_positives, self.num_negatives = 43, 1, 10
        self.pool_size, self.keep_factor, self.margin, self.exclude_very_hard = 1000, 10, 0.1, False
        centre = rng.integers(0, num_db, num_queries)
        self.centre = centre
        # Places along a line: ~5 positives within 10 m, ~17 non-negatives within 25 m
        # (Pittsburgh's db spacing is a few metres).
        self.positives = [np.clip(np.arange(c - 2, c + 3), 0, num_db - 1) for c in centre]
        self.non_negatives = [np.clip(np.arange(c - 8, c + 9), 0, num_db - 1) for c in centre]
        self.neg_cache = rng.integers(0, num_db, (num_queries, 10)).astype(np.int64)


def paper_scale(num_db, num_queries, dims, repeats):
    """Part 2: mine_tuples at paper scale next to a same-run VGG16 480×640 extraction rate."""
    import numpy as np

    from tf_netvlad.models.extract import make_predict_fn
    from tf_netvlad.models.model import build_model

    rng = np.random.default_rng(0)
    vgg = build_model("vgg16", weights=None, trainable_from=None, num_clusters=64)
    predict = make_predict_fn(vgg, (480, 640))
    images = rng.uniform(0, 255, (8, 480, 640, 3)).astype("float32")
    np.asarray(predict(images))
    rows = []
    for dim in dims:
        db = np.empty((num_db, dim), np.float32)
        for start in range(0, num_db, 1000):  # chunkwise: no float64 copy of the database
            chunk = rng.standard_normal((min(1000, num_db - start), dim), dtype=np.float32)
            db[start : start + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
        miner = _SyntheticMiner(num_db, num_queries, rng)
        queries = db[miner.centre] + 0.05 * rng.standard_normal((num_queries, dim), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        q_ids = np.arange(num_queries)
        start = time.perf_counter()
        np.asarray(predict(images))
        extract_s = (time.perf_counter() - start) / len(images)
        parts = profile_mine_tuples(miner, q_ids, queries, db, repeats)
        images_total = num_db + num_queries
        mining_s = parts["total"] * num_queries / 1e3
        rows.append({"dim": dim, "db": num_db, "queries": num_queries,
                     "mine_tuples_ms_per_query": parts, "mine_tuples_s": mining_s,
                     "vgg16_480x640_s_per_image_same_run": extract_s,
                     "projected_extract_s": images_total * extract_s,
                     "projected_ratio": 1 + mining_s / (images_total * extract_s)})
        del db, queries
    return rows


def _table(result):
    b = result["breakdown_ms_per_query"]
    lines = [
        f"config={result['config']} image={result['image_size']} batch={result['batch']} "
        f"D={result['descriptor_dim']} db={result['db_images']} queries={result['queries']} "
        f"(P={result['P']} N={result['N']} pool={result['pool']} evh={result['exclude_very_hard']})",
        "| | median s |",
        "|---|---|",
        f"| plain extraction ({result['images']} images, {result['images_per_s']:.0f} img/s) | {result['extract_s']:.3f} |",
        f"| mining refresh | {result['mine_s']:.3f} |",
        f"|   compute_cache (extraction) | {result['compute_cache_s']:.3f} |",
        f"|   mine_tuples | {result['mine_tuples_s']:.3f} |",
        f"ratio refresh / extraction: medians {result['ratio']:.3f}, best-of {result['ratio_best']:.3f}, "
        f"median of paired runs {result['ratio_paired']:.3f} (compute_cache / extraction "
        f"{result['cache_vs_extract_paired']:.3f}, mine_tuples / extraction {result['mine_tuples_vs_extract']:.3f})",
        "mine_tuples ms/query: " + ", ".join(f"{k} {v:.3f}" for k, v in b.items()),
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu-recipe")
    parser.add_argument("--data-dir", default="/tmp/tf_netvlad_bench_demo",
                        help="demo dataset directory (generated if missing or different)")
    parser.add_argument("--scale", type=float, default=1.0, help="demo dataset scale")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    parser.add_argument("--batch", type=int, help="images per batch (default: the recipe's cache_batch_size)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--paper-db", type=int, default=10000, help="0 skips part 2")
    parser.add_argument("--paper-queries", type=int, default=1000)
    parser.add_argument("--paper-dims", type=int, nargs="+", default=[4096, 32768])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    args = parser.parse_args()
    if args.quick:
        args.scale, args.repeats = 0.1, 2
        args.paper_db, args.paper_queries, args.paper_dims = 2000, 100, [4096]
        if args.data_dir == parser.get_default("data_dir"):
            args.data_dir += "_quick"
    cfg = _recipe(args.config, args.image_size, args.batch)
    result = end_to_end(cfg, args.data_dir, args.scale, args.repeats)
    print(_table(result))
    print(json.dumps(result))
    if args.paper_db > 0:
        for row in paper_scale(args.paper_db, args.paper_queries, args.paper_dims, repeats=1):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
