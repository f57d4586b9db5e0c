"""Ranked database ids per query for evaluation: streamed exact search and an approximate index.

`exact_topk` never holds the database twice: it builds one small flat faiss index per block of
database rows (about 256 MB of float32), searches every query against it and merges the running
top-k. So a 76k x 4096 database (1.2 GB float32, 0.6 GB float16, or an `np.memmap` on disk) costs
its own size plus one block, and no float64 array is ever made. `approximate_index` builds an
IVF-PQ (or any faiss factory) index, trained on a random sample, added chunk by chunk.

TF-free; faiss is reached only through `tf_netvlad.search.faiss_index`.
"""

import numpy as np

from tf_netvlad.defaults import SEED
from tf_netvlad.evaluation import protocols
from tf_netvlad.search import faiss_index

DB_BLOCK_BYTES = 256 * 2**20  # float32 bytes per exact-search database block


def exact_topk(db, queries, k, chunk_size=faiss_index.DEFAULT_CHUNK_SIZE, db_chunk_rows=None):
    """Exact top-k inner-product ids `(Q, min(k, num_db))`, best first, streamed over `db`.

    Args:
        db: `(num_db, D)` float32/float16 array or `np.memmap`.
        queries: `(Q, D)` float array.
        k: neighbours per query.
        chunk_size: queries per faiss call and rows per float32 conversion.
        db_chunk_rows: database rows per block (default: `DB_BLOCK_BYTES` of float32, >= 1024).

    Ties keep the lower database id.
    """
    num_db, dim = db.shape
    k = min(int(k), num_db)
    rows = int(db_chunk_rows or max(1024, DB_BLOCK_BYTES // (4 * dim)))
    if rows < 1:
        raise ValueError(f"`db_chunk_rows` must be >= 1. Received: db_chunk_rows={db_chunk_rows!r}")
    best_scores = best_ids = None
    for start in range(0, num_db, rows):
        block = db[start : start + rows]
        index = faiss_index.build_index(block, metric="ip", chunk_size=chunk_size)
        scores, ids = faiss_index.search(index, queries, min(k, len(block)), chunk_size=chunk_size)
        del index
        ids += start
        if best_ids is not None:
            scores = np.concatenate([best_scores, scores], axis=1)
            ids = np.concatenate([best_ids, ids], axis=1)
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            scores = np.take_along_axis(scores, order, axis=1)
            ids = np.take_along_axis(ids, order, axis=1)
        best_scores, best_ids = scores, ids
    return best_ids


def drop_excluded(ids, exclude, k):
    """Removes `exclude[q]` from row q of `ids`, keeps the first `k`, pads with -1.

    Example:
    >>> drop_excluded(np.array([[3, 1, 2]]), [np.array([1])], k=3).tolist()
    [[3, 2, -1]]
    """
    out = np.full((len(ids), min(int(k), ids.shape[1])), -1, np.int64)
    for q, row in enumerate(ids):
        kept = row[~np.isin(row, exclude[q])][: out.shape[1]]
        out[q, : len(kept)] = kept
    return out


def ranked_ids(search, k, exclude=None):
    """`search(k')` -> ids, with room for each query's excluded ids, which are then dropped."""
    if exclude is None:
        return search(int(k))
    extra = max((len(e) for e in exclude), default=0)
    return drop_excluded(search(int(k) + extra), exclude, k)


def check_approximate(num_db, dim, factory="auto", train_size=None, nprobe=None):
    """Validates the approximate-index settings for `num_db` vectors of dimension `dim`.

    Cheap (no data): `evaluate` calls it before extracting any descriptor, so a factory that
    cannot be trained on the database fails at once instead of after hours of extraction.

    Returns:
        `(factory, training rows, nprobe)` with the defaults resolved (see `approximate_index`).
    """
    if factory is True or factory == "auto":
        factory = protocols.default_approx_factory(num_db, dim)
    if not isinstance(factory, str) or not factory:
        raise ValueError(
            "`approximate` must be None, 'auto' or a faiss factory string like 'IVF1024,PQ64'. "
            f"Received: approximate={factory!r}"
        )
    faiss_index.empty_index(dim, factory)  # parses the factory for this dimension
    if train_size is None:
        train_size = protocols.approx_train_size(factory, num_db)
    if isinstance(train_size, bool) or not isinstance(train_size, (int, np.integer)):
        raise ValueError(f"`approx_train_size` must be an int. Received: {train_size!r}")
    rows = min(int(train_size), num_db)
    need = protocols.approx_min_train(factory)
    if rows < need:
        raise ValueError(
            f"The approximate index {factory!r} needs at least {need} training vectors, but only "
            f"{rows} are available ({num_db} database images, approx_train_size={train_size}). "
            "Use fewer IVF cells or PQ bits, a larger training sample, or a larger database."
        )
    if nprobe is None:
        nprobe = protocols.approx_nprobe(factory)
    return factory, rows, nprobe


def approximate_index(db, factory="auto", train_size=None, nprobe=None, seed=SEED,
                      chunk_size=faiss_index.DEFAULT_CHUNK_SIZE):
    """An approximate faiss index over `db` (inner product) and a dict describing it.

    Args:
        db: `(num_db, D)` float32/float16 array or memmap.
        factory: "auto" (or True) for `protocols.default_approx_factory(num_db, D)`, or a faiss
            factory string such as "IVF1024,PQ64".
        train_size: training rows, drawn at random with `seed` (default
            `protocols.approx_train_size`); must cover `protocols.approx_min_train(factory)`.
        nprobe: IVF cells visited per query (default `protocols.approx_nprobe`).

    Returns:
        `(index, {"approx_index": factory, "approx_train_size": rows, "approx_nprobe": nprobe})`.
    """
    factory, rows, nprobe = check_approximate(len(db), db.shape[1], factory, train_size, nprobe)
    index = faiss_index.build_index(db, kind=factory, metric="ip", chunk_size=chunk_size,
                                    nprobe=nprobe, train_size=rows, seed=seed)
    return index, {"approx_index": factory, "approx_train_size": rows, "approx_nprobe": nprobe}
