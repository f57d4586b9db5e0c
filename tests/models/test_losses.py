"""The ranking loss against a NumPy reference on hand-built distances."""

import numpy as np
import pytest
import tensorflow as tf

from tf_netvlad.defaults import LOSS_REDUCTIONS
from tf_netvlad.models import losses


def _on_axis(d2):
    """Descriptors whose squared distance to the zero query equals `d2` (placed on the first axis)."""
    d2 = np.asarray(d2, "float64")
    out = np.zeros(d2.shape + (3,), "float32")
    out[..., 0] = np.sqrt(d2)
    return out


def _reference(d2_pos, pos_mask, d2_neg, margin, reduction):
    """Plain-Python NetVLAD loss: sum_j max(min_i d2(q,p_i) + m - d2(q,n_j), 0)."""
    hinge_sum, violating, queries = 0.0, 0, 0
    for dp, mask, dn in zip(d2_pos, pos_mask, d2_neg):
        valid = [d for d, keep in zip(dp, mask) if keep]
        if not valid:
            continue
        queries += 1
        best = min(valid)
        for d in dn:
            term = max(best + margin - d, 0.0)
            hinge_sum += term
            violating += term > 0
    denominator = queries if reduction == "sum" else violating
    return hinge_sum / denominator if denominator else 0.0, violating


D2_POS = np.array([[0.30, 0.05, 0.20], [0.50, 0.40, 9.00], [0.10, 0.70, 0.90]])
MASK = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1]], bool)  # masks out the nearest of queries 0 and 2
D2_NEG = np.array([[0.10, 0.25, 0.50, 2.0], [0.45, 0.60, 0.30, 1.0], [0.75, 0.79, 0.81, 0.20]])


@pytest.mark.parametrize("reduction", LOSS_REDUCTIONS)
def test_loss_matches_reference_with_masked_positives(reduction):
    query = np.zeros((3, 3), "float32")
    got = losses.ranking_loss(query, _on_axis(D2_POS), _on_axis(D2_NEG), positive_mask=MASK,
                              margin=0.1, reduction=reduction)
    want, violating = _reference(D2_POS, MASK, D2_NEG, 0.1, reduction)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    # hand count: q0 best 0.20 -> 0.20, 0.05 (2 violating); q1 best 0.40 -> 0.05, 0.20 (2);
    # q2 best 0.70 -> 0.05, 0.01, 0.60 (3): sum 1.16
    assert violating == 7
    np.testing.assert_allclose(float(got), 1.16 / (3 if reduction == "sum" else 7), rtol=1e-5)


def test_min_is_over_unmasked_positives_only():
    query = np.zeros((1, 3), "float32")
    pos, neg = _on_axis([[0.0, 0.5]]), _on_axis([[0.55]])
    unmasked = losses.ranking_loss(query, pos, neg, margin=0.1)
    masked = losses.ranking_loss(query, pos, neg, positive_mask=[[False, True]], margin=0.1)
    np.testing.assert_allclose(float(unmasked), 0.0, atol=1e-7)  # best 0.0: 0.1 - 0.55 < 0
    np.testing.assert_allclose(float(masked), 0.05, rtol=1e-5)  # best 0.5: 0.6 - 0.55


def test_terms_metrics_and_query_without_positive():
    query = np.zeros((2, 3), "float32")
    terms = losses.ranking_loss_terms(query, _on_axis([[0.2, 0.3], [0.1, 0.1]]),
                                      _on_axis([[0.25, 1.0], [0.0, 0.0]]),
                                      positive_mask=[[1, 1], [0, 0]], margin=0.1)
    np.testing.assert_allclose(terms["hinge"].numpy(), [[0.05, 0.0], [0.0, 0.0]], atol=1e-6)
    np.testing.assert_array_equal(terms["has_positive"].numpy(), [1, 0])
    sums = {k: float(v) for k, v in losses.ranking_loss_sums(terms).items()}
    assert sums["num_queries"] == 1 and sums["num_violating"] == 1 and sums["num_negatives"] == 2
    np.testing.assert_allclose(sums["positive_d2_sum"], 0.2, rtol=1e-5)
    np.testing.assert_allclose(sums["negative_d2_sum"], 1.25, rtol=1e-5)


def test_zero_loss_when_negatives_are_far_and_reduction_without_violations():
    query = np.zeros((2, 3), "float32")
    pos, neg = _on_axis([[0.1], [0.2]]), _on_axis([[0.5, 3.0], [0.31, 2.0]])
    for reduction in LOSS_REDUCTIONS:
        assert float(losses.ranking_loss(query, pos, neg, margin=0.1, reduction=reduction)) == 0.0


def test_gradient_flows_through_best_positive_and_violating_negatives_only():
    rng = np.random.default_rng(0)
    q = tf.Variable(rng.normal(size=(1, 4)).astype("float32"))
    p = tf.Variable(np.stack([q.numpy() + 0.1, q.numpy() + 0.3], axis=1))   # best is p0
    n = tf.Variable(np.stack([q.numpy() + 0.15, q.numpy() + 3.0], axis=1))  # only n0 violates
    with tf.GradientTape() as tape:
        loss = losses.ranking_loss(q, p, n, margin=0.1)
    grad_p, grad_n = tape.gradient(loss, [p, n])
    assert np.abs(grad_p.numpy()[0, 0]).sum() > 0 and np.abs(grad_p.numpy()[0, 1]).sum() == 0
    assert np.abs(grad_n.numpy()[0, 0]).sum() > 0 and np.abs(grad_n.numpy()[0, 1]).sum() == 0
    # d/dp0 of (|q-p0|^2 - |q-n0|^2) = 2 (p0 - q)
    np.testing.assert_allclose(grad_p.numpy()[0, 0], 2 * (p.numpy()[0, 0] - q.numpy()[0]), rtol=1e-5)


def test_bad_reduction_is_named():
    with pytest.raises(ValueError, match="reduction"):
        losses.ranking_loss(np.zeros((1, 2), "float32"), np.zeros((1, 1, 2), "float32"),
                            np.zeros((1, 1, 2), "float32"), reduction="mean")


# --------------------------------------------------------------------------- MATLAB trainWeakly.m rules
# A hand-built batch of two queries at the origin (2-D descriptors), one positive each, three
# negatives each; every d² below is exact arithmetic on these numbers:
#   q0: p0 = (0.3, 0)  d²p = 0.09;  n = (0.4, 0) d² 0.16 -> hinge 0.09 + 0.1 - 0.16 = 0.03,
#       (0, 0.2) d² 0.04 (very hard: nearer than p0) -> hinge 0.15, (1, 0) d² 1.0 -> 0
#   q1: p1 = (0, 0.5)  d²p = 0.25;  n = (0.5, 0) d² 0.25 -> hinge 0.1, (0, -0.6) d² 0.36 -> 0,
#       (0.3, 0.4) d² 0.25 -> hinge 0.1 (its slot is a filler in the masked cases)
MATLAB_Q = np.zeros((2, 2), "float32")
MATLAB_P = np.array([[[0.3, 0.0]], [[0.0, 0.5]]], "float32")
MATLAB_N = np.array([[[0.4, 0.0], [0.0, 0.2], [1.0, 0.0]],
                     [[0.5, 0.0], [0.0, -0.6], [0.3, 0.4]]], "float32")
FILLER_MASK = np.array([[1, 1, 1], [1, 1, 0]], "float32")


@pytest.mark.parametrize("reduction, mask, very_hard, want", [
    ("sum", None, False, 0.38 / 2),             # 0.03 + 0.15 + 0.1 + 0.1, per query
    ("mean_violating", None, False, 0.38 / 4),  # ... / 4 violating triplets (MATLAB thisBatchSize)
    ("mean_violating", FILLER_MASK, False, 0.28 / 3),  # the filler of q1 neither adds nor counts
    ("mean_violating", FILLER_MASK, True, 0.13 / 2),   # and the very hard (0, 0.2) of q0 neither
])
def test_matlab_normaliser_filler_mask_and_very_hard_rule_on_a_hand_computed_batch(reduction, mask, very_hard,
                                                                                     want):
    got = losses.ranking_loss(MATLAB_Q, MATLAB_P, MATLAB_N, negative_mask=mask, margin=0.1,
                              reduction=reduction, exclude_very_hard=very_hard)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_mean_violating_gradient_is_matlab_dzdy_over_this_batch_size():
    """`trainWeakly.m`: dzdy(query) = 2 (Σ_viol n − n_viol p), dzdy(pos) = 2 n_viol (p − q),
    dzdy(neg) = 2 (q − n) for the violating (not very hard) negatives only, the batch's summed
    gradient scaled by 1 / thisBatchSize = 1 / Σ n_viol. Here n_viol = 1 for each query
    (q0: (0.4, 0); q1: (0.5, 0), its filler masked), thisBatchSize = 2."""
    q, p, n = (tf.Variable(v) for v in (MATLAB_Q, MATLAB_P, MATLAB_N))
    with tf.GradientTape() as tape:
        loss = losses.ranking_loss(q, p, n, negative_mask=FILLER_MASK, margin=0.1,
                                   reduction="mean_violating", exclude_very_hard=True)
    grad_q, grad_p, grad_n = tape.gradient(loss, [q, p, n])
    # q0: 2 ((0.4, 0) - (0.3, 0)) / 2; q1: 2 ((0.5, 0) - (0, 0.5)) / 2
    np.testing.assert_allclose(grad_q.numpy(), [[0.1, 0.0], [0.5, -0.5]], atol=1e-6)
    # p0: 2 (0.3, 0) / 2; p1: 2 (0, 0.5) / 2
    np.testing.assert_allclose(grad_p.numpy(), [[[0.3, 0.0]], [[0.0, 0.5]]], atol=1e-6)
    # the violating negatives: 2 (q - n) / 2; very hard, non-violating and filler slots: 0
    want_n = np.zeros((2, 3, 2))
    want_n[0, 0] = [-0.4, 0.0]
    want_n[1, 0] = [-0.5, 0.0]
    np.testing.assert_allclose(grad_n.numpy(), want_n, atol=1e-6)
    # the per-query "sum" reduction on the same batch takes a step n_viol / 1 = 1x here, and
    # N times MATLAB's when all N = 10 negatives of every query violate
    ten = np.repeat(MATLAB_N[:, :1], 10, axis=1)  # 10 copies of the violating negative per query
    ratio = (float(losses.ranking_loss(MATLAB_Q, MATLAB_P, ten, margin=0.1, reduction="sum"))
             / float(losses.ranking_loss(MATLAB_Q, MATLAB_P, ten, margin=0.1, reduction="mean_violating")))
    np.testing.assert_allclose(ratio, 10.0, rtol=1e-5)


def test_terms_count_only_trained_negatives():
    terms = losses.ranking_loss_terms(MATLAB_Q, MATLAB_P, MATLAB_N, negative_mask=FILLER_MASK, margin=0.1,
                                      exclude_very_hard=True)
    np.testing.assert_array_equal(terms["negative_weight"].numpy(), [[1, 0, 1], [1, 1, 0]])
    np.testing.assert_array_equal(terms["violating"].numpy(), [[1, 0, 0], [1, 0, 0]])
    sums = {k: float(v) for k, v in losses.ranking_loss_sums(terms).items()}
    assert sums["num_violating"] == 2 and sums["num_negatives"] == 4
    np.testing.assert_allclose(sums["negative_d2_sum"], 0.16 + 1.0 + 0.25 + 0.36, rtol=1e-5)


def test_a_diverged_batch_reports_nan_under_every_reduction():
    """NaN descriptors make every hinge test false: mean_violating's normaliser is then 0, and the
    loss must still say NaN (the training stops on it), not 0."""
    q = np.full((1, 2), np.nan, "float32")
    for reduction in LOSS_REDUCTIONS:
        got = float(losses.ranking_loss(q, MATLAB_P[:1], MATLAB_N[:1], margin=0.1, reduction=reduction))
        assert np.isnan(got), reduction
    assert float(losses.divide_hinge_sum(np.float32(0.3), 0.0)) == 0.0  # an empty batch: 0
