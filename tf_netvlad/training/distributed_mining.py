"""Multi-worker mining: each worker holds only a block of the cache, every worker mines the same tuples.

Under `MultiWorkerMirroredStrategy` (`HardNegativeMiner(group=...)`) worker w of W extracts the
database ids `distributed.shard_range(num_db, W, w)` and the same block of the cycle's queries that
are not database images; a query that is a database image (`db_queries`) takes its descriptor from
the worker that holds that image.
Two exact all-reduces (sums in which every worker contributes zeros outside its part) then give
every worker the same inputs: `exchange_cache_blocks` gathers the query descriptors and the failed
images, and `mine_tuples_sharded` completes the table of the (query, positive) and (query,
candidate) distances. Selection runs on identical inputs, so the rows and the negative memory are
identical on every worker, and no worker holds the whole database cache.
"""

import numpy as np

from tf_netvlad.training.config import TrainConfig
from tf_netvlad.training.tuple_mining import TupleRows, plan_query, sq_dists


def exchange_cache_blocks(group, q_pos, q_rows, num_queries, bad_q, bad_db, db_lo, num_db):
    """Every worker's query descriptors and its failed images, on every worker.

    Args:
        group: `distributed.WorkerGroup` (or anything with an exact `all_reduce_sum`).
        q_pos: int positions, among the cycle's `num_queries` queries, of the descriptors this worker
            holds (every position is held by exactly one worker).
        q_rows: float32 `(len(q_pos), d)` those descriptors.
        bad_q: int positions, among the cycle's queries, whose image failed on this worker (their
            rows are ignored).
        bad_db: int positions inside this worker's database block (first id `db_lo`) that failed.
        num_db: database size of the split.

    Returns:
        `(q_desc float32 (num_queries, d), bad db ids, bad query positions in 0..num_queries-1)`,
        the same on every worker (one all-reduce: `x + 0 = x`, so the gather is bit-exact).
    """
    q_desc = np.zeros((num_queries, q_rows.shape[1]), np.float32)
    q_desc[q_pos] = q_rows
    flags = np.zeros(num_db + num_queries, np.float32)
    flags[db_lo + bad_db] = 1
    flags[num_db + bad_q] = 1
    q_desc[bad_q] = 0  # NaN rows of failed images would poison the sum
    exchanged = group.all_reduce_sum(np.concatenate([q_desc.ravel(), flags]))
    q_desc = exchanged[: q_desc.size].reshape(q_desc.shape)
    flags = exchanged[q_desc.size :]
    return q_desc, np.flatnonzero(flags[:num_db]), np.flatnonzero(flags[num_db:])


def mine_tuples_sharded(query_ids, query_desc, db_shard, db_lo, num_db, positives, non_negatives,
                        neg_cache, rng, all_reduce_sum, *, num_positives=TrainConfig.num_positives,
                        num_negatives=TrainConfig.num_negatives,
                        pool_size=TrainConfig.negative_pool_size, keep_factor=TrainConfig.keep_factor,
                        margin=TrainConfig.margin, bad_db=None,
                        exclude_very_hard=TrainConfig.exclude_very_hard):
    """`mine_tuples` when each worker holds only a block of the database descriptors.

    Every worker calls this with the same queries, query descriptors, memory and `rng` state and its
    own block `db_shard` = descriptors of db ids `db_lo .. db_lo + len(db_shard)`. The random pools
    depend on `rng` only, so every worker draws the same candidates; each computes the squared
    distances of the (query, positive) and (query, candidate) pairs whose db image it holds, and
    `all_reduce_sum` (a sum over the workers of a float32 vector, zeros elsewhere: exact) completes
    the table of Σ_q (|positives| + |candidates|) distances. Selection then runs on identical inputs,
    so every worker mines identical rows. Compared with `mine_tuples` on the whole database, the
    result is the same tuples and memory, except for candidates whose d² differ by less than float32
    rounding (both rank by (d², id); here d² = |q − x|² per pair, there |q|² + |x|² − 2 q·x from a
    Gram matrix).

    Args:
        query_ids, query_desc, positives, non_negatives, neg_cache, rng, and the keyword arguments:
            as in `mine_tuples`.
        db_shard: float32 `(n_w, d)` this worker's database descriptors.
        db_lo: db id of the first row of `db_shard`.
        num_db: database size of the split.
        all_reduce_sum: callable, float32 array -> its sum over the workers.

    Returns:
        `(rows, new_cache, stats)` as `mine_tuples`.
    """
    bad_db = np.zeros(0, np.int64) if bad_db is None else np.asarray(bad_db, np.int64)
    db_hi = db_lo + len(db_shard)
    plans = [plan_query(q, positives, non_negatives, neg_cache, rng, num_db, pool_size, num_negatives,
                        bad_db) for q in query_ids]
    sizes = np.array([len(ids) for plan in plans for ids in plan], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    partial = np.zeros(int(offsets[-1]), np.float32)
    for i, (desc, plan) in enumerate(zip(query_desc, plans)):
        for j, ids in enumerate(plan):
            mine = np.flatnonzero((ids >= db_lo) & (ids < db_hi))
            if len(mine):
                start = offsets[2 * i + j]
                partial[start + mine] = sq_dists(desc, db_shard[ids[mine] - db_lo])
    table = np.asarray(all_reduce_sum(partial), np.float32)
    out = TupleRows(len(query_ids), num_positives, num_negatives, margin)
    for r, (q, (pos, candidates)) in enumerate(zip(query_ids, plans)):
        pos_d2 = table[offsets[2 * r] : offsets[2 * r + 1]]
        cand_d2 = table[offsets[2 * r + 1] : offsets[2 * r + 2]]
        order = np.argsort(pos_d2, kind="stable")[:num_positives]
        keep = len(candidates) if exclude_very_hard else keep_factor * num_negatives
        ranking = np.lexsort((candidates, cand_d2))[:keep]
        out.add(r, q, pos[order], float(pos_d2[order[0]]), candidates[ranking], cand_d2[ranking],
                exclude_very_hard)
    return out.result()
