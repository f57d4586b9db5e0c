"""Place-recognition evaluation: recall@N over GPS ground truth, plus reporting helpers.

recall@N is the fraction of queries with at least one true positive (a database image within the
split's positive radius, 25 m by default) among their top N retrieved database images, retrieval
being exhaustive nearest-neighbour search on the descriptors (MATLAB `yael_nn`, faiss here).

Queries without any positive cannot be scored: they are **excluded** from the denominator and
their count is reported (`num_queries_without_positives`, plus a log warning), instead of being
counted as failures (which would make a perfect model score below 1).

Importing this module does not import TensorFlow; `evaluate` imports `extract` lazily.
"""

import json
import logging
import os

import numpy as np

from tf_netvlad import index as faiss_index
from tf_netvlad.fileio import atomic_path

logger = logging.getLogger(__name__)

DEFAULT_RECALL_NS = (1, 5, 10, 20)
# MATLAB NetVLAD `recallNs = [1:5, 10:5:100]`.
REFERENCE_RECALL_NS = (1, 2, 3, 4, 5) + tuple(range(10, 101, 5))


def _check_ns(ns):
    ns = tuple(ns)
    if not ns or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1
                     for n in ns):
        raise ValueError(f"`ns` must be a non-empty sequence of ints >= 1. Received: ns={ns!r}")
    return tuple(sorted({int(n) for n in ns}))


def first_correct_rank(retrieved_ids, positives):
    """1-based rank of the first true positive in each query's retrieved list.

    Returns int64 `(Q,)`: `r >= 1` is the rank of the first positive, `0` means no positive within
    the retrieved list, `-1` means the query has no positive at all (excluded from recall).
    """
    retrieved_ids = np.asarray(retrieved_ids)
    if retrieved_ids.ndim != 2:
        raise ValueError(
            "`retrieved_ids` must be 2-D (num_queries, max_n). "
            f"Received shape {retrieved_ids.shape}"
        )
    if len(positives) != len(retrieved_ids):
        raise ValueError(
            f"`positives` must have one entry per query: got {len(positives)} entries for "
            f"{len(retrieved_ids)} queries."
        )
    ranks = np.zeros(len(retrieved_ids), np.int64)
    for q, (row, pos) in enumerate(zip(retrieved_ids, positives)):
        pos = np.asarray(pos)
        if pos.size == 0:
            ranks[q] = -1
            continue
        hits = np.flatnonzero(np.isin(row, pos))
        if hits.size:
            ranks[q] = hits[0] + 1
    return ranks


def recall_at_n(retrieved_ids, positives, ns=DEFAULT_RECALL_NS):
    """recall@N for each N in `ns`, over the queries that have at least one positive.

    Args:
        retrieved_ids: int array `(Q, max_n)`, database ids per query, best first.
        positives: list of Q int arrays of database ids within the positive radius.
        ns: the N values; each must be <= `max_n`.

    Returns:
        dict `{N: fraction in [0, 1]}`. Queries without positives are excluded (logged); if no
        query has a positive, `ValueError`.

    Example:
    >>> recall_at_n([[3, 1], [0, 2]], [[1], [5]], ns=(1, 2))
    {1: 0.0, 2: 0.5}
    """
    ns = _check_ns(ns)
    retrieved_ids = np.asarray(retrieved_ids)
    ranks = first_correct_rank(retrieved_ids, positives)
    if ns[-1] > retrieved_ids.shape[1]:
        raise ValueError(
            f"recall@{ns[-1]} needs at least {ns[-1]} retrieved ids per query. Received "
            f"retrieved_ids with {retrieved_ids.shape[1]} columns; lower `ns` or retrieve more."
        )
    return _recalls_from_ranks(ranks, ns)


def _recalls_from_ranks(ranks, ns):
    valid = ranks >= 0
    excluded = int((~valid).sum())
    if not valid.any():
        raise ValueError(
            f"None of the {len(ranks)} queries has a positive database image, so recall is "
            "undefined. Check the split (UTM coordinates, positive radius, image lists)."
        )
    if excluded:
        logger.warning(
            "%d of %d queries have no positive database image and are excluded from recall@N.",
            excluded, len(ranks),
        )
    found = ranks[valid]
    return {n: float(np.mean((found >= 1) & (found <= n))) for n in ns}


def evaluate_descriptors(
    db_desc, query_desc, positives, ns=DEFAULT_RECALL_NS, chunk_size=faiss_index.DEFAULT_CHUNK_SIZE,
    return_ids=False, exclude=None,
):
    """recall@N from precomputed descriptors (exact faiss inner-product search, chunked).

    N larger than the database is allowed: every database image is then retrieved, so
    recall@N equals recall@num_db.

    `exclude` (optional, one int array per query) removes database images from that query's
    ranking and from its positives, e.g. TokyoTM's same-time-stamp images
    (`split.same_timestamp_db()`); excluded slots at the end of a row are filled with -1.

    Returns:
        dict with `"recall@N"` for each N (fractions), `num_queries`,
        `num_queries_without_positives`, `num_db`, `descriptor_dim`. With `return_ids=True`, a
        tuple `(results, ids)` where `ids` is int64 `(Q, min(max(ns), num_db))`.
    """
    ns = _check_ns(ns)
    if db_desc.ndim != 2 or query_desc.ndim != 2 or db_desc.shape[1] != query_desc.shape[1]:
        raise ValueError(
            "`db_desc` and `query_desc` must be 2-D with the same dim. Received shapes "
            f"{tuple(db_desc.shape)} and {tuple(query_desc.shape)}"
        )
    if len(positives) != len(query_desc):
        raise ValueError(
            f"`positives` has {len(positives)} entries but there are {len(query_desc)} "
            "query descriptors."
        )
    num_db = len(db_desc)
    index = faiss_index.build_index(db_desc, metric="ip")
    if exclude is None:
        _, ids = faiss_index.search(index, query_desc, ns[-1], chunk_size=chunk_size)
    else:
        if len(exclude) != len(query_desc):
            raise ValueError(f"`exclude` has {len(exclude)} entries for {len(query_desc)} queries.")
        positives = [np.setdiff1d(p, e) for p, e in zip(positives, exclude)]
        ids = _search_excluding(index, query_desc, ns[-1], exclude, chunk_size)
    ranks = first_correct_rank(ids, positives)
    recalls = _recalls_from_ranks(ranks, ns)
    results = {f"recall@{n}": recalls[n] for n in ns}
    results.update(
        num_queries=int(len(query_desc)),
        num_queries_without_positives=int((ranks < 0).sum()),
        num_db=int(num_db),
        descriptor_dim=int(db_desc.shape[1]),
    )
    return (results, ids) if return_ids else results


def _search_excluding(index, queries, k, exclude, chunk_size):
    """Top-k ids per query with `exclude[q]` removed, chunked so memory stays bounded."""
    k = min(int(k), int(index.ntotal))
    ids = np.full((len(queries), k), -1, np.int64)
    for start in range(0, len(queries), chunk_size):
        stop = min(start + chunk_size, len(queries))
        extra = max((len(exclude[q]) for q in range(start, stop)), default=0)
        _, found = faiss_index.search(index, queries[start:stop], k + extra, chunk_size=chunk_size)
        for row, q in enumerate(range(start, stop)):
            kept = found[row][~np.isin(found[row], exclude[q])][:k]
            ids[q, : len(kept)] = kept
    return ids


def evaluate(
    model, split, root=None, image_size=None, ns=DEFAULT_RECALL_NS, batch_size=8, progress=True,
    return_ids=False,
):
    """Extracts database and query descriptors with `model` and computes recall@N on `split`.

    Args:
        model: `keras.Model`, float32 images `[B, H, W, 3]` (0..255 RGB) -> descriptors `[B, D]`.
        split: a `places.PlaceSplit` (`db_paths`, `query_paths`, `positives()`, `root`, `name`).
        root: image root; defaults to `split.root`.
        image_size: resize policy for both sides (`None` = full resolution, as MATLAB).
        ns: N values; `REFERENCE_RECALL_NS` gives MATLAB's [1:5, 10:5:100].
        batch_size, progress: passed to `extract.extract_descriptors`.
        return_ids: also return the retrieved db ids `(Q, max N)`.

    Returns:
        dict with `"recall@N"` fractions, `num_queries`, `num_queries_without_positives`, `num_db`,
        `descriptor_dim`, `split` and `image_size` (or `(results, ids)` with `return_ids=True`).
    """
    from tf_netvlad import data, extract

    ns = _check_ns(ns)
    root = getattr(split, "root", None) if root is None else root
    positives = split.positives()
    db_desc = extract.extract_descriptors(
        model, split.db_paths, root=root, image_size=image_size, batch_size=batch_size,
        progress=progress,
    )
    query_desc = extract.extract_descriptors(
        model, split.query_paths, root=root, image_size=image_size, batch_size=batch_size,
        progress=progress,
    )
    exclude = None
    if getattr(split, "has_timestamps", False):
        exclude = split.same_timestamp_db()  # TokyoTM protocol: same-capture db images dropped
    results, ids = evaluate_descriptors(
        db_desc, query_desc, positives, ns, return_ids=True, exclude=exclude
    )
    results["split"] = str(getattr(split, "name", ""))
    results["image_size"] = data.format_image_size(image_size)
    return (results, ids) if return_ids else results


def recall_ns(results):
    """The N values present in a results dict, sorted."""
    return sorted(int(key.split("@", 1)[1]) for key in results if key.startswith("recall@"))


def format_recall_table(results, labels=None):
    """Plain-text table of recall@N (%) for one results dict or a list of them (one column each)."""
    many = isinstance(results, (list, tuple))
    runs = list(results) if many else [results]
    if not runs:
        raise ValueError("`results` is empty: nothing to format.")
    if labels is None:
        labels = ([r.get("split") or f"run {i + 1}" for i, r in enumerate(runs)] if many
                  else ["recall"])
    if len(labels) != len(runs):
        raise ValueError(f"`labels` has {len(labels)} entries for {len(runs)} results.")
    ns = sorted(set().union(*(recall_ns(r) for r in runs)))
    width = max(9, *(len(str(label)) for label in labels))
    lines = []
    for label, run in zip(labels, runs):
        if "num_queries" in run:
            excluded = run.get("num_queries_without_positives", 0)
            lines.append(
                f"{label}: {run['num_queries']} queries ({excluded} without positives, "
                f"excluded), {run.get('num_db', '?')} db images, "
                f"dim {run.get('descriptor_dim', '?')}"
            )
    lines.append("N".rjust(5) + "".join(str(label).rjust(width + 2) for label in labels))
    for n in ns:
        cells = []
        for run in runs:
            value = run.get(f"recall@{n}")
            cells.append(("-" if value is None else f"{100 * value:.2f}%").rjust(width + 2))
        lines.append(f"{n:5d}" + "".join(cells))
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_json(results, path):
    """Writes `results` as JSON atomically (temp file in the same directory, then rename)."""
    text = json.dumps(_jsonable(results), indent=2, sort_keys=True) + "\n"
    with atomic_path(path, ".json") as tmp:
        with open(tmp, "w") as handle:
            handle.write(text)
    return os.fspath(path)
