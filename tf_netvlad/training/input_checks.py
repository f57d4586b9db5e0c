"""Which training queries can train, and the one-line refusal of input that cannot (pure NumPy).

Everything here is decided from the positions of a split alone, before any image is read:

* `check_training_input` runs first in `training.train`, before any model or file is made. Its
  errors name the split file and the command-line flag to change.
* `trainable_queries` is `HardNegativeMiner`'s own check (`tf_netvlad.training.mining`). It returns
  the positive sets that the miner ranks and the queries it visits. Its errors name the library
  arguments.

A training query trains when it has a training positive: a database image within
√nonTrivPosDistSqThr (10 m), beyond √`exclude_trivial_m2` when that rule is on
(`PlaceSplit.non_trivial_positives`). Its negatives are the database images beyond `pos_dist_thr`
(25 m). Importing this module does not import TensorFlow.
"""

import logging
import os

import numpy as np

# The name these records had before the checks left `mining`; the CLI prints it, so it stays.
logger = logging.getLogger("tf_netvlad.training.mining")


def _trivial_note(exclude_trivial_m2):
    if exclude_trivial_m2 is None:
        return ""
    return f" and beyond {np.sqrt(float(exclude_trivial_m2)):g} m (trivial-positive rule)"


def _none_of(count):
    """'none of its 3 queries has a' / 'its only query has no' (followed by 'database image')."""
    return "its only query has no" if count == 1 else f"none of its {count} queries has a"


def _describe_source(source, split):
    """How an error names a split: its file as the caller gave it, else its name."""
    if source is not None and not hasattr(source, "query_paths"):
        return f"split '{os.fspath(source)}'"
    return f"split {split.name!r}"


def _short_of_negatives(split, non_negatives, queries, num_negatives):
    """`(query, its negatives, queries short)` when some of `queries` have fewer than
    `num_negatives` database images beyond `pos_dist_thr` (the one with the fewest), else None."""
    available = np.array([split.num_db - len(non_negatives[q]) for q in queries])
    if available.min() >= num_negatives:
        return None
    return int(queries[np.argmin(available)]), int(available.min()), int(np.sum(available < num_negatives))


def no_positive_message(split, label, exclude_trivial_m2=None, flag=""):
    """The one-line error for a training split in which no query has a training positive."""
    radius = np.sqrt(split.non_triv_pos_dist_sq_thr)
    text = (f"Training {label}{flag}: {_none_of(split.num_queries)} database image within "
            f"{radius:g} m (sqrt of nonTrivPosDistSqThr = {split.non_triv_pos_dist_sq_thr:g} m²)"
            f"{_trivial_note(exclude_trivial_m2)}, so there is nothing to train on "
            f"({split.num_db} database images).")
    if exclude_trivial_m2 is not None:
        plain = split.non_trivial_positives(exclude_trivial_m2=None)
        if any(len(p) for p in plain):
            return (text + " Every positive lies within the trivial radius: train with "
                    "--exclude-trivial-m2 none (exclude_trivial_m2=None).")
    return text + " Check the split's UTM positions (easting, northing in metres) and radii."


def check_training_input(cfg, train_split, val_split=None, sources=(None, None)):
    """Refuses, in one line, training input that cannot train, before any model or file is made.

    Checked (all NumPy, from positions only): the training split has queries with a training
    positive (within √nonTrivPosDistSqThr, beyond √`exclude_trivial_m2`), at least one batch of
    them (`batch_size`), and enough database images beyond `pos_dist_thr` for `num_negatives`
    negatives per query; the validation split has at least one query with a positive within
    `pos_dist_thr` (otherwise recall@N is undefined). Validation queries without a positive are
    not an error: recall@N leaves them out and logs how many (as MATLAB and every reference do).

    Args:
        cfg: the run's `TrainConfig`.
        train_split, val_split: `places.PlaceSplit`s (val_split may be None).
        sources: `(train, val)` as the caller named them (file paths name the file in the errors).

    Raises:
        ValueError naming the split file, the cause and the flag to change.
    """
    train_label = _describe_source(sources[0], train_split)
    positives = train_split.non_trivial_positives(exclude_trivial_m2=cfg.exclude_trivial_m2)
    valid = np.flatnonzero([len(p) > 0 for p in positives])
    if len(valid) == 0:
        raise ValueError(no_positive_message(train_split, train_label, cfg.exclude_trivial_m2, " (--dataset)"))
    if len(valid) < cfg.batch_size:
        raise ValueError(
            f"Training {train_label} (--dataset): only {len(valid)} of its {train_split.num_queries} queries "
            f"have a database image within {np.sqrt(train_split.non_triv_pos_dist_sq_thr):g} m"
            f"{_trivial_note(cfg.exclude_trivial_m2)}, fewer than one batch of {cfg.batch_size} tuples. "
            "Lower --batch-size (batch_size) or add training queries.")
    short = _short_of_negatives(train_split, train_split.positives(), valid, cfg.num_negatives)
    if short is not None:
        worst, fewest, num_short = short
        raise ValueError(
            f"Training {train_label} (--dataset): query {worst} has only {fewest} database "
            f"images beyond {train_split.pos_dist_thr:g} m, fewer than the {cfg.num_negatives} negatives a "
            f"tuple needs ({num_short} queries are short). Lower "
            "--num-negatives (num_negatives) or use a larger database.")
    if val_split is not None:
        val_label = _describe_source(sources[1], val_split)
        missing = val_split.queries_without_positives()
        if val_split.num_queries == 0 or len(missing) == val_split.num_queries:
            raise ValueError(
                f"Validation {val_label} (--val): {_none_of(val_split.num_queries)} database "
                f"image within {val_split.pos_dist_thr:g} m (posDistThr), so recall@N cannot be measured. "
                "Check its UTM positions, or train without --val (val_split=None).")
        if len(missing):
            logger.warning("Validation %s: %d of %d queries have no database image within %g m; recall@N "
                           "leaves them out.", val_label, len(missing), val_split.num_queries,
                           val_split.pos_dist_thr)
    return valid


def trainable_queries(split, num_negatives, exclude_trivial_m2=None):
    """The miner's positive sets and training queries of `split`; refuses a split that cannot train.

    Queries without a training positive are skipped (as every reference does), with a warning
    that counts them. A split with no such query, or whose training queries do not all have
    `num_negatives` database images beyond `pos_dist_thr`, raises.

    Args:
        split: training `places.PlaceSplit`.
        num_negatives: int, the negatives each tuple needs.
        exclude_trivial_m2: None, or the squared distance in m² within which a database image is a
            trivial positive (`PlaceSplit.non_trivial_positives`).

    Returns:
        `(positives, non_negatives, valid_queries)`: per query, the training positives
        (`non_trivial_positives`) and the database ids within `pos_dist_thr` (`positives()`, never
        negatives); and the int64 ids of the queries that have at least one training positive.

    Raises:
        ValueError naming the split (no training positive) or `num_negatives` (too few negatives).
    """
    positives = split.non_trivial_positives(exclude_trivial_m2=exclude_trivial_m2)
    non_negatives = split.positives()
    counts = np.array([len(p) for p in positives], np.int64)
    valid_queries = np.flatnonzero(counts > 0).astype(np.int64)
    dropped_queries = int(split.num_queries - len(valid_queries))
    if len(valid_queries) == 0:
        raise ValueError(no_positive_message(split, f"split {split.name!r}", exclude_trivial_m2))
    if dropped_queries:
        logger.warning("%d of %d training queries have no positive within %.3g m%s and are skipped.",
                       dropped_queries, split.num_queries, np.sqrt(split.non_triv_pos_dist_sq_thr),
                       _trivial_note(exclude_trivial_m2))
    short = _short_of_negatives(split, non_negatives, valid_queries, num_negatives)
    if short is not None:
        worst, fewest, num_short = short
        raise ValueError(
            f"num_negatives={num_negatives} negatives per query are needed but query {worst} "
            f"has only {fewest} database images beyond {split.pos_dist_thr:g} m "
            f"({num_short} queries are short). Lower "
            "num_negatives or use a larger database."
        )
    return positives, non_negatives, valid_queries
