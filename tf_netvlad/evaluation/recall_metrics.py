"""recall@N from ranked database ids and each query's positives: the metric alone, in NumPy.

A query counts as found at N when at least one of its true positives (database images within the
split's positive radius) is among its first N retrieved ids. Queries without any positive cannot
be scored: they are excluded from the denominator (and logged), not counted as failures, so a
perfect model scores 1. The search, the protocols and the model around it are in `recall`.
"""

import logging

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_RECALL_NS = (1, 5, 10, 20)
# MATLAB NetVLAD `recallNs = [1:5, 10:5:100]`.
REFERENCE_RECALL_NS = (1, 2, 3, 4, 5) + tuple(range(10, 101, 5))


def check_ns(ns):
    """`ns` as a sorted tuple of distinct ints >= 1, or ValueError."""
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
    ns = check_ns(ns)
    retrieved_ids = np.asarray(retrieved_ids)
    ranks = first_correct_rank(retrieved_ids, positives)
    if ns[-1] > retrieved_ids.shape[1]:
        raise ValueError(
            f"recall@{ns[-1]} needs at least {ns[-1]} retrieved ids per query. Received "
            f"retrieved_ids with {retrieved_ids.shape[1]} columns; lower `ns` or retrieve more."
        )
    return recalls_from_ranks(ranks, ns)


def recalls_from_ranks(ranks, ns, log=True):
    """recall@N for each N in `ns` from `first_correct_rank`'s ranks; queries ranked -1 excluded."""
    valid = ranks >= 0
    excluded = int((~valid).sum())
    if not valid.any():
        raise ValueError(
            f"None of the {len(ranks)} queries has a positive database image, so recall is "
            "undefined. Check the split (UTM coordinates, positive radius, image lists)."
        )
    if excluded and log:
        logger.warning(
            "%d of %d queries have no positive database image and are excluded from recall@N.",
            excluded, len(ranks),
        )
    found = ranks[valid]
    return {n: float(np.mean((found >= 1) & (found <= n))) for n in ns}
