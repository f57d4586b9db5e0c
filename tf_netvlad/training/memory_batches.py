"""Whole batches of training tuples gathered from images decoded once (`data.decoded.DecodedImages`).

`TuplePipeline.dataset()` reads the files one tuple at a time: each tuple is a small tf.data
dataset of its own (so that a failed file can become a padding tuple), interleaved, checked and
batched. With every image already in memory that machinery is most of the pipeline's cost, and
it runs on the same cores as the training step. Here batch b of the epoch is built by one function
call: the rows `start_row + b·batch_size ...` of the tuple table, one gather of their images, the
query augmentation of the whole batch at once (each tuple with the draws of its own seed), and
the failed-image rule applied to the batch. The batches are those of the per-tuple pipeline over
the same rows (tests/training/test_tuples.py compares them): padding positives black with mask 0,
fillers loaded with mask 0, a tuple with a failed image a black tuple with no positive in "skip"
mode (counted in `TuplePipeline.skipped`) and the `TUPLE_IMAGE_ERROR row=<i>` error in "stop"
mode. What it saves is measured in benchmarks/RESULTS.md ("A step inside `fit`").
"""

import tensorflow as tf

from tf_netvlad.training import augment


def gather_batch(pipe, batch):
    """Batch `batch` of the epoch (table rows `start_row + batch·batch_size ...`) of `pipe`, a
    `TuplePipeline` holding its images in memory, as the dict `TuplePipeline.dataset()` yields."""
    first = pipe.start_row + batch * pipe.batch_size
    index = tf.range(first, tf.minimum(first + pipe.batch_size, pipe.end_row))
    rows = tf.gather(pipe.table, index)
    num_positives = pipe.num_positives
    positive_ids = rows[:, 1 : 1 + num_positives]
    positive_mask = positive_ids >= 0
    negative_ids, negative_mask = pipe.decode_negatives(rows[:, 1 + num_positives :])
    query_memory, db_memory = pipe.memory_rows
    memory = tf.concat([tf.gather(query_memory, rows[:, :1]),
                        tf.gather(db_memory, tf.concat([tf.maximum(positive_ids, 0), negative_ids], 1))], 1)
    used = tf.concat([tf.ones_like(rows[:, :1], tf.bool), positive_mask,
                      tf.ones_like(negative_ids, tf.bool)], 1)  # padding positives load nothing
    failed = tf.reduce_any(tf.logical_and(used, tf.logical_not(tf.gather(pipe.memory_ok, memory))), axis=1)
    checks = [_check_failures(pipe, index, failed)]
    with tf.control_dependencies(checks):
        images = pipe.images.gather(memory)  # (n, 1 + P + N, H, W, 3), float32
    ok = tf.cast(tf.logical_not(failed), tf.float32)[:, None]
    keep = tf.cast(used, tf.float32) * ok  # a mask product: a broadcast tf.where is 10x slower here
    if pipe.augmentation is not None:
        images = _augment(pipe, images, index)
    images = images * keep[:, :, None, None, None]
    return {
        "query": images[:, 0],
        "positives": images[:, 1 : 1 + num_positives],
        "positive_mask": tf.cast(positive_mask, tf.float32) * ok,
        "negatives": images[:, 1 + num_positives :],
        "negative_mask": negative_mask * ok,
    }


def _check_failures(pipe, index, failed):
    """"stop": fails naming the first failed row; "skip": counts the failed rows."""
    if pipe.on_bad_image == "stop":
        return pipe.assert_loaded(tf.reduce_any(failed), tf.gather(index, tf.argmax(tf.cast(failed, tf.int32))))
    return pipe.skipped_var.assign_add(tf.reduce_sum(tf.cast(failed, tf.int64)))


def _augment(pipe, images, index):
    """The query of each tuple (or, with `augment_all_slots`, every slot) changed by the draws of the
    tuple's own seed, `augment.tuple_seed(seed, cycle, row)`: row k of them for slot k, as
    `TuplePipeline` draws them for one tuple (the caller blacks out padding positives again)."""
    slots = pipe.row_width if pipe.augment_all_slots else 1
    # each tuple's draws, unrolled over the batch's slots (the last batch may be shorter)
    draws = tf.stack([augment.draws_of(augment.tuple_seed(pipe.seed, pipe.cycle, index[0] + k), slots)
                      for k in range(pipe.batch_size)])[: tf.shape(index)[0]]  # (n, slots, 8)
    shape = tf.shape(images)
    changed = augment.augment_with_draws(tf.reshape(images[:, :slots], tf.concat([[-1], shape[2:]], 0)),
                                         tf.reshape(draws, [-1, draws.shape[-1]]), pipe.augmentation)
    changed = tf.reshape(changed, tf.concat([shape[:1], [slots], shape[2:]], 0))
    return changed if slots == pipe.row_width else tf.concat([changed, images[:, slots:]], 1)
