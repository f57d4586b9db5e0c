"""The weakly supervised triplet ranking loss of NetVLAD (paper eq. 7), in `keras.ops`.

For a query q with a (masked) set of potential positives {p_i} and negatives {n_j}:

    L_q = sum_j max( min_i d²(q, p_i) + m − d²(q, n_j), 0 )

with squared Euclidean distances d² and margin m (0.1 in the paper and the MATLAB code). The best
positive is the one nearest to the query with the *current* descriptors (the min is taken here, in
the graph), as MATLAB `trainWeakly.m` re-computes the loss with fresh features after loading a tuple.

Which negatives count (MATLAB `trainWeakly.m`, the paper recipe's `TrainConfig.violating_only`):

* `negative_mask` (from the tuple pipeline) is 0 for *filler* slots: negatives that did not violate
  the margin when they were mined and only pad the tuple to its fixed size. MATLAB never loads
  them; here they are masked, so they add nothing to the loss, its normaliser or the metrics.
* `exclude_very_hard=True` re-checks MATLAB's `excludeVeryHard` with the fresh descriptors of the
  step: a negative nearer to the query than the best positive (d²(q, n) < d²(q, p*)) gets no
  gradient and is not counted, exactly as `trainWeakly.m` recomputes `veryHardNegs` after its
  forward pass.
* A negative then trains iff its hinge is positive with the fresh descriptors (d²(q, n) <
  d²(q, p*) + m): MATLAB's `violatingNegs`, re-checked after loading.

Reductions over a batch (`defaults.LOSS_REDUCTIONS`):

* `"sum"`: L_q summed over the negatives of each query, then averaged over the queries of the batch
  (the paper's per-query loss; the CPU recipe's).
* `"mean_violating"`: all hinge terms of the batch summed and divided by the number of violating
  triplets (counted negatives with a positive hinge) in the batch: MATLAB's
  `thisBatchSize = sum(numTriplets)`, by which `trainWeakly.m` divides the summed gradient before
  the momentum/weight-decay update (the paper recipe's default). A batch without violating
  triplets has loss 0 and no gradient. The normaliser is a count, so the gradient of the loss is
  exactly MATLAB's `dzdy / thisBatchSize`: for query q, best positive p and violating negatives
  n_j, dL/dq = 2 (Σ_j n_j − n_viol · p) / thisBatchSize.

Under `tf.distribute`, a replica computes its *sums* (`ranking_loss_sums`) and divides by the
*global* normaliser (queries or violating triplets of the whole batch), so that the gradients summed
over replicas equal the single-device gradient (`NetVLADModel.train_step` does this).
"""

from keras import ops

from tf_netvlad.defaults import LOSS_REDUCTIONS, MARGIN

# Stands in for the distance to a masked-out positive: larger than any d² between unit vectors (4).
_MASKED_DISTANCE = 1e9


def check_reduction(reduction):
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {LOSS_REDUCTIONS}. Received: reduction={reduction!r}")
    return reduction


def squared_distances(query, candidates):
    """d²(q, c) for every candidate of every query: `(B, d)`, `(B, M, d)` -> `(B, M)` float32."""
    diff = ops.expand_dims(ops.cast(query, "float32"), 1) - ops.cast(candidates, "float32")
    return ops.sum(ops.square(diff), axis=-1)


def ranking_loss_terms(query, positives, negatives, positive_mask=None, negative_mask=None,
                       margin=MARGIN, exclude_very_hard=False):
    """The hinge terms of the ranking loss and the quantities reported as metrics.

    Args:
        query: `(B, d)` query descriptors.
        positives: `(B, P, d)` descriptors of the potential positives.
        negatives: `(B, N, d)` descriptors of the negatives.
        positive_mask: optional `(B, P)` bool/0-1; padded positives are 0 and never the best one.
            A query whose positives are all masked contributes no loss (`has_positive` is 0).
        negative_mask: optional `(B, N)` bool/0-1; masked negatives (fillers) contribute nothing.
        margin: m, for squared distances.
        exclude_very_hard: also leave out negatives nearer than the best positive
            (d²(q, n) < d²(q, p*), MATLAB `excludeVeryHard`, checked on these descriptors).

    Returns:
        dict of float32 tensors: `hinge (B, N)` (0 where masked), `positive_d2 (B, P)` (masked
        positives at a large constant), `best_positive_d2 (B,)` (its minimum),
        `negative_d2 (B, N)`, `violating (B, N)` (1.0 where the hinge is > 0), `has_positive (B,)`,
        `negative_weight (B, N)` (1.0 for negatives that count).
    """
    d2_pos = squared_distances(query, positives)
    d2_neg = squared_distances(query, negatives)
    if positive_mask is None:
        positive_mask = ops.ones_like(d2_pos)
    positive_mask = ops.cast(positive_mask, "float32")
    masked = ops.where(positive_mask > 0, d2_pos, ops.full_like(d2_pos, _MASKED_DISTANCE))
    best = ops.min(masked, axis=1)
    has_positive = ops.cast(ops.max(positive_mask, axis=1) > 0, "float32")
    best = best * has_positive  # keeps metrics finite for queries without any positive
    weight = ops.ones_like(d2_neg) if negative_mask is None else ops.cast(negative_mask, "float32")
    weight = weight * ops.expand_dims(has_positive, 1)
    if exclude_very_hard:  # comparisons carry no gradient: only which terms count changes
        weight = weight * ops.cast(d2_neg >= ops.expand_dims(best, 1), "float32")
    hinge = ops.relu(ops.expand_dims(best, 1) + margin - d2_neg) * weight
    violating = ops.cast(hinge > 0, "float32")
    return {
        "hinge": hinge,
        "positive_d2": masked,
        "best_positive_d2": best,
        "negative_d2": d2_neg,
        "violating": violating,
        "has_positive": has_positive,
        "negative_weight": weight,
    }


def ranking_loss_sums(terms):
    """Batch sums from `ranking_loss_terms`, to be reduced with global normalisers.

    Returns a dict of float32 scalars: `hinge_sum`, `num_queries` (queries with a positive),
    `num_violating`, `num_negatives` (counted negatives), `positive_d2_sum` (of the best positives)
    and `negative_d2_sum` (of the counted negatives).
    """
    return {
        "hinge_sum": ops.sum(terms["hinge"]),
        "num_queries": ops.sum(terms["has_positive"]),
        "num_violating": ops.sum(terms["violating"]),
        "num_negatives": ops.sum(terms["negative_weight"]),
        "positive_d2_sum": ops.sum(terms["best_positive_d2"] * terms["has_positive"]),
        "negative_d2_sum": ops.sum(terms["negative_d2"] * terms["negative_weight"]),
    }


def divide_hinge_sum(hinge_sum, normaliser):
    """`hinge_sum / normaliser`, 0 when the normaliser is 0, but NaN/inf when the sum is not finite.

    Non-finite descriptors make every `hinge > 0` test false, so `mean_violating`'s normaliser is 0
    exactly when the run has diverged: a plain `divide_no_nan` would report a loss of 0 and hide it.
    """
    hinge_sum = ops.cast(hinge_sum, "float32")
    return ops.where(ops.isfinite(hinge_sum), ops.divide_no_nan(hinge_sum, ops.cast(normaliser, "float32")),
                     hinge_sum)


def reduce_ranking_loss(hinge_sum, num_queries, num_violating, reduction="sum"):
    """Divides a hinge sum by the normaliser of `reduction` (0 when the normaliser is 0; a NaN/inf
    sum stays NaN/inf, see `divide_hinge_sum`)."""
    check_reduction(reduction)
    denominator = num_queries if reduction == "sum" else num_violating
    return divide_hinge_sum(hinge_sum, denominator)


def ranking_loss(query, positives, negatives, positive_mask=None, negative_mask=None, margin=MARGIN,
                 reduction="sum", exclude_very_hard=False):
    """The NetVLAD ranking loss of one batch (single device). See the module docstring.

    Example:
    >>> q = np.array([[1.0, 0.0]], "float32")
    >>> p = np.array([[[0.8, 0.6], [0.0, 1.0]]], "float32")   # d² = 0.4 and 2.0
    >>> n = np.array([[[0.6, 0.8]]], "float32")               # d² = 0.8
    >>> float(ranking_loss(q, p, n, margin=0.5))               # max(0.4 + 0.5 - 0.8, 0)
    0.1
    """
    terms = ranking_loss_terms(query, positives, negatives, positive_mask, negative_mask, margin,
                               exclude_very_hard)
    sums = ranking_loss_sums(terms)
    return reduce_ranking_loss(sums["hinge_sum"], sums["num_queries"], sums["num_violating"], reduction)
