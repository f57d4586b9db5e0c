"""faiss wrapper: exact (or approximate) nearest-neighbour search and k-means.

The only module that imports faiss, and only inside functions (`import faiss` costs ~0.1 s and keeps
`tf_netvlad --help` free of it). No TensorFlow here. Everything works on float32: float16 (or
float64) inputs are converted chunk by chunk, so no full-size converted copy of a descriptor
database is ever held.

Descriptors are L2-normalised, so inner product ranks exactly like L2 distance
(`||q - x||^2 = 2 - 2 q.x`); `metric="ip"` is the default and scores are similarities (higher is
better). With `metric="l2"` scores are squared L2 distances (lower is better).
"""

import logging
import os

import numpy as np

from tf_netvlad.defaults import KMEANS_NITER, SEED

logger = logging.getLogger(__name__)

METRICS = ("ip", "l2")
DEFAULT_CHUNK_SIZE = 4096


def _faiss():
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - faiss-cpu is a hard requirement
        raise ImportError("tf_netvlad.search.faiss_index needs faiss: pip install faiss-cpu") from error
    return faiss


def _check_matrix(x, name):
    if not hasattr(x, "ndim") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D array (n, d). Received shape {tuple(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"`{name}` must be a float32 or float16 array. Received dtype {x.dtype}")
    return x


def _as_float32(chunk, name, offset=0):
    chunk = np.ascontiguousarray(chunk, dtype=np.float32)
    if not np.isfinite(chunk).all():
        bad = offset + int(np.flatnonzero(~np.isfinite(chunk).all(axis=1))[0])
        raise ValueError(
            f"`{name}` contains NaN or inf values (first bad row {bad}). Rows of skipped images "
            "are NaN: drop them before building the index or searching."
        )
    return chunk


def _chunks(x, chunk_size, name):
    for start in range(0, len(x), chunk_size):
        yield start, _as_float32(x[start : start + chunk_size], name, start)


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1. Received: {name}={value!r}")


def _check_metric(metric):
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {METRICS}. Received: metric={metric!r}")


def kmeans(x, k, niter=KMEANS_NITER, seed=SEED, max_points_per_centroid=None, verbose=False):
    """k-means with `faiss.Kmeans`, as MATLAB NetVLAD's `yael_kmeans(x, K, niter=100, seed=43)`.

    By default every point is used: faiss would otherwise subsample to 256 points per centroid
    (`max_points_per_centroid`), which pytorch-NetVlad silently does.

    Args:
        x: `(n, D)` float32/float16 descriptors, n >= k.
        k: number of clusters, >= 1.
        niter: k-means iterations.
        seed: faiss RNG seed (centroid init and any subsampling).
        max_points_per_centroid: subsample to `k * max_points_per_centroid` points if set; `None`
            uses all points.
        verbose: print faiss progress.

    Returns:
        `(k, D)` float32 centroids.
    """
    x = _check_matrix(x, "x")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"`k` (number of clusters) must be an int >= 1. Received: k={k!r}")
    if len(x) < k:
        raise ValueError(f"k-means needs at least k={k} descriptors, got n={len(x)}.")
    _check_positive_int(niter, "niter")
    faiss = _faiss()
    points = x if x.dtype == np.float32 and x.flags.c_contiguous else None
    if points is None:
        points = np.empty(x.shape, np.float32)
        for start, chunk in _chunks(x, DEFAULT_CHUNK_SIZE * 16, "x"):
            points[start : start + len(chunk)] = chunk
    elif not np.isfinite(points).all():
        _as_float32(points, "x")
    if max_points_per_centroid is None:
        max_points_per_centroid = -(-len(points) // int(k)) + 1
    clustering = faiss.Kmeans(
        points.shape[1],
        int(k),
        niter=int(niter),
        seed=int(seed),
        verbose=bool(verbose),
        max_points_per_centroid=int(max_points_per_centroid),
        min_points_per_centroid=1,
    )
    clustering.train(points)
    return np.array(clustering.centroids, dtype=np.float32).reshape(int(k), points.shape[1])


def empty_index(dim, kind="flat", metric="ip"):
    """An empty (untrained) faiss index of dimension `dim`: "flat" or an `index_factory` string.

    Also the cheap check of a factory string before any descriptor is computed: raises
    `ValueError` naming `kind` when faiss cannot build it for `dim` (e.g. PQ sub-quantisers that
    do not divide the dimension).
    """
    _check_metric(metric)
    faiss = _faiss()
    _check_positive_int(dim, "dim")
    dim = int(dim)
    if kind == "flat":
        return faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
    if not isinstance(kind, str) or not kind:
        raise ValueError(
            f"`kind` must be 'flat' or a faiss index_factory string. Received: kind={kind!r}"
        )
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    try:
        return faiss.index_factory(dim, kind, faiss_metric)
    except RuntimeError as error:
        raise ValueError(
            f"`kind` must be 'flat' or a valid faiss index_factory string for dimension {dim}. "
            f"Received: kind={kind!r} ({str(error).strip().splitlines()[-1]})"
        ) from error


def build_index(
    db, kind="flat", metric="ip", chunk_size=DEFAULT_CHUNK_SIZE, nprobe=None, train_size=None,
    seed=SEED,
):
    """Builds a faiss index over database descriptors.

    Args:
        db: `(n, D)` float32 or float16 array (may be an `np.memmap`); added in float32 chunks.
        kind: "flat" for exact search (default), or any faiss `index_factory` string such as
            "IVF1024,PQ32" (trained on at most `train_size` db rows, all if None).
        metric: "ip" (inner product, default) or "l2" (squared L2).
        chunk_size: rows converted/added per step.
        nprobe: IVF cells visited at search time (IVF kinds only).
        train_size: cap on training rows for non-flat kinds (random rows, seeded).
        seed: RNG seed for the training subsample.

    Returns:
        a `faiss.Index` holding `n` vectors (`index.ntotal`).
    """
    db = _check_matrix(db, "db")
    index = empty_index(db.shape[1], kind, metric)
    if kind != "flat":
        if hasattr(index, "do_polysemous_training"):
            index.do_polysemous_training = False  # useless without polysemous search, and 5x slower
        if not index.is_trained:
            rows = np.arange(len(db))
            if train_size is not None and train_size < len(db):
                rng = np.random.default_rng(seed)
                rows = np.sort(rng.choice(len(db), int(train_size), replace=False))
            index.train(_as_float32(db[rows], "db"))
    if nprobe is not None:
        set_nprobe(index, nprobe)
    return add_vectors(index, db, chunk_size=chunk_size, name="db")


def add_vectors(index, x, start=0, chunk_size=DEFAULT_CHUNK_SIZE, name="descriptors"):
    """Adds the rows `x[start:]` to `index` in float32 chunks (their ids follow `index.ntotal`).

    A NaN or inf row raises `ValueError` naming `name` and its row in `x`. Returns `index`.
    """
    for offset in range(start, len(x), chunk_size):
        index.add(_as_float32(x[offset : offset + chunk_size], name, offset))
    return index


def has_flat_storage(index):
    """True for an HNSW index over raw float32 vectors (`IndexHNSWFlat`): its vectors can be
    written apart from the graph (`write_index(..., skip_storage=True)`) and re-attached."""
    return isinstance(_faiss().downcast_index(index), _faiss().IndexHNSWFlat)


def write_index(index, path, skip_storage=False):
    """`faiss.write_index`; `skip_storage` leaves out an HNSW index's vectors (graph only)."""
    faiss = _faiss()
    if skip_storage:
        faiss.write_index(index, os.fspath(path), faiss.IO_FLAG_SKIP_STORAGE)
    else:
        faiss.write_index(index, os.fspath(path))


def read_index(path, db=None, chunk_size=DEFAULT_CHUNK_SIZE):
    """`faiss.read_index`; with `db`, re-attaches the vectors of an HNSW graph written with
    `skip_storage` (row i = id i, added in float32 chunks; the metric is the index's)."""
    faiss = _faiss()
    index = faiss.read_index(os.fspath(path))  # already of its concrete class
    if db is None:
        return index
    db = _check_matrix(db, "db")
    if not isinstance(index, faiss.IndexHNSWFlat) or db.shape != (index.ntotal, index.d):
        raise ValueError(f"{os.fspath(path)!r} is not an HNSW graph of {db.shape[0]} vectors of "
                         f"dim {db.shape[1]} (found {type(index).__name__}, {index.ntotal} x {index.d}).")
    storage = faiss.IndexFlat(index.d, index.metric_type)
    for _, chunk in _chunks(db, chunk_size, "db"):
        storage.add(chunk)
    storage.this.disown()  # the HNSW index owns and frees it
    index.storage = storage
    index.own_fields = True
    return index


def set_nprobe(index, nprobe):
    """Sets the IVF cells visited per query of an IVF index (e.g. "IVF1024,PQ64") in place.

    Raises `ValueError` for an index without an IVF part (such as the exact "flat" one).
    """
    _check_positive_int(nprobe, "nprobe")
    faiss = _faiss()
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError as error:
        raise ValueError(
            f"`nprobe` applies to IVF indexes only; this index is a {type(index).__name__}."
        ) from error
    ivf.nprobe = int(nprobe)
    return index


def search(index_or_db, queries, k, chunk_size=DEFAULT_CHUNK_SIZE, metric="ip"):
    """Top-k search, chunked over queries so memory stays bounded.

    Args:
        index_or_db: a faiss index (from `build_index`) or a `(n, D)` database array (an exact flat
            index with `metric` is built from it).
        queries: `(Q, D)` float32/float16 array.
        k: neighbours per query, >= 1; clipped to the database size.
        chunk_size: queries per faiss call.
        metric: used only when a database array is passed.

    Returns:
        `(scores float32 (Q, k'), ids int64 (Q, k'))` with `k' = min(k, n)`, best first.
    """
    _check_positive_int(k, "k")
    _check_positive_int(chunk_size, "chunk_size")
    index = index_or_db
    if hasattr(index_or_db, "ndim"):
        index = build_index(index_or_db, metric=metric)
    queries = _check_matrix(queries, "queries")
    if queries.shape[1] != index.d:
        raise ValueError(
            f"`queries` have dim {queries.shape[1]} but the index holds dim {index.d} vectors."
        )
    if index.ntotal == 0:
        raise ValueError("The index is empty: the database has no descriptors.")
    k = min(int(k), int(index.ntotal))
    scores = np.empty((len(queries), k), np.float32)
    ids = np.empty((len(queries), k), np.int64)
    for start, chunk in _chunks(queries, chunk_size, "queries"):
        chunk_scores, chunk_ids = index.search(chunk, k)
        scores[start : start + len(chunk)] = chunk_scores
        ids[start : start + len(chunk)] = chunk_ids
    return scores, ids
