"""Mining one refresh cycle's tuples from cached descriptors (pure NumPy, no state).

`mine_tuples` implements steps 2-5 of the recipe described in `tf_netvlad.training.mining` (positives ranked
by cached d², a random negative pool plus the remembered negatives ranked by d², the new memory and
the hardest — or, with `exclude_very_hard`, semi-hard — negatives of each tuple). `plan_query` and
`TupleRows` are shared with the multi-worker variant (`distributed_mining.mine_tuples_sharded`).
Default recipe numbers are `TrainConfig`'s.

Filler negatives: a tuple has a fixed number N of negative slots, but MATLAB `trainWeakly.m` loads
only the (at most N) negatives that violate the margin under the cached descriptors, and, with
`excludeVeryHard`, are not nearer than the best positive. The other slots are *fillers* (the
next-hardest candidates) and are written into the rows as `-2 - id` (`mark_fillers`), so the
pipeline can mask them in the loss (`TrainConfig.violating_only`); `decode_negatives` gives back the
ids and the mask, `strip_fillers` the plain ids (recipes that train every slot).
"""

import numpy as np

from tf_netvlad.training.config import TrainConfig

# Rows of the (queries x database) Gram matrix computed at once: 16M float32 = 64 MiB.
GRAM_BLOCK_ELEMENTS = 1 << 24


def mark_fillers(ids, trains):
    """Negative ids with the slots that do not train (`trains` False) written as `-2 - id`."""
    ids = np.asarray(ids, np.int64)
    return np.where(trains, ids, -2 - ids)


def decode_negatives(ids):
    """`(db ids, trains)` of negative slots written by `mark_fillers` (plain ids: all train)."""
    ids = np.asarray(ids, np.int64)
    return np.where(ids <= -2, -2 - ids, ids), ids >= 0


def strip_fillers(rows, num_positives):
    """Tuple rows `[query, P positives, N negatives]` with plain negative ids (no filler marks)."""
    rows = np.array(rows, np.int64)
    rows[:, 1 + num_positives :] = decode_negatives(rows[:, 1 + num_positives :])[0]
    return rows


def sq_dists(desc, rows):
    """Squared distances from one float32 vector to db rows (float32, no float64 copies)."""
    diff = rows - desc
    return np.einsum("ij,ij->i", diff, diff)


def rank_by_d2(candidates, d2, keep):
    """The `keep` nearest candidates, ordered by (d², id): ties go to the smaller db id."""
    order = np.lexsort((candidates, d2))[: int(keep)]
    return candidates[order], d2[order]


def gram_blocks(query_desc, db_desc):
    """Yields `(start, d2)`: float32 squared distances of queries `start ..` to the whole database.

    d² = |q|² + |x|² − 2 q·x from one float32 GEMM per block of queries (at most
    `GRAM_BLOCK_ELEMENTS` entries), clipped at 0. On unit-norm descriptors the expanded form is
    accurate to ≈ 1e-6 absolute, as the direct form is to ≈ 1e-7.
    """
    db_sq = np.einsum("ij,ij->i", db_desc, db_desc)
    rows = max(1, GRAM_BLOCK_ELEMENTS // max(1, len(db_desc)))
    for start in range(0, len(query_desc), rows):
        block = np.asarray(query_desc[start : start + rows], np.float32)
        d2 = block @ db_desc.T
        d2 *= -2
        d2 += db_sq[None, :]
        d2 += np.einsum("ij,ij->i", block, block)[:, None]
        np.maximum(d2, 0, out=d2)
        yield start, d2


def sample_pool(rng, num_db, excluded, pool_size):
    """`pool_size` distinct random db ids not in `excluded` (all of them if fewer exist)."""
    excluded = np.asarray(excluded, np.int64)
    available = num_db - len(excluded)
    if available <= pool_size:
        mask = np.ones(num_db, bool)
        mask[excluded] = False
        return np.flatnonzero(mask)
    draw = min(num_db, pool_size + len(excluded))
    ids = rng.choice(num_db, size=draw, replace=False)
    ids = ids[~np.isin(ids, excluded)]
    while len(ids) < pool_size:  # only when many excluded ids were drawn; rare
        extra = rng.choice(num_db, size=pool_size, replace=False)
        ids = np.unique(np.concatenate([ids, extra[~np.isin(extra, excluded)]]))
    return ids[:pool_size]


def plan_query(q, positives, non_negatives, neg_cache, rng, num_db, pool_size, num_negatives, bad_db):
    """`(positive ids, candidate negative ids)` of query `q`; draws its random pool from `rng`."""
    pos = np.setdiff1d(np.asarray(positives[q], np.int64), bad_db)
    if len(pos) == 0:
        raise ValueError(f"query {q} has no usable positive; drop it before mining.")
    excluded = np.union1d(np.asarray(non_negatives[q], np.int64), bad_db)
    pool = sample_pool(rng, num_db, excluded, pool_size)
    cached = neg_cache[q][neg_cache[q] >= 0]
    cached = cached[~np.isin(cached, excluded)]
    candidates = np.union1d(pool, cached)
    if len(candidates) < num_negatives:
        raise ValueError(
            f"query {q} has only {len(candidates)} database images beyond the positive radius; "
            f"num_negatives={num_negatives} are needed. Lower num_negatives or add database images."
        )
    return pos, candidates


def _choose_negatives(ranked, ranked_d2, best, num_negatives, exclude_very_hard):
    """The tuple's negatives from candidates ranked nearest first (see `mine_tuples`)."""
    if not exclude_very_hard:
        return ranked[:num_negatives], ranked_d2[:num_negatives]
    order = np.concatenate([np.flatnonzero(ranked_d2 >= best), np.flatnonzero(ranked_d2 < best)[::-1]])
    return ranked[order[:num_negatives]], ranked_d2[order[:num_negatives]]


class TupleRows:
    """Accumulates tuple rows, the new negative memory and the statistics of one mining call."""

    def __init__(self, count, num_positives, num_negatives, margin):
        self.rows = np.full((count, 1 + num_positives + num_negatives), -1, np.int64)
        self.new_cache = np.full((count, num_negatives), -1, np.int64)
        self.num_positives, self.num_negatives, self.margin = num_positives, num_negatives, margin
        self.violating, self.training, self.best_d2 = 0, 0, []

    def add(self, r, q, positives_ranked, best, ranked, ranked_d2, exclude_very_hard):
        chosen, chosen_d2 = _choose_negatives(ranked, ranked_d2, best, self.num_negatives, exclude_very_hard)
        violating = chosen_d2 < best + self.margin
        trains = violating & (chosen_d2 >= best) if exclude_very_hard else violating
        self.rows[r, 0] = q
        self.rows[r, 1 : 1 + len(positives_ranked)] = positives_ranked
        self.rows[r, 1 + self.num_positives :] = mark_fillers(chosen, trains)
        self.new_cache[r] = ranked[: self.num_negatives]
        self.violating += int(np.sum(violating))
        self.training += int(np.sum(trains))
        self.best_d2.append(best)

    def result(self):
        slots = max(1, len(self.rows) * self.num_negatives)
        stats = {
            "violating_fraction": self.violating / slots,
            "training_negatives_fraction": self.training / slots,
            "mean_positive_d2": float(np.mean(self.best_d2)) if self.best_d2 else 0.0,
        }
        return self.rows, self.new_cache, stats


def mine_tuples(query_ids, query_desc, db_desc, positives, non_negatives, neg_cache, rng, *,
                num_positives=TrainConfig.num_positives, num_negatives=TrainConfig.num_negatives,
                pool_size=TrainConfig.negative_pool_size, keep_factor=TrainConfig.keep_factor,
                margin=TrainConfig.margin, bad_db=None,
                exclude_very_hard=TrainConfig.exclude_very_hard):
    """Mines one tuple per query from cached descriptors (pure; updates nothing in place).

    Args:
        query_ids: int `(Q,)` query indices of the split.
        query_desc: float32 `(Q, d)` cached descriptors of those queries (same order).
        db_desc: float32 `(num_db, d)` cached database descriptors.
        positives: per split query, int array of its potential positives (non-trivial, ≤ 10 m).
        non_negatives: per split query, int array of db ids that must not be negatives (≤ 25 m).
        neg_cache: int `(num_split_queries, N)` remembered negatives (-1 = empty).
        rng: `np.random.Generator` for the random pools.
        num_positives, num_negatives, pool_size, keep_factor, margin: see the module docstring.
        bad_db: optional int array of db ids whose images failed (excluded everywhere).
        exclude_very_hard: MATLAB's `excludeVeryHard` option: negatives nearer than the best
            positive (cached d²_n < d²_p) are not used (semi-hard mining); slots left empty are
            filled with the least-hard of them. Off in the paper recipe; it prevents the collapse
            of a backbone trained from scratch, whose hardest negatives are mostly nearer than the
            positive.

    Returns:
        `(rows, new_cache, stats)`: rows int64 `(Q, 1 + P + N)` = [query, positives (-1 padded),
        negatives, hardest first, fillers written as `-2 - id` (see the module docstring)];
        new_cache int64 `(Q, N)` to store for these queries; stats dict with `violating_fraction`
        (slots violating the margin under the cached descriptors), `training_negatives_fraction`
        (slots that are not fillers) and `mean_positive_d2`.
    """
    num_db = len(db_desc)
    bad_db = np.zeros(0, np.int64) if bad_db is None else np.asarray(bad_db, np.int64)
    out = TupleRows(len(query_ids), num_positives, num_negatives, margin)
    for start, d2_block in gram_blocks(query_desc, db_desc):
        for i, d2_row in enumerate(d2_block):
            r = start + i
            q, desc = query_ids[r], query_desc[r]
            pos, candidates = plan_query(q, positives, non_negatives, neg_cache, rng, num_db, pool_size,
                                         num_negatives, bad_db)
            pos_d2 = sq_dists(desc, db_desc[pos])
            order = np.argsort(pos_d2, kind="stable")[:num_positives]
            keep = len(candidates) if exclude_very_hard else keep_factor * num_negatives
            ranked, ranked_d2 = rank_by_d2(candidates, d2_row[candidates], keep)
            out.add(r, q, pos[order], float(pos_d2[order[0]]), ranked, ranked_d2, exclude_very_hard)
    return out.result()
