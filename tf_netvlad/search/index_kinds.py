"""Retrieval-index kinds: "flat" | "ivfpq" | "hnsw" | a faiss factory string -> factory and
search parameters, their check and application, and the training-sample caps of a retrieval
index (`tf_netvlad.retrieval.build`). faiss itself is reached through
`tf_netvlad.search.faiss_index`.
"""

import math

from tf_netvlad.search import faiss_index as faiss_lib

KINDS = ("flat", "ivfpq", "hnsw")
HNSW_NEIGHBOURS = 32
HNSW_EF_SEARCH = 128
IVF_MAX_NPROBE = 32
IVF_TRAIN_SIZE = 100_000
TRAIN_BYTES = 1 << 30  # float32 training sample cap (65k rows at 4096-D)


def largest_divisor(n, at_most):
    """The largest divisor of `n` not above `at_most` (at least 1): PQ sub-quantiser counts."""
    return max(d for d in range(1, max(1, at_most) + 1) if n % d == 0)


def resolve_kind(kind, count, dim, float16=False):
    """Maps "flat" | "ivfpq" | "hnsw" | factory string to `(factory, search_params)`.

    "flat": exact inner product (`IndexFlatIP`); with `float16` storage "SQfp16", an exact search
    over the float16 values that holds half the memory.
    "ivfpq": `IVF{nlist},PQ{m}x{nbits}` with nlist ~ 4·sqrt(count) (at least 39 training points
    per cell), m the largest divisor of dim <= max(min(64, dim/4), min(256, dim/16)): sub-vectors
    of at most 4 dims up to 256-D and of 16 dims at 4096-D (256-byte codes; 64-byte codes keep
    the exact top-1 for only ~80 % of queries on whitened 4096-D descriptors, see
    benchmarks/RESULTS.md), nbits 8 (fewer below 9984 images, keeping 39 training points per PQ
    centroid); searched with nprobe = min(nlist, 32). "hnsw": `HNSW32`, efSearch 128.
    """
    if kind == "flat":
        return ("SQfp16" if float16 else "flat"), {}
    if kind == "ivfpq":
        nlist = int(max(1, min(round(4 * math.sqrt(count)), count // 39)))
        nbits = int(max(1, min(8, math.floor(math.log2(max(count, 39) / 39)))))
        m = largest_divisor(dim, max(min(64, dim // 4), min(256, dim // 16)))
        return f"IVF{nlist},PQ{m}x{nbits}", {"nprobe": min(nlist, IVF_MAX_NPROBE)}
    if kind == "hnsw":
        return f"HNSW{HNSW_NEIGHBOURS}", {"efSearch": HNSW_EF_SEARCH}
    if isinstance(kind, str) and kind.strip():
        return kind.strip(), {}
    raise ValueError(
        f"`kind` must be one of {KINDS} or a faiss index_factory string such as 'IVF256,PQ32'. "
        f"Received: kind={kind!r}"
    )


def apply_search_params(index, params):
    """Sets the search parameters `resolve_kind` returned (`nprobe`, `efSearch`) on `index`."""
    if "nprobe" in params:
        faiss_lib.set_nprobe(index, int(params["nprobe"]))
    if "efSearch" in params and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(params["efSearch"])


def check_factory(kind, dim):
    """Raises `ValueError` unless `kind` is a faiss factory string valid for `dim`-D vectors."""
    try:
        faiss_lib.empty_index(int(dim), kind)
    except ValueError as error:
        raise ValueError(
            f"`kind` must be one of {KINDS} or a valid faiss index_factory string for "
            f"{dim}-D descriptors. Received: kind={kind!r}"
        ) from error
