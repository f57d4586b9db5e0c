"""Retrieval metrics of the Oxford5k / Paris6k protocols: AP, mAP, mP@k, and exact full ranking.

Pure NumPy (`rank_database` uses faiss through `tf_netvlad.evaluation.ranking` only for a top-k). Ground truth
comes from `tf_netvlad.evaluation.ground_truth`; the end-to-end evaluation is
`tf_netvlad.evaluation.oxford_paris.evaluate_map`.

AP (`average_precision`, `compute_map`): junk images are removed from the ranking (they do not count
and do not take a rank); with r_j the 0-based rank of the j-th retrieved positive (j = 0, 1, ...)
after that removal and n the number of positives,

    AP = (1 / n) * sum_j (P0_j + P1_j) / 2,
    P0_j = j / r_j (precision before the positive; 1 if r_j = 0),  P1_j = (j + 1) / (r_j + 1),

the trapezoid rule over the precision-recall curve of the Oxford `compute_ap` (also MATLAB
`compute_map.m` and cirtorch/revisitop `compute_ap`). mP@k follows revisitop's `compute_map`: with
p the 1-based positions of the retrieved positives after junk removal, k' = min(max(p), k) and
P@k = |{p <= k'}| / k' (so a query with 2 positives ranked 1 and 2 has P@5 = 1), 0 when no positive
was retrieved. Queries without positives under a protocol are skipped (AP NaN) and the means are
taken over the others.

Truncated rankings: `ranked_ids` may hold only the top K < num_db ids per query. Positives beyond K
then count as **not retrieved**: they add nothing to the sum but still count in n, so AP is a lower
bound of the full-ranking AP (equal to it when every positive is within the top K). For mP@k they
lie past the end (k' = k), so mP@k equals the full ranking's whenever the top K holds at least k
non-junk images. The default ranks the whole database (`rank_database`), as the reference does.

An id in both a query's positive and junk lists counts as a positive.
"""

import logging

import numpy as np

from tf_netvlad.evaluation.ground_truth import (
    REVISITED_PROTOCOLS,
    ground_truth_from_revisited,
    index_array,
    revisited_lists,
)

DEFAULT_KS = (1, 5, 10)
_WORK_ELEMENTS = 2**20  # elements of the per-chunk (queries x ranked) work arrays
_SCORE_BYTES = 256 * 2**20  # float32 scores + int32 order per query chunk in rank_database
_DB_BLOCK_BYTES = 64 * 2**20  # float32 database rows converted at a time in rank_database

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- metrics


def average_precision(ranks, num_positives):
    """AP of one query from the sorted 0-based ranks of its retrieved positives (junk removed).

    Example: positives at ranks 0 and 2 of 2 positives: (1 + 1)/2/2 + (1/2 + 2/3)/2/2 = 0.7917.
    """
    ranks = np.asarray(ranks, np.float64).ravel()
    if isinstance(num_positives, bool) or not isinstance(num_positives, (int, np.integer)) \
            or num_positives < max(1, len(ranks)):
        raise ValueError(f"`num_positives` must be an int >= max(1, len(ranks)) = "
                         f"{max(1, len(ranks))}. Received: num_positives={num_positives!r}")
    j = np.arange(len(ranks), dtype=np.float64)
    if len(ranks) and (np.any(ranks != np.round(ranks)) or np.any(ranks < j)
                       or np.any(np.diff(ranks) <= 0)):
        raise ValueError(f"`ranks` must be strictly increasing ints >= 0. Received: {ranks}")
    p0 = np.where(ranks > 0, j / np.maximum(ranks, 1), 1.0)
    p1 = (j + 1) / (ranks + 1)
    return float(np.sum(p0 + p1) / (2.0 * num_positives))


def check_ks(ks):
    """The k values of mP@k as a tuple of ints; `ValueError` unless all are ints >= 1."""
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1
                     for k in ks):
        raise ValueError(f"`ks` must be positive ints. Received: ks={ks!r}")
    return tuple(int(k) for k in ks)


def _check_ranked(ranked_ids, num_queries):
    ranked = np.asarray(ranked_ids)
    if ranked.ndim != 2 or not np.issubdtype(ranked.dtype, np.integer) or ranked.shape[1] < 1:
        raise ValueError("`ranked_ids` must be a 2-D integer array (num_queries, K >= 1). "
                         f"Received: shape {ranked.shape}, dtype {ranked.dtype}")
    if len(ranked) != num_queries:
        raise ValueError(f"`ranked_ids` has {len(ranked)} rows for {num_queries} queries.")
    return ranked


def _chunk_metrics(ranked, labels, num_positives, ks):
    """AP and P@k of a chunk: `labels` (c, num_db) int8 with 1 = positive, 2 = junk."""
    lab = np.take_along_axis(labels, ranked, axis=1)
    pos = lab == 1
    rank = np.cumsum(lab != 2, axis=1, dtype=np.int64) - 1  # 0-based rank after junk removal
    j = np.cumsum(pos, axis=1, dtype=np.int64) - 1  # index of a positive among the positives
    p0 = np.where(rank > 0, j / np.maximum(rank, 1), 1.0)
    p1 = (j + 1) / np.maximum(rank + 1, 1)  # rank is -1 only at junk before any kept image
    ap = np.where(pos, p0 + p1, 0.0).sum(axis=1) / (2.0 * np.maximum(num_positives, 1))
    position = np.where(pos, rank + 1, 0)
    # A positive missing from a truncated ranking lies beyond its end: k' = k, as in the full one.
    last = np.where(pos.sum(axis=1) < num_positives, np.iinfo(np.int64).max, position.max(axis=1))
    precision = np.zeros((len(ranked), len(ks)))
    for col, k in enumerate(ks):
        kq = np.minimum(last, k)
        hits = ((position > 0) & (position <= kq[:, None])).sum(axis=1)
        precision[:, col] = np.where(kq > 0, hits / np.maximum(kq, 1), 0.0)
    return ap, precision


def compute_map(ranked_ids, positives, junk=None, ks=DEFAULT_KS, num_db=None):
    """mAP and mP@k of rankings against per-query positive and junk id lists.

    Args:
        ranked_ids: int array `(Q, K)` of database ids, best first, each id at most once per row;
            K = num_db for the full ranking, smaller for a truncated one (see the module doc).
        positives: Q arrays of positive database ids.
        junk: Q arrays of junk ids (removed from the ranking), or None.
        ks: k values of mP@k.
        num_db: database size (default: 1 + the largest id seen).

    Returns:
        dict: "mAP", "mP@k" for each k (means over the queries with positives), "num_queries"
        (scored), "num_queries_skipped" (no positive), "ap" float64 `(Q,)` and "precision"
        `(Q, len(ks))` (NaN for skipped queries).
    """
    ks = check_ks(ks)
    ranked = _check_ranked(ranked_ids, len(positives))
    junk = [()] * len(positives) if junk is None else junk
    if len(junk) != len(positives):
        raise ValueError(f"`junk` has {len(junk)} entries for {len(positives)} queries.")
    if num_db is None:
        seen = [ranked.max()] + [np.max(x) for x in (*positives, *junk) if len(x)]
        num_db = int(max(seen)) + 1
    if ranked.min() < 0 or ranked.max() >= num_db:
        raise ValueError(f"`ranked_ids` must hold database ids in [0, {num_db}). Received values "
                         f"from {ranked.min()} to {ranked.max()} (padding like -1 is not allowed).")
    pos_lists = [index_array(p, num_db, f"positives[{q}]") for q, p in enumerate(positives)]
    junk_lists = [index_array(p, num_db, f"junk[{q}]") for q, p in enumerate(junk)]
    counts = np.array([len(p) for p in pos_lists], np.int64)
    ap = np.full(len(ranked), np.nan)
    precision = np.full((len(ranked), len(ks)), np.nan)
    rows = max(1, _WORK_ELEMENTS // max(num_db, ranked.shape[1]))
    for start in range(0, len(ranked), rows):
        chunk = ranked[start : start + rows].astype(np.int64)
        ordered = np.sort(chunk, axis=1)
        dup = np.flatnonzero((np.diff(ordered, axis=1) == 0).any(axis=1))
        if len(dup):
            raise ValueError(f"`ranked_ids` row {start + int(dup[0])} lists a database id twice.")
        labels = np.zeros((len(chunk), num_db), np.int8)
        for row in range(len(chunk)):
            labels[row, junk_lists[start + row]] = 2
            labels[row, pos_lists[start + row]] = 1
        ap[start : start + len(chunk)], precision[start : start + len(chunk)] = _chunk_metrics(
            chunk, labels, counts[start : start + len(chunk)], ks)
    scored = counts > 0
    ap[~scored] = np.nan
    precision[~scored] = np.nan
    result = {"mAP": float(np.mean(ap[scored])) if scored.any() else float("nan")}
    for col, k in enumerate(ks):
        result[f"mP@{k}"] = float(np.mean(precision[scored, col])) if scored.any() else float("nan")
    if not scored.any():
        logger.warning("None of the %d queries has a positive: mAP is undefined (NaN).", len(ap))
    result.update(num_queries=int(scored.sum()), num_queries_skipped=int((~scored).sum()), ap=ap,
                  precision=precision)
    return result


def evaluate_rankings(ranked_ids, gt, ks=DEFAULT_KS):
    """`{protocol: compute_map(...)}` for every protocol of a `RetrievalGroundTruth`."""
    return {name: compute_map(ranked_ids, pos, junk, ks=ks, num_db=gt.num_db)
            for name, (pos, junk) in gt.protocols.items()}


def revisited_map(ranked_ids, gnd, ks=DEFAULT_KS):
    """{easy, medium, hard} x {mAP, mP@k} of rankings.

    `gnd`: a `RetrievalGroundTruth` from `load_revisited_gnd`, the pickle's dict, or its "gnd" list
    of per-query dicts with "easy", "hard", "junk" (the database size is then 1 + the largest id).
    """
    if isinstance(gnd, (list, tuple)):
        lists = [revisited_lists(*(np.asarray(g[k], np.int64).ravel()
                                   for k in ("easy", "hard", "junk"))) for g in gnd]
        return {p: compute_map(ranked_ids, [e[p][0] for e in lists], [e[p][1] for e in lists],
                               ks=ks) for p in REVISITED_PROTOCOLS}
    if isinstance(gnd, dict):
        gnd = ground_truth_from_revisited(gnd)
    missing = [p for p in REVISITED_PROTOCOLS if p not in gnd.protocols]
    if missing:
        raise ValueError(f"{gnd.name!r} is not a revisited ground truth (no {missing} protocol).")
    return {p: compute_map(ranked_ids, *gnd.protocols[p], ks=ks, num_db=gnd.num_db)
            for p in REVISITED_PROTOCOLS}


# --------------------------------------------------------------------------- ranking


def rank_database(db, queries, k=None, max_bytes=_SCORE_BYTES):
    """Database ids of every query sorted by decreasing inner product (exact search).

    `k=None` (or k >= num_db) ranks the whole database: queries are taken in chunks whose float32
    score rows and sort order stay under `max_bytes`, the database is converted to float32 in blocks
    (float16 and `np.memmap` inputs are never copied whole), ties keep the lower id. Returns int32
    `(Q, num_db)` (int64 past 2**31 images). A smaller k uses the streamed faiss top-k of
    `tf_netvlad.evaluation.ranking.exact_topk` (int64 `(Q, k)`).
    """
    for name, x in (("db", db), ("queries", queries)):
        if getattr(x, "ndim", None) != 2 or not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"`{name}` must be a 2-D float array. Received: "
                             f"{type(x).__name__} {getattr(x, 'shape', '')}")
    num_db, dim = db.shape
    if queries.shape[1] != dim or num_db == 0:
        raise ValueError(f"Need a non-empty database and queries of the same dim: db {db.shape}, "
                         f"queries {queries.shape}.")
    if k is not None and k < num_db:
        from tf_netvlad.evaluation import ranking

        return ranking.exact_topk(db, queries, k)
    dtype = np.int32 if num_db < 2**31 else np.int64
    out = np.empty((len(queries), num_db), dtype)
    rows = max(1, int(max_bytes) // (num_db * (4 + 8)))
    block = max(1, _DB_BLOCK_BYTES // (4 * dim))
    for start in range(0, len(queries), rows):
        chunk = np.asarray(queries[start : start + rows], np.float32)
        if not np.isfinite(chunk).all():
            raise ValueError(f"`queries` rows {start}..{start + len(chunk) - 1} hold NaN or inf.")
        scores = np.empty((len(chunk), num_db), np.float32)
        for b in range(0, num_db, block):
            part = np.asarray(db[b : b + block], np.float32)
            if not np.isfinite(part).all():
                raise ValueError(f"`db` rows {b}..{b + len(part) - 1} hold NaN or inf.")
            scores[:, b : b + len(part)] = chunk @ part.T
        np.negative(scores, out=scores)
        out[start : start + len(chunk)] = np.argsort(scores, axis=1, kind="stable")
    return out
