"""Hard-negative mining with a refreshed descriptor cache and a persistent negative memory.

The reference recipe (MATLAB `trainWeakly.m`), per refresh cycle of `cache_refresh_queries`
training queries:

1. Cache: descriptors of the cycle's queries and of the whole training database are computed with
   the *current* model (float32, `extract.extract_descriptors`).
2. Positives: the query's non-trivial potential positives (db images within 10 m, same time stamp
   excluded, with `exclude_trivial_m2` also those within 1 m: MATLAB's `dSq > 1`) are ranked by cached d²; the `num_positives` nearest form the positive set (the first
   is MATLAB's best positive; the train step takes the min again with fresh descriptors).
3. Negatives: a pool of `pool_size` (1000) random db images beyond `pos_dist_thr` (25 m), plus the
   query's `num_negatives` remembered negatives, is ranked by cached d² (read from one Gram matrix
   per block of queries; ties by db id), keeping the `keep_factor · num_negatives` (10 · 10) nearest.
4. Memory: the `num_negatives` nearest of those become the query's remembered negatives for the
   next time it is mined (violating or not, as MATLAB's `negCache`).
5. The tuple takes the `num_negatives` hardest negatives. Those violating the margin under the cached
   descriptors (d² < d²(q, p*) + m) are exactly MATLAB's "≤ 10 hardest violating"; when fewer
   violate, the slots are **filled with the next-hardest non-violating negatives** (a fixed tuple
   size keeps batches static), marked as fillers in the rows (`tuple_mining.mark_fillers`). With
   `violating_only` (the paper recipe, MATLAB) the fillers are masked in the loss: only the mined
   violating negatives can train, and the train step re-checks their violation (and the very-hard
   exclusion) with fresh descriptors as `trainWeakly.m` does. Without it (the CPU recipe) the
   marks are removed and every slot trains whenever it violates with the fresh descriptors.
   `stats["violating_fraction"]` reports the cached violation rate, `training_negatives_fraction`
   the share of slots that are not fillers.

The memory (`neg_cache`, int64 `(num_queries, num_negatives)`, -1 = empty) lives in the main
process in NumPy, owned by `HardNegativeMiner`; `state_dict()`/`load_state_dict()` put it into
checkpoints. The pipeline only reads the mined rows from a `tf.Variable` table, so parallel input
workers never hold training state.

Query order: the training queries with a positive are visited in passes; pass k is the permutation
`default_rng([seed, k])`, cycle e takes the next `cache_refresh_queries` queries of that stream (MATLAB
permutes per epoch with `rng(43 - 1 + iEpoch)`); with `refresh_slowdown`, cycles end at every pass
end and grow at every LR drop, as MATLAB's (`tf_netvlad.training.refresh_schedule`). The negative pools of cycle e are drawn from
`default_rng([seed, e, 1])`. Both depend only on (seed, cycle), so a resumed run mines exactly what
an uninterrupted one would.

This module holds the stateful part (`HardNegativeMiner`, `MiningCallback`); steps 2-5 on a cache
are the stateless `tuple_mining.mine_tuples` (`distributed_mining.mine_tuples_sharded` across
workers). Which queries can train, and the refusal of a split that cannot, are
`input_checks.trainable_queries` and `input_checks.check_training_input`. Default recipe numbers
are `TrainConfig`'s; `image_size` is the parsed policy of the training run (`TrainConfig.image_size`).
"""

import functools
import logging

import keras
import numpy as np

from tf_netvlad.training.config import TrainConfig
from tf_netvlad.training.distributed import shard_range
from tf_netvlad.training.distributed_mining import exchange_cache_blocks, mine_tuples_sharded
from tf_netvlad.training.input_checks import trainable_queries
from tf_netvlad.training.refresh_schedule import RefreshSchedule, share_cycle_size
from tf_netvlad.training.tuple_mining import mine_tuples, strip_fillers

logger = logging.getLogger(__name__)


class HardNegativeMiner:
    """Mining state and schedule: the query stream, the negative memory and the cache refresh.

    Args:
        split: training `places.PlaceSplit`.
        root: image root (default `split.root`).
        image_size: parsed resize policy of the descriptor cache (the training size,
            `TrainConfig.image_size`).
        num_positives, num_negatives, pool_size, keep_factor, margin: mining recipe.
        cache_refresh_queries: queries per refresh cycle (one Keras epoch).
        refresh_share: None, or longer cycles on a large database so that a refresh (and the
            validation of `validation_images` images that ends each cycle) is at most this share of
            a cycle's image passes (`refresh_schedule.share_cycle_size`).
        refresh_slowdown, lr_decay_every, lr_decay_factor: MATLAB's refresh schedule (a refresh
            at every pass end, cycles × 1/lr_decay_factor at every LR drop); see
            `refresh_schedule.RefreshSchedule`.
        seed: seeds the query order and the pools.
        batch_size: images per batch when computing the cache.
        on_bad_image: "stop" (raise naming the file) or "skip" (drop the image everywhere).
        progress: tqdm bars while computing the cache.
        exclude_very_hard: semi-hard mining (MATLAB `excludeVeryHard`), see `mine_tuples`.
        exclude_trivial_m2: None (default: every positive within 10 m trains) or the squared
            distance in m² within which a database image is a trivial positive and left out
            (MATLAB's `dSq > 1` rule: 1.0, `TrainConfig.exclude_trivial_m2`).
        violating_only: keep the filler marks in the rows, so the pipeline masks them (MATLAB;
            `TrainConfig.violating_only`). False (default): plain rows, every slot trains.
        group: optional `distributed.WorkerGroup` (multi-worker training). Then each worker
            extracts only its block of the database and of the cycle's queries
            (`distributed.shard_range`), the query descriptors and failed images are exchanged and
            tuples are mined with `distributed_mining.mine_tuples_sharded`: every worker gets the
            same rows, and no worker holds the whole database cache. None (default): the whole cache in this process.

    Attributes:
        valid_queries: int64 ids of the queries that have at least one non-trivial positive.
        dropped_queries: number of queries without one (skipped, as every reference does).
        neg_cache: int64 `(num_queries, num_negatives)` remembered negatives (-1 = empty).
        images: None, or a `data.decoded.DecodedImages` holding the split's images at
            `image_size` (set by `training.train` when they fit its memory budget): the cache is
            then extracted from memory instead of decoding the files at every refresh.
    """

    def __init__(self, split, root=None, image_size=None, num_positives=TrainConfig.num_positives,
                 num_negatives=TrainConfig.num_negatives, pool_size=TrainConfig.negative_pool_size,
                 keep_factor=TrainConfig.keep_factor, margin=TrainConfig.margin,
                 cache_refresh_queries=TrainConfig.cache_refresh_queries, seed=TrainConfig.seed,
                 batch_size=TrainConfig.cache_batch_size, on_bad_image=TrainConfig.on_bad_image,
                 progress=True, exclude_very_hard=TrainConfig.exclude_very_hard, group=None,
                 refresh_slowdown=False, lr_decay_every=TrainConfig.lr_decay_every,
                 lr_decay_factor=TrainConfig.lr_decay_factor, exclude_trivial_m2=None, violating_only=False,
                 refresh_share=None, validation_images=0):
        self.split = split
        self.group = group
        self.root = split.root if root is None else root
        self.image_size = image_size
        self.num_positives = int(num_positives)
        self.num_negatives = int(num_negatives)
        self.pool_size = int(pool_size)
        self.keep_factor = int(keep_factor)
        self.margin = float(margin)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.on_bad_image = on_bad_image
        self.progress = progress
        self.exclude_very_hard = bool(exclude_very_hard)
        self.exclude_trivial_m2 = exclude_trivial_m2
        self.violating_only = bool(violating_only)
        self.images = None
        self.positives, self.non_negatives, self.valid_queries = trainable_queries(
            split, self.num_negatives, exclude_trivial_m2)
        self.dropped_queries = int(split.num_queries - len(self.valid_queries))
        own = float(np.mean(self._query_db_ids[self.valid_queries] < 0))  # not database images
        size = share_cycle_size(cache_refresh_queries, refresh_share, split.num_db, own,
                                1 + self.num_positives + self.num_negatives, len(self.valid_queries),
                                extra_images=validation_images)
        self.schedule = RefreshSchedule(len(self.valid_queries), size, refresh_slowdown,
                                        lr_decay_every, lr_decay_factor)
        self.neg_cache = np.full((split.num_queries, self.num_negatives), -1, np.int64)
        self.bad_db = np.zeros(0, np.int64)
        self.bad_queries = np.zeros(0, np.int64)
        self.last_stats = {}
        self.last_extracted = {}

    # ------------------------------------------------------------------ schedule
    @property
    def cycle_size(self):
        """Queries per refresh cycle (in the first passes, with `refresh_slowdown`)."""
        return self.schedule.size

    def queries_for_cycle(self, cycle):
        """The query ids trained in refresh cycle `cycle` (a deterministic function of seed, cycle).

        Each pass over the queries follows its own seeded permutation; `self.schedule` says where
        in which pass the cycle starts and how many queries it takes.
        """
        count = len(self.valid_queries)
        pass_index, offset, size = self.schedule.cycle(cycle)
        start = pass_index * count + offset
        ids = []
        while len(ids) < size:
            pass_index, offset = divmod(start + len(ids), count)
            perm = np.random.default_rng([self.seed, pass_index]).permutation(self.valid_queries)
            ids.extend(perm[offset : offset + size - len(ids)].tolist())
        return np.asarray(ids, np.int64)

    # ------------------------------------------------------------------ mining
    def _extract(self, model, paths, what):
        from tf_netvlad.models import extract

        on_error = "raise" if self.on_bad_image == "stop" else "skip"
        result = extract.extract_descriptors(model, paths, root=self.root, image_size=self.image_size,
                                             batch_size=self.batch_size, progress=self.progress,
                                             on_error=on_error, images=self.images)
        if on_error == "raise":
            return result, np.zeros(0, np.int64)
        desc, skipped = result
        if len(skipped):
            logger.warning("Mining: skipped %d %s images that could not be loaded.", len(skipped), what)
        return desc, skipped

    def compute_cache(self, model, query_ids):
        """Float32 descriptors of `query_ids` and of the whole training database with `model`.

        One extraction call over the database followed by the queries (each call pays a fixed
        pipeline start-up); a query whose image is a database image (`db_queries`:
        `PlaceSplit.with_database_queries`) takes that image's descriptor instead of a second
        extraction. Returns `(q_desc, db_desc)`; sets `last_extracted` (images extracted per part).
        """
        num_db = self.split.num_db
        query_ids = np.asarray(query_ids, np.int64)
        same = self._query_db_ids[query_ids]  # the database image each query is, or -1
        own = same < 0
        paths = list(self.split.db_paths) + [self.split.query_paths[i] for i in query_ids[own]]
        desc, bad = self._extract(model, paths, "database/query")
        bad_db = bad[bad < num_db]
        self.bad_db = np.union1d(self.bad_db, bad_db)
        q_desc = np.empty((len(query_ids),) + desc.shape[1:], desc.dtype)
        q_desc[own] = desc[num_db:]
        q_desc[~own] = desc[same[~own]]
        bad_queries = np.concatenate([query_ids[own][bad[bad >= num_db] - num_db],
                                      query_ids[~own][np.isin(same[~own], bad_db)]])
        self.bad_queries = np.union1d(self.bad_queries, bad_queries)
        self.last_extracted = {"database": num_db, "queries": int(own.sum())}
        return q_desc, desc[:num_db]

    @functools.cached_property
    def _query_db_ids(self):
        """Per query of the split, the database image with the same path (resolved against the same
        root), or -1."""
        db_index = {path: i for i, path in enumerate(self.split.db_paths)}
        return np.array([db_index.get(path, -1) for path in self.split.query_paths], np.int64)

    def compute_shard_cache(self, model, query_ids):
        """Multi-worker cache: this worker's block of the db, and every query descriptor of the cycle.

        Each worker extracts db ids `shard_range(num_db, W, index)` and the same block of the
        queries of `query_ids` that are not database images; a query that is a database image
        (`db_queries`) takes the descriptor of the worker that holds that image, as `compute_cache`
        does. The query descriptors and the failed images are exchanged (all-reduce), so
        `self.bad_db` / `self.bad_queries` are the same on every worker.

        Returns `(q_desc (Q, d), db_shard (n_w, d), db_lo)`.
        """
        group, num_db = self.group, self.split.num_db
        db_lo, db_hi = shard_range(num_db, group.num_workers, group.index)
        same = self._query_db_ids[query_ids]  # the database image each query is, or -1
        own = np.flatnonzero(same < 0)
        o_lo, o_hi = shard_range(len(own), group.num_workers, group.index)
        extracted = own[o_lo:o_hi]
        from_db = np.flatnonzero((same >= db_lo) & (same < db_hi))
        db_shard, bad_db = self._extract_block(model, self.split.db_paths[db_lo:db_hi], "database")
        q_block, bad_q = self._extract_block(
            model, [self.split.query_paths[i] for i in query_ids[extracted]], "query")
        # the query positions this worker supplies, their descriptors, and those whose image failed
        held = np.concatenate([extracted, from_db])
        held_desc = np.concatenate([q_block, db_shard[same[from_db] - db_lo]])
        held_bad = np.concatenate([extracted[bad_q], from_db[np.isin(same[from_db] - db_lo, bad_db)]])
        q_desc, bad_db, bad_q = exchange_cache_blocks(group, held, held_desc, len(query_ids), held_bad,
                                                      bad_db, db_lo, num_db)
        bad_queries = query_ids[bad_q]
        self._raise_if_stop(bad_db, bad_queries)
        self.bad_db = np.union1d(self.bad_db, bad_db)
        self.bad_queries = np.union1d(self.bad_queries, bad_queries)
        self.last_extracted = {"database": db_hi - db_lo, "queries": o_hi - o_lo}
        return q_desc, db_shard, db_lo

    def _extract_block(self, model, paths, what):
        """Like `_extract`, but failures are always collected (never raised here): a worker must not
        leave the exchange that the others wait in. "stop" raises after the exchange, on every worker."""
        from tf_netvlad.models import extract

        if len(paths) == 0:
            return np.zeros((0, int(model.output_shape[-1])), np.float32), np.zeros(0, np.int64)
        desc, skipped = extract.extract_descriptors(model, paths, root=self.root, image_size=self.image_size,
                                                    batch_size=self.batch_size, progress=self.progress,
                                                    on_error="skip", images=self.images)
        if len(skipped) and self.on_bad_image == "skip":
            logger.warning("Mining: skipped %d %s images that could not be loaded.", len(skipped), what)
        return desc, skipped

    def _raise_if_stop(self, bad_db, bad_queries):
        from tf_netvlad.data import pipelines

        if self.on_bad_image != "stop" or not (len(bad_db) or len(bad_queries)):
            return
        paths = [self.split.db_paths[i] for i in bad_db] + [self.split.query_paths[i] for i in bad_queries]
        full = pipelines.resolve_paths(paths[:1], self.root)[0]
        raise pipelines.ImageReadError(
            f"{len(paths)} training image(s) could not be loaded while computing the mining cache, "
            f"first: '{full}' ({pipelines.diagnose_image(full)}). Fix or remove the file, or train with "
            "on_bad_image='skip'.", path=full)

    def mine(self, model, cycle):
        """Refreshes the cache with `model` and mines the tuples of `cycle`; updates the memory.

        Returns int64 rows `(n, 1 + P + N)` for `TuplePipeline.assign` (queries whose image or whose
        every positive failed to load are left out in "skip" mode). With a `group`, every worker
        computes a part of the cache and all return the same rows.
        """
        query_ids = self.queries_for_cycle(cycle)
        if self.group is None:
            q_desc, db_desc = self.compute_cache(model, query_ids)
        else:
            q_desc, db_shard, db_lo = self.compute_shard_cache(model, query_ids)
        keep = ~np.isin(query_ids, self.bad_queries)
        if len(self.bad_db):
            keep &= np.array([len(np.setdiff1d(self.positives[q], self.bad_db)) > 0 for q in query_ids])
        if not keep.any():
            raise ValueError(f"Cycle {cycle}: no training query with loadable images is left.")
        rng = np.random.default_rng([self.seed, int(cycle), 1])
        options = dict(num_positives=self.num_positives, num_negatives=self.num_negatives,
                       pool_size=self.pool_size, keep_factor=self.keep_factor, margin=self.margin,
                       bad_db=self.bad_db, exclude_very_hard=self.exclude_very_hard)
        if self.group is None:
            rows, new_cache, stats = mine_tuples(query_ids[keep], q_desc[keep], db_desc, self.positives,
                                                 self.non_negatives, self.neg_cache, rng, **options)
        else:
            rows, new_cache, stats = mine_tuples_sharded(
                query_ids[keep], q_desc[keep], db_shard, db_lo, self.split.num_db, self.positives,
                self.non_negatives, self.neg_cache, rng, self.group.all_reduce_sum, **options)
        self.neg_cache[query_ids[keep]] = new_cache
        if not self.violating_only:
            rows = strip_fillers(rows, self.num_positives)
        stats.update(cycle=int(cycle), num_tuples=int(len(rows)),
                     extracted_db_images=int(self.last_extracted["database"]),
                     extracted_query_images=int(self.last_extracted["queries"]))
        self.last_stats = stats
        logger.info("Mined cycle %d: %s", cycle, stats)
        return rows

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """NumPy arrays of the mining state (the negative memory and the failed images)."""
        return {"neg_cache": self.neg_cache.copy(), "bad_db": self.bad_db.copy(),
                "bad_queries": self.bad_queries.copy()}

    def load_state_dict(self, state):
        neg_cache = np.asarray(state["neg_cache"], np.int64)
        if neg_cache.shape != self.neg_cache.shape:
            raise ValueError(
                f"The saved negative memory has shape {neg_cache.shape}, this run needs "
                f"{self.neg_cache.shape} (queries, num_negatives): incompatible split or num_negatives."
            )
        if neg_cache.max(initial=-1) >= self.split.num_db:
            raise ValueError("The saved negative memory refers to database images beyond this split.")
        self.neg_cache = neg_cache.copy()
        self.bad_db = np.asarray(state.get("bad_db", []), np.int64)
        self.bad_queries = np.asarray(state.get("bad_queries", []), np.int64)


class MiningCallback(keras.callbacks.Callback):
    """Re-mines the tuple table at the start of every Keras epoch (= one refresh cycle).

    `on_epoch_begin(epoch)` refreshes the cache with `self.model`, mines cycle `epoch` and writes
    the rows into the `TuplePipeline`; Keras then builds the epoch's iterator, which reads them.
    `resume_rows(epoch, rows, start_row)` makes the next `on_epoch_begin(epoch)` reuse saved rows
    from a mid-epoch checkpoint instead of mining (the memory was already updated for them).
    `skip_when` is an optional callable; when it returns True the refresh is skipped (e.g. the time
    limit is over and the run is about to stop).

    Args:
        miner: `HardNegativeMiner`.
        pipeline: `tuples.TuplePipeline` fed by the mined rows.
    """

    def __init__(self, miner, pipeline, skip_when=None):
        super().__init__()
        self.miner = miner
        self.pipeline = pipeline
        self.skip_when = skip_when
        self._resume = None
        self._prepared = None
        self.current_epoch = None

    def resume_rows(self, epoch, rows, start_row):
        self._resume = (int(epoch), np.asarray(rows, np.int64), int(start_row))

    def on_epoch_begin(self, epoch, logs=None):
        if self._prepared == epoch:  # `prepare` already filled the table for this epoch
            self._prepared = None
            return
        self._fill(epoch)

    def prepare(self, epoch):
        """Fills the table for `epoch` now (before `fit`; set the model with `set_model` first);
        the next `on_epoch_begin(epoch)` then does nothing.

        Under a `tf.distribute` strategy Keras reads a first batch when `fit` starts, before
        `on_epoch_begin`, so the table must hold the epoch's rows by then.
        """
        self._fill(epoch)
        self._prepared = epoch

    def _fill(self, epoch):
        self.current_epoch = epoch
        if self._resume is not None and self._resume[0] == epoch:
            _, rows, start = self._resume
            self._resume = None
            self.pipeline.assign(rows, start_row=start, cycle=epoch)
            logger.info("Resumed cycle %d at tuple %d of %d.", epoch, start, len(rows))
            return
        if self.skip_when is not None and self.skip_when() and int(self.pipeline.end_row.numpy()) > 0:
            return
        self.pipeline.assign(self.miner.mine(self.model, epoch), cycle=epoch)
