"""faiss search at 100k database vectors: exact inner product vs IVF-PQ (throughput and recall).

Data (structured like place descriptors, L2-normalised float32, generated chunkwise): a mixture of
`--clusters` Gaussian clusters (x = normalise(c_k + g), g ~ N(0, I/D), |c_k| = 1, so vectors of one
cluster have cosine ≈ 0.5 with each other and the IVF cells cut through clusters), and queries that
are noisy copies of random database items (q = normalise(x_j + σ·h), h ~ N(0, I/D), the
place-recognition case: the true place is the exact top-1 for most queries, its neighbours in the
same cluster are the confusers).

For each dimension (default 4096 and 256):
- exact `IndexFlatIP` (`tf_netvlad.search.faiss_index.build_index(kind="flat")`): batched search of all queries,
  queries/s, GFLOP/s (2·Q·N·D) against a 2048³ float32 numpy GEMM timed interleaved in the same
  run (this machine's throughput is bimodal, see ../shared/docs/performance-notes.md), and
  one query per call;
- IVF-PQ factory strings (`build_index(kind=...)`, polysemous training off, trained on
  `--train-size` rows): train and add time, index bytes per vector (serialised index / N), and for
  each nprobe (`tf_netvlad.search.faiss_index.set_nprobe`): batched queries/s, speed-up over exact, and recall
  of the exact nearest neighbour, R@1 (approximate top-1 = exact top-1) and R@10 (exact top-1 in
  the approximate top-10).

Usage:
    python benchmarks/bench_faiss.py --quick              # 10k vectors, small sweep (~30 s)
    python benchmarks/bench_faiss.py                      # 100k × {4096, 256}, 2000 queries
    python benchmarks/bench_faiss.py --dims 256 --factories-256 IVF1024,PQ32 --nprobes 1 8
"""

import argparse
import json
import statistics
import time

import numpy as np

DEFAULT_FACTORIES = {4096: ["IVF1024,PQ64", "IVF1024,PQ128"], 256: ["IVF1024,PQ32", "IVF1024,PQ64"]}


def _spread(rng, n, dim, basis):
    """n within-cluster offsets of expected norm 1: isotropic, or in the span of `basis` (r, dim)."""
    if basis is None:
        return rng.standard_normal((n, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
    z = rng.standard_normal((n, len(basis)), dtype=np.float32) / np.float32(np.sqrt(len(basis)))
    return z @ basis


def make_data(num_db, num_queries, dim, clusters, query_noise, latent_dim=0, seed=0, chunk=10_000):
    """Database, queries and the source db id of each query (float32, no full-size float64).

    `latent_dim` > 0 puts the within-cluster spread in a random `latent_dim`-dimensional subspace
    (plus 10 % isotropic noise), i.e. intrinsically low-dimensional descriptors; 0 = isotropic.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = None
    if latent_dim:
        basis = np.linalg.qr(rng.standard_normal((dim, latent_dim)).astype(np.float32))[0].T
    db = np.empty((num_db, dim), np.float32)
    for start in range(0, num_db, chunk):
        n = min(chunk, num_db - start)
        block = centres[rng.integers(0, clusters, n)]
        block += _spread(rng, n, dim, basis)
        if latent_dim:
            block += np.float32(0.1) * _spread(rng, n, dim, None)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        db[start : start + n] = block
    source = rng.choice(num_db, num_queries, replace=False)
    queries = db[source] + np.float32(query_noise) * _spread(rng, num_queries, dim, basis)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return db, queries, source


def gemm_timer():
    a = np.random.default_rng(1).standard_normal((2048, 2048), dtype=np.float32)
    a @ a

    def run():
        start = time.perf_counter()
        a @ a
        return time.perf_counter() - start

    return run, 2 * 2048**3


def index_bytes(index):
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def bench_dim(dim, args, gemm, gemm_flop):
    from tf_netvlad.search import faiss_index

    t0 = time.perf_counter()
    db, queries, source = make_data(args.num_db, args.queries, dim, args.clusters, args.query_noise,
                                       args.latent_dim)
    gen_s = time.perf_counter() - t0
    start = time.perf_counter()
    flat = faiss_index.build_index(db)
    flat_add_s = time.perf_counter() - start
    faiss_index.search(flat, queries[:16], args.k)  # warm-up
    flat_times, gemm_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        exact_scores, exact_ids = faiss_index.search(flat, queries, args.k)
        flat_times.append(time.perf_counter() - start)
        gemm_times.append(gemm())
    flat_s = statistics.median(flat_times)
    gemm_rate = gemm_flop / statistics.median(gemm_times) / 1e9
    flat_rate = 2 * args.queries * args.num_db * dim / flat_s / 1e9
    single = queries[: args.single]
    start = time.perf_counter()
    for q in single:
        faiss_index.search(flat, q[None], args.k)
    flat_single_qps = len(single) / (time.perf_counter() - start)
    top1 = exact_ids[:, 0]
    gap = exact_scores[:, 0] - exact_scores[:, 1]
    summary = {
        "dim": dim, "num_db": args.num_db, "queries": args.queries, "k": args.k,
        "generate_s": round(gen_s, 2), "flat_add_s": round(flat_add_s, 2),
        "flat_bytes_per_vector": index_bytes(flat) / args.num_db,
        "exact_top1_is_source": float(np.mean(top1 == source)),
        "median_top1_score": float(np.median(exact_scores[:, 0])),
        "median_top1_top2_gap": float(np.median(gap)),
        "flat_s": flat_s, "flat_best_s": min(flat_times), "flat_qps": args.queries / flat_s,
        "flat_gflops": flat_rate, "gemm_gflops_same_run": gemm_rate,
        "flat_fraction_of_gemm": flat_rate / gemm_rate, "flat_single_qps": flat_single_qps,
        "single_scan_gb_per_s": args.num_db * dim * 4 * flat_single_qps / 1e9,
    }
    print(json.dumps(summary), flush=True)
    rows = []
    for factory in args.factories[dim]:
        start = time.perf_counter()
        ivf = faiss_index.build_index(db, kind=factory, train_size=args.train_size, chunk_size=10_000)
        build_s = time.perf_counter() - start
        bytes_per_vector = index_bytes(ivf) / args.num_db
        code_bytes = int(faiss_index._faiss().extract_index_ivf(ivf).code_size)
        ivf.reset()  # keeps the trained quantizers: time the add alone
        start = time.perf_counter()
        for chunk_start in range(0, args.num_db, 10_000):
            ivf.add(db[chunk_start : chunk_start + 10_000])
        add_s = time.perf_counter() - start
        for nprobe in args.nprobes:
            faiss_index.set_nprobe(ivf, nprobe)
            faiss_index.search(ivf, queries[:16], args.k)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                _, ids = faiss_index.search(ivf, queries, args.k)
                times.append(time.perf_counter() - start)
            s = statistics.median(times)
            start = time.perf_counter()
            for q in single:
                faiss_index.search(ivf, q[None], args.k)
            single_qps = len(single) / (time.perf_counter() - start)
            row = {"dim": dim, "index": factory, "nprobe": nprobe, "train_s": round(build_s - add_s, 1),
                   "add_s": round(add_s, 1),
                   "bytes_per_vector": round(bytes_per_vector, 1),
                   "code_bytes": code_bytes, "qps": args.queries / s,
                   "speedup_vs_exact": flat_s / s, "single_qps": single_qps,
                   "recall1": float(np.mean(ids[:, 0] == top1)),
                   "recall10": float(np.mean((ids == top1[:, None]).any(axis=1))),
                   "source_in_top10": float(np.mean((ids == source[:, None]).any(axis=1)))}
            rows.append(row)
            print(json.dumps(row), flush=True)
        del ivf
    del db, queries, flat
    return summary, rows


def print_tables(summaries, rows):
    print("\n| dim | exact q/s (batch) | best | one query per call | GFLOP/s | same-run GEMM | of GEMM | "
          "bytes/vector | exact top-1 = source | top1-top2 gap |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in summaries:
        print(f"| {s['dim']} | {s['flat_qps']:.0f} | {s['queries'] / s['flat_best_s']:.0f} | "
              f"{s['flat_single_qps']:.1f} | {s['flat_gflops']:.0f} | {s['gemm_gflops_same_run']:.0f} | "
              f"{100 * s['flat_fraction_of_gemm']:.0f} % | {s['flat_bytes_per_vector']:.0f} | "
              f"{s['exact_top1_is_source']:.3f} | {s['median_top1_top2_gap']:.3f} |")
    print("\n| dim | index | train s | add s | code + id bytes | index bytes/vector | nprobe | q/s (batch) | × exact | "
          "one query per call q/s | R@1 | R@10 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dim']} | {r['index']} | {r['train_s']} | {r['add_s']} | {r['code_bytes']} + 8 | {r['bytes_per_vector']} | {r['nprobe']} | "
              f"{r['qps']:.0f} | {r['speedup_vs_exact']:.1f} | {r['single_qps']:.0f} | "
              f"{r['recall1']:.3f} | {r['recall10']:.3f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-db", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--dims", type=int, nargs="+", default=[4096, 256])
    parser.add_argument("--factories-4096", nargs="+", default=DEFAULT_FACTORIES[4096])
    parser.add_argument("--factories-256", nargs="+", default=DEFAULT_FACTORIES[256])
    parser.add_argument("--nprobes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--train-size", type=int, default=None, help="IVF-PQ training rows (all if unset)")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--query-noise", type=float, default=1.0,
                        help="query noise norm relative to the unit-norm db item")
    parser.add_argument("--latent-dim", type=int, default=0,
                        help="within-cluster spread in a random subspace of this dim (0: isotropic)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--single", type=int, default=50, help="queries timed one per call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads (default: all)")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    args = parser.parse_args()
    if args.quick:
        args.num_db, args.queries, args.nprobes, args.repeats, args.single = 10_000, 200, [1, 8], 1, 10
        args.clusters = 100
        args.factories_4096, args.factories_256 = ["IVF64,PQ64"], ["IVF64,PQ32"]
    args.factories = {4096: args.factories_4096, 256: args.factories_256}
    for dim in args.dims:
        args.factories.setdefault(dim, [])
    if args.threads:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    gemm, gemm_flop = gemm_timer()
    summaries, rows = [], []
    for dim in args.dims:
        summary, dim_rows = bench_dim(dim, args, gemm, gemm_flop)
        summaries.append(summary)
        rows.extend(dim_rows)
    print_tables(summaries, rows)


if __name__ == "__main__":
    main()
