"""The training-tuple input pipeline: (query, positive set, negative set) image tuples via tf.data.

The tuples themselves (which images) are chosen in the main process by hard-negative mining
(`tf_netvlad.training.mining`) and written into a `tf.Variable` table; the pipeline only reads rows of that
table, so parallel input workers never own training state. A row is

    [query id, P positive db ids (-1 = padding), N negative db ids (a filler as -2 - id)]

and an element of the dataset (before batching) is the dict

    {"query": (H, W, 3), "positives": (P, H, W, 3), "positive_mask": (P,) float32,
     "negatives": (N, H, W, 3), "negative_mask": (N,) float32}

with float32 RGB pixels in 0..255 (padded positives are black images with mask 0). A negative
written as `-2 - id` is a filler (`tuple_mining.mark_fillers`: it did not violate the margin when
mined); its image is loaded, and its `negative_mask` is 0, so the loss leaves it out (MATLAB
`trainWeakly.m` never loads it). Plain ids have mask 1. Images are
read, decoded and resized in parallel inside the pipeline (`data.images.load_image`, deterministic
order), batched and prefetched; with the images decoded once in memory (`images=`), each batch is
one gather instead (`training.memory_batches`), with the same contents. tf.data's autotuning is
off (`data.pipelines.without_autotune`). Training needs a fixed `(H, W)` image size so tuples can
be stacked: the parsed `TrainConfig.image_size`.

Keras creates a new iterator of a finite dataset at every epoch, after `on_epoch_begin`, so a table
re-mined in `MiningCallback.on_epoch_begin` is what the next epoch reads (style guide 4.9). The rows
read in an epoch are `start_row <= i < end_row` (variables too), which lets a run resume in the
middle of an epoch.

Length: `dataset()` has an unknown length (the table is re-mined per epoch), which Keras shows as
`Unknown` steps and ends with "Your input ran out of data". `dataset(num_batches=pipe.num_batches)`,
built after the table is filled, declares the epoch's exact length (`tf.data` cardinality): Keras
shows `n/N` and stops without the warning. That dataset is valid for that table only: the training
loop (`training.train`) mines first, then runs one `fit` per refresh cycle on such a dataset.

Augmentation (`augmentation=`, a `training.augment.Augmentation`; `--augment`): the query image of
each tuple is changed, or with `augment_all_slots` every image of the tuple, together
(`augment.augment_images`), each slot by its own row of stateless draws seeded by (`seed`, refresh
cycle, row), so the same row of the same cycle always gets the same images (resume and parallel
reads are unaffected; the query's change is the same either way); padding positives stay black.

Images that fail to load during an epoch (`on_bad_image`): "stop" fails with an
`InvalidArgumentError` whose message contains `TUPLE_IMAGE_ERROR row=<i>` and the tuple's files
(`TuplePipeline.describe_failure` names the broken file); "skip" puts a padding tuple (black images,
no positive: it trains nothing) in its place and counts it in `TuplePipeline.skipped`. Batches thus
always hold the same rows, and a run resumed after k steps starts at the exact next row.
"""

import re

import numpy as np
import tensorflow as tf

from tf_netvlad.data import pipelines
from tf_netvlad.data.fileio import resolve_paths
from tf_netvlad.data.image_size import check_image_size
from tf_netvlad.data.images import diagnose_image, load_image
from tf_netvlad.defaults import ON_BAD_IMAGE_CHOICES
from tf_netvlad.training import augment, memory_batches, tuple_mining
from tf_netvlad.training.config import TrainConfig

ERROR_MARKER = "TUPLE_IMAGE_ERROR"


class TuplePipeline:
    """Owns the tuple table (a `tf.Variable`) and builds the tf.data pipeline that reads it.

    Args:
        query_paths: training query image paths (relative to `root` unless absolute).
        db_paths: training database image paths.
        root: optional image root directory.
        image_size: parsed `(H, W)` every image is resized to (`TrainConfig.image_size`).
        num_rows: table capacity (tuples per epoch, e.g. `cache_refresh_queries`).
        num_positives: P, size of the (padded) positive set per query.
        num_negatives: N, negatives per query.
        batch_size: tuples per batch (paper: 4).
        on_bad_image: "stop" or "skip", see the module docstring.
        augmentation: None or a `training.augment.Augmentation`; seed: seeds its draws.
        augment_all_slots: False (the query image of each tuple is augmented) or True (every image:
            the query, the positives and the negatives; `TrainConfig.augment_all_slots`).
        images: None (read and decode the files at every step), or a `data.decoded.DecodedImages`
            holding every query and database image at `image_size`: each batch is gathered from
            memory at once (`training.memory_batches`; a failed image fails its tuple as a failed
            file does).

    Example:
    >>> pipe = TuplePipeline(q_paths, db_paths, root, (96, 128), num_rows=100, num_positives=2,
    ...                      num_negatives=10, batch_size=4)
    >>> pipe.assign(rows)            # int64 (n <= 100, 1 + 2 + 10) from mining
    >>> model.fit(pipe.dataset(num_batches=pipe.num_batches), epochs=1)   # shows n/N steps
    """

    def __init__(self, query_paths, db_paths, root, image_size, num_rows,
                 num_positives=TrainConfig.num_positives, num_negatives=TrainConfig.num_negatives,
                 batch_size=TrainConfig.batch_size, on_bad_image=TrainConfig.on_bad_image,
                 augmentation=None, seed=TrainConfig.seed, images=None,
                 augment_all_slots=TrainConfig.augment_all_slots):
        size = check_image_size(image_size)
        if not isinstance(size, tuple):
            raise ValueError(
                "Training tuples need a fixed image size (H, W) so images can be batched. "
                f"Received: image_size={image_size!r}"
            )
        if on_bad_image not in ON_BAD_IMAGE_CHOICES:
            raise ValueError(f"`on_bad_image` must be one of {ON_BAD_IMAGE_CHOICES}. Received: {on_bad_image!r}")
        for name, value in (("num_rows", num_rows), ("num_positives", num_positives),
                            ("num_negatives", num_negatives), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1. Received: {name}={value!r}")
        self.query_paths = resolve_paths(query_paths, root)
        self.db_paths = resolve_paths(db_paths, root)
        if not self.query_paths or not self.db_paths:
            raise ValueError("`query_paths` and `db_paths` must not be empty.")
        self.image_size = size
        self.num_rows = int(num_rows)
        self.num_positives = int(num_positives)
        self.num_negatives = int(num_negatives)
        self.batch_size = int(batch_size)
        self.on_bad_image = on_bad_image
        self.augmentation = None if augmentation is None or augmentation.is_identity else augmentation
        self.augment_all_slots = bool(augment_all_slots)
        self.seed = int(seed)
        self.images = images
        if images is not None:
            if images.image_size != size:
                raise ValueError(f"The decoded images are {images.image_size}; the tuples need {size}.")
            with tf.init_scope():
                self.memory_rows = (tf.constant(images.rows(self.query_paths)),
                                    tf.constant(images.rows(self.db_paths)))
                self.memory_ok = tf.constant(images.ok)
        width = 1 + self.num_positives + self.num_negatives
        with tf.init_scope():
            self.table = tf.Variable(tf.fill([self.num_rows, width], tf.constant(-1, tf.int64)),
                                     trainable=False, name="tuple_table")
            self.start_row = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="tuple_start")
            self.end_row = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="tuple_end")
            self.skipped_var = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="tuples_skipped")
            self.cycle = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="tuple_cycle")
        self._rows = np.full((self.num_rows, width), -1, np.int64)

    @property
    def row_width(self):
        return 1 + self.num_positives + self.num_negatives

    @property
    def skipped(self):
        """Tuples dropped because an image failed to load (`on_bad_image="skip"`), since creation."""
        return int(self.skipped_var.numpy())

    @property
    def num_batches(self):
        """Batches of the current epoch: `ceil((end_row - start_row) / batch_size)`."""
        rows = int(self.end_row.numpy()) - int(self.start_row.numpy())
        return -(-rows // self.batch_size)

    @property
    def rows(self):
        """The current table rows `(end_row, width)` as NumPy (a copy)."""
        return self._rows[: int(self.end_row.numpy())].copy()

    def assign(self, rows, start_row=0, cycle=0):
        """Writes tuple rows (int, `(n, 1 + P + N)`, n <= num_rows) and sets the epoch's row range.

        `cycle` (the refresh cycle) seeds the augmentation: each cycle sees other changes of an image.
        """
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.row_width or not 1 <= len(rows) <= self.num_rows:
            raise ValueError(
                f"`rows` must have shape (n, {self.row_width}) with 1 <= n <= {self.num_rows}. "
                f"Received shape {rows.shape}"
            )
        rows = rows.astype(np.int64)
        queries, pos, neg = rows[:, 0], rows[:, 1 : 1 + self.num_positives], rows[:, 1 + self.num_positives :]
        if queries.min() < 0 or queries.max() >= len(self.query_paths):
            raise ValueError(f"query ids must be in [0, {len(self.query_paths)}). Received range "
                             f"[{queries.min()}, {queries.max()}]")
        if (pos[:, 0] < 0).any():
            raise ValueError("every tuple needs at least one positive (first positive column is -1).")
        neg = tuple_mining.decode_negatives(neg)[0]  # fillers, see `tuple_mining.mark_fillers`
        if pos.max() >= len(self.db_paths) or neg.min() < 0 or neg.max() >= len(self.db_paths):
            raise ValueError(f"db ids must be in [0, {len(self.db_paths)}) (negatives without padding; "
                             "a filler negative is -2 - id).")
        if not 0 <= start_row <= len(rows):
            raise ValueError(f"`start_row` must be in [0, {len(rows)}]. Received: {start_row}")
        padded = np.full((self.num_rows, self.row_width), -1, np.int64)
        padded[: len(rows)] = rows
        self._rows = padded
        self.table.assign(padded)
        self.end_row.assign(len(rows))
        self.start_row.assign(int(start_row))
        self.cycle.assign(int(cycle))

    def _load_row(self, index):
        row = self.table[index]
        height, width = self.image_size
        paths = (tf.constant(self.query_paths), tf.constant(self.db_paths))

        def load(part, image_id):  # part 0: a query, 1: a database image
            if self.images is None:
                return load_image(tf.gather(paths[part], image_id), self.image_size)
            # a failed image fails the tuple, as a failed file does
            memory_row = tf.gather(self.memory_rows[part], image_id)
            with tf.control_dependencies([tf.debugging.Assert(tf.gather(self.memory_ok, memory_row), [image_id])]):
                return self.images.gather(memory_row)

        positive_ids = row[1 : 1 + self.num_positives]
        mask = positive_ids >= 0
        positives = []
        for i in range(self.num_positives):
            image_id = tf.maximum(positive_ids[i], 0)
            positives.append(tf.cond(mask[i], lambda i_=image_id: load(1, i_),
                                     lambda: tf.zeros([height, width, 3], tf.float32)))
        negative_ids, negative_mask = self.decode_negatives(row[1 + self.num_positives :])
        negatives = [load(1, negative_ids[j]) for j in range(self.num_negatives)]
        query = load(0, row[0])
        augmenting = self.augmentation is not None
        seed = augment.tuple_seed(self.seed, self.cycle, index) if augmenting else None
        if augmenting and not self.augment_all_slots:  # row 0 of the draws, as under all slots
            query = augment.augment_image(query, seed, self.augmentation)
        images = tf.stack([query] + positives + negatives)  # the row's slots, in order
        if augmenting and self.augment_all_slots:  # one draw per slot; padding positives stay black
            images = augment.augment_images(images, seed, self.augmentation)
            keep = tf.concat([[1.0], tf.cast(mask, tf.float32), tf.ones([self.num_negatives])], 0)
            images = images * keep[:, None, None, None]  # a product: 0.45 ms per tuple, tf.where 1.6-1.8
        return index, {
            "query": images[0],
            "positives": images[1 : 1 + self.num_positives],
            "positive_mask": tf.cast(mask, tf.float32),
            "negatives": images[1 + self.num_positives :],
            "negative_mask": negative_mask,
        }

    @staticmethod
    def decode_negatives(ids):
        """`(db ids, float32 mask)` of the negative slots of table rows (a tensor): a filler `-2 - id`
        has mask 0. The tensor twin of `tuple_mining.decode_negatives` (NumPy, free of TensorFlow)."""
        filler = ids <= -2
        return tf.where(filler, -2 - ids, ids), tf.cast(tf.logical_not(filler), tf.float32)

    def _zeros_element(self):
        height, width = self.image_size
        return {
            "query": tf.zeros([height, width, 3]),
            "positives": tf.zeros([self.num_positives, height, width, 3]),
            "positive_mask": tf.zeros([self.num_positives]),
            "negatives": tf.zeros([self.num_negatives, height, width, 3]),
            "negative_mask": tf.zeros([self.num_negatives]),
        }

    def _row_paths_message(self, index):
        row = self.table[index]
        q_paths = tf.constant(self.query_paths)
        db_paths = tf.constant(self.db_paths)
        negatives = self.decode_negatives(row[1 + self.num_positives :])[0]
        ids = tf.concat([row[1 : 1 + self.num_positives], negatives], 0)
        db_ids = tf.boolean_mask(ids, ids >= 0)
        files = tf.concat([tf.gather(q_paths, tf.maximum(row[:1], 0)), tf.gather(db_paths, db_ids)], 0)
        return tf.strings.reduce_join(files, separator="', '")

    def dataset(self, num_batches=None):
        """The finite tf.data pipeline over rows `start_row..end_row` of the table (re-read per epoch).

        Batch b holds exactly rows `start_row + b·batch_size ...`: a tuple whose image fails is a
        padding tuple in "skip" mode (trains nothing, counted in `skipped`), so a checkpoint after
        k steps resumes at row `start_row + k·batch_size` whatever failed before it.

        Args:
            num_batches: None (unknown length), or the number of batches this dataset declares
                (`tf.data` cardinality, normally `self.num_batches` after `assign`): Keras then
                shows `n/N` steps and never reports "Your input ran out of data". Iterating it over
                a table of another length fails with tf.data's cardinality error.
        """
        if self.images is not None:  # one gather per batch (`memory_batches`)
            ds = tf.data.Dataset.range(-(-self.num_rows // self.batch_size))
            ds = ds.filter(self._batch_in_epoch)
            ds = ds.map(lambda b: memory_batches.gather_batch(self, b),
                        num_parallel_calls=pipelines.PREFETCH_BATCHES, deterministic=True)
        else:
            ds = tf.data.Dataset.range(self.num_rows)
            ds = ds.filter(lambda i: tf.logical_and(i >= self.start_row, i < self.end_row))
            cycle = max(2, self.batch_size)
            ds = ds.interleave(self._load_or_pad, cycle_length=cycle, block_length=1,
                               num_parallel_calls=cycle, deterministic=True)
            ds = ds.map(self._check_loaded).map(lambda index, tuple_: tuple_)
            ds = ds.batch(self.batch_size)
        if num_batches is not None:
            if isinstance(num_batches, bool) or not isinstance(num_batches, (int, np.integer)) or num_batches < 1:
                raise ValueError(f"`num_batches` must be an int >= 1 or None. Received: {num_batches!r}")
            ds = ds.apply(tf.data.experimental.assert_cardinality(int(num_batches)))
        return pipelines.without_autotune(ds.prefetch(pipelines.PREFETCH_BATCHES))

    def _batch_in_epoch(self, batch):
        """Whether batch `batch` of the epoch holds a row (`start_row + batch·batch_size < end_row`)."""
        return batch * self.batch_size < self.end_row - self.start_row

    def _load_or_pad(self, row):
        """One-element dataset: the tuple of `row`, or a padding tuple if `row` < 0 or it fails."""
        loaded = tf.data.Dataset.from_tensors(row).filter(lambda r: r >= 0).map(self._load_row)
        fallback = tf.data.Dataset.from_tensors(row).map(self._padding_row)
        return loaded.ignore_errors().concatenate(fallback).take(1)

    def _check_loaded(self, index, tuple_):
        """Counts a failed tuple ("skip") or fails naming its files ("stop"); see `_padding_row`."""
        failed = index < -1
        if self.on_bad_image == "stop":
            with tf.control_dependencies([self.assert_loaded(failed, -index - 2)]):
                return tf.identity(index), tf.nest.map_structure(tf.identity, tuple_)
        with tf.control_dependencies([self.skipped_var.assign_add(tf.cast(failed, tf.int64))]):
            return tf.identity(index), tf.nest.map_structure(tf.identity, tuple_)

    def assert_loaded(self, failed, row):
        """A bool tensor that fails with `failure_message(row)` if `failed` (a scalar bool tensor);
        the message, a join of the tuple's file paths, is only built then."""
        def fail():
            with tf.control_dependencies([tf.debugging.Assert(False, [self.failure_message(row)])]):
                return tf.constant(True)

        return tf.cond(failed, fail, lambda: tf.constant(False))

    def failure_message(self, row):
        """The "stop" error of table row `row` (a scalar tensor): `TUPLE_IMAGE_ERROR row=<row>` and
        the tuple's files, which `describe_failure` reads back."""
        return tf.strings.join([
            f"{ERROR_MARKER} row=", tf.strings.as_string(row),
            ": an image of this training tuple could not be read or decoded. Files of the "
            "tuple: '", self._row_paths_message(tf.clip_by_value(row, 0, self.num_rows - 1)),
            "'. Fix or remove the file, or train with on_bad_image='skip'.",
        ])

    def replica_dataset(self, input_context):
        """This worker's input for `strategy.distribute_datasets_from_function` (multi-worker).

        Global batch g holds rows `start_row + g·batch_size ...` (as `dataset()`); replica j of the
        `R = input_context.num_replicas_in_sync` replicas trains rows `j·S .. (j+1)·S` of it with
        `S = ceil(batch_size / R)` (`distributed.replica_slices`). This worker (input pipeline w of
        W, replicas `w·R/W ..`) reads only the images of its replicas' rows and yields one batch of
        exactly S tuples per local replica and global batch, so every replica runs the same number of
        steps with the same shapes. Rows a replica lacks (short last batch, or `batch_size` not a
        multiple of R) are padding: black images with `positive_mask` 0, which add nothing to the
        loss, its normalisers or the metrics. A tuple whose image fails to load is such a padding
        row in "skip" mode (counted in `skipped`; the batch keeps its other rows) and fails with the
        `TUPLE_IMAGE_ERROR` message in "stop" mode.
        """
        replicas = int(input_context.num_replicas_in_sync)
        workers = int(input_context.num_input_pipelines)
        worker = int(input_context.input_pipeline_id)
        local = replicas // workers
        per_replica = -(-self.batch_size // replicas)
        per_batch = local * per_replica  # slots this worker fills per global batch
        capacity = -(-self.num_rows // self.batch_size) * per_batch

        def slot_row(i):
            batch, rest = i // per_batch, i % per_batch
            offset = (worker * local + rest // per_replica) * per_replica + rest % per_replica
            row = self.start_row + batch * self.batch_size + offset
            valid = tf.logical_and(offset < self.batch_size, row < self.end_row)
            return batch, tf.where(valid, row, tf.constant(-1, tf.int64))

        ds = tf.data.Dataset.range(capacity).map(slot_row).filter(lambda batch, row: self._batch_in_epoch(batch))
        cycle = max(2, per_batch)
        ds = ds.interleave(lambda batch, row: self._load_or_pad(row), cycle_length=cycle,
                           block_length=1, num_parallel_calls=cycle, deterministic=True)
        ds = ds.map(lambda index, tuple_: self._check_loaded(index, tuple_)[1])
        return pipelines.without_autotune(ds.batch(per_replica).prefetch(pipelines.PREFETCH_BATCHES))

    def _padding_row(self, row):
        """A tuple that trains nothing (all positives masked); index -1 for padding, -2 - row for a
        real row whose images failed."""
        return tf.where(row < 0, tf.constant(-1, tf.int64), -row - 2), self._zeros_element()

    def describe_failure(self, error):
        """For a "stop" failure: a message naming the broken file(s) of the tuple (or None)."""
        match = re.search(rf"{ERROR_MARKER} row=(\d+)", str(error))
        if match is None:
            return None
        row = self._rows[int(match.group(1))]
        ids = np.concatenate([row[1 : 1 + self.num_positives],
                              tuple_mining.decode_negatives(row[1 + self.num_positives :])[0]])
        files = [self.query_paths[row[0]]] + [self.db_paths[i] for i in ids if i >= 0]
        reasons = [(path, diagnose_image(path)) for path in dict.fromkeys(files)]
        broken = [f"'{path}' ({reason})" for path, reason in reasons if reason]
        if not broken:
            broken = [f"one of {files} (all load now; the file may have changed during training)"]
        return (f"Training tuple {int(match.group(1))} could not be loaded: {', '.join(broken)}. "
                "Fix or remove the file, or train with on_bad_image='skip'.")
