"""The NetVLAD layer (soft-assignment VLAD pooling), its k-means α rule, and the two L2
normalisations (MatConvNet and MATLAB semantics) the model's layers share."""

import math

import keras
import numpy as np
from keras import ops

from tf_netvlad.defaults import DEFAULT_VARIANT, NETVLAD_VARIANTS, NUM_CLUSTERS

# ε of every L2 normalisation of the model (NetVLAD, PCAWhitening, the export's re-L2 after a
# crop), as MatConvNet's `normalize` layers of the official models (checked by the converter).
L2_EPSILON = 1e-12


def l2_normalize_sqrt(x, axis=-1, epsilon=L2_EPSILON):
    """MatConvNet `normalize` semantics: x / sqrt(sum(x²) + ε) (preL2, intra-normalisation)."""
    return x / ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True) + epsilon)


def l2_normalize_norm(x, axis=-1, epsilon=L2_EPSILON):
    """MATLAB `relja_l2normalize_col` semantics: x / (‖x‖ + ε) (postL2, finalL2)."""
    return x / (ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True)) + epsilon)


@keras.saving.register_keras_serializable(package="tf_netvlad")
class NetVLAD(keras.layers.Layer):
    """Aggregates local features into a NetVLAD global descriptor.

    Each local feature x_i (optionally L2-normalised first, "preL2") is soft-assigned to K
    clusters, a_k(x_i) = softmax_k(w_kᵀ x_i + b_k), and the layer sums the weighted residuals
    V(d, k) = Σ_i a_k(x_i) (x_i(d) − c_k(d)). Each cluster's residual is L2-normalised
    ("intra-normalisation") and the flattened vector is L2-normalised again.

    The sum is computed as V = Aᵀ X − (Σ_i a_ik) c_k with one batched matmul, so the
    B×N×K×D residual tensor is never materialised (memory O(B·N·K + B·K·D)).

    The output is flattened with the MATLAB/MatConvNet order of the official models: element
    (d, k) is at index `d * K + k`, so official PCA-whitening weights apply unchanged.

    Two parameterisations of the assignment:
    - `"v1"` (every released official model, MATLAB `layerVLAD`): w_k = α·ĉ_k (unit-norm
      centre), no bias.
    - `"v2"` (the paper, MATLAB `layerVLADv2`): w_k = 2α·c_k, b_k = −α‖c_k‖².
    Both are initialised from k-means centres with `set_centroids(centroids, alpha)`.

    Args:
        num_clusters: int, K >= 1. The output size is `K * D`.
        variant: `"v1"` or `"v2"`, see above.
        pre_l2: bool. L2-normalise each local feature over channels before pooling.
        intra_normalize: bool. L2-normalise each cluster's residual sum.
        epsilon: float. ε of every normalisation (x / sqrt(Σx² + ε) for preL2 and intra,
            x / (‖x‖ + ε) for the final L2, as the reference MATLAB code).
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`, `trainable`, ...).

    Call arguments:
        inputs: float tensor `(batch, height, width, D)` (height and width may be unknown
            until run time) or `(batch, num_features, D)`.

    Returns:
        float tensor `(batch, num_clusters * D)` with unit L2 norm.

    Example:
    >>> layer = tf_netvlad.NetVLAD(num_clusters=4)
    >>> layer(np.random.rand(2, 7, 9, 16).astype("float32")).shape
    TensorShape([2, 64])

    Reference:
     - [Arandjelović et al., NetVLAD, CVPR 2016](https://arxiv.org/abs/1511.07247)
    """

    def __init__(
        self,
        num_clusters=NUM_CLUSTERS,
        variant=DEFAULT_VARIANT,
        pre_l2=True,
        intra_normalize=True,
        epsilon=L2_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(num_clusters, bool) or not isinstance(num_clusters, (int, np.integer)):
            raise ValueError(f"`num_clusters` must be an int >= 1. Received: num_clusters={num_clusters!r}")
        if num_clusters < 1:
            raise ValueError(f"`num_clusters` must be >= 1. Received: num_clusters={num_clusters}")
        if variant not in NETVLAD_VARIANTS:
            raise ValueError(f"`variant` must be one of {NETVLAD_VARIANTS}. Received: variant={variant!r}")
        if not epsilon >= 0:
            raise ValueError(f"`epsilon` must be >= 0. Received: epsilon={epsilon}")
        self.num_clusters = int(num_clusters)
        self.variant = variant
        self.pre_l2 = bool(pre_l2)
        self.intra_normalize = bool(intra_normalize)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        if len(input_shape) not in (3, 4):
            raise ValueError(
                "NetVLAD expects local features of shape (batch, height, width, D) or "
                f"(batch, num_features, D). Received: input_shape={tuple(input_shape)}"
            )
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(
                f"The channel axis of the NetVLAD input must be known. Received: input_shape={tuple(input_shape)}"
            )
        self.feature_dim = int(dim)
        k = self.num_clusters
        self.assignment_kernel = self.add_weight(
            name="assignment_kernel", shape=(dim, k), initializer="glorot_uniform"
        )
        self.assignment_bias = None
        if self.variant == "v2":
            self.assignment_bias = self.add_weight(
                name="assignment_bias", shape=(k,), initializer="zeros"
            )
        self.centroids = self.add_weight(
            name="centroids", shape=(k, dim), initializer="random_uniform"
        )

    def call(self, inputs):
        if len(inputs.shape) not in (3, 4):
            raise ValueError(
                "NetVLAD expects local features of rank 3 or 4. "
                f"Received: inputs.shape={tuple(inputs.shape)}"
            )
        dim = self.feature_dim
        x = ops.reshape(inputs, (ops.shape(inputs)[0], -1, dim))  # (B, N, D), N dynamic
        if self.pre_l2:
            x = l2_normalize_sqrt(x, epsilon=self.epsilon)
        logits = ops.matmul(x, self.assignment_kernel)  # (B, N, K)
        if self.assignment_bias is not None:
            logits = logits + self.assignment_bias
        soft_assign = ops.softmax(logits, axis=-1)
        # V(k, d) = sum_i a_ik x_id - (sum_i a_ik) c_kd   -> (B, K, D)
        vlad = ops.matmul(ops.transpose(soft_assign, (0, 2, 1)), x)
        vlad = vlad - ops.expand_dims(ops.sum(soft_assign, axis=1), -1) * self.centroids
        if self.intra_normalize:
            vlad = l2_normalize_sqrt(vlad, axis=-1, epsilon=self.epsilon)
        # MATLAB order: element (d, k) at d * K + k.
        vlad = ops.reshape(ops.transpose(vlad, (0, 2, 1)), (-1, dim * self.num_clusters))
        return l2_normalize_norm(vlad, epsilon=self.epsilon)

    def compute_output_shape(self, input_shape):
        dim = input_shape[-1]
        return (input_shape[0], None if dim is None else self.num_clusters * dim)

    def set_centroids(self, centroids, alpha):
        """Initialise from k-means centres `(K, D)` and the sharpness `alpha` (see `default_alpha`)."""
        centroids = np.asarray(centroids, dtype="float32")
        expected = (self.num_clusters, self.feature_dim)
        if centroids.shape != expected:
            raise ValueError(f"`centroids` must have shape {expected}. Received: {centroids.shape}")
        alpha = float(alpha)
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"`alpha` must be a finite positive number. Received: alpha={alpha}")
        self.centroids.assign(centroids)
        if self.variant == "v1":
            unit = centroids / np.linalg.norm(centroids, axis=1, keepdims=True).clip(1e-12)
            self.assignment_kernel.assign(alpha * unit.T)
        else:
            self.assignment_kernel.assign(2.0 * alpha * centroids.T)
            self.assignment_bias.assign(-alpha * np.sum(centroids.astype("float64") ** 2, axis=1))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_clusters": self.num_clusters,
                "variant": self.variant,
                "pre_l2": self.pre_l2,
                "intra_normalize": self.intra_normalize,
                "epsilon": self.epsilon,
            }
        )
        return config


def top2_margins(centroids, descriptors, variant=DEFAULT_VARIANT, chunk_size=8192):
    """Per-descriptor gap between the best and second-best assignment logit, divided by α.

    v1: s₁ − s₂ of the cosine similarities ĉ_kᵀx. v2: d²₂ − d²₁ of the squared distances to the
    two nearest centres. α·gap is the log-ratio of the two largest soft-assignments.
    """
    centroids = np.asarray(centroids, dtype="float32")
    descriptors = np.asarray(descriptors, dtype="float32")
    if centroids.shape[0] < 2:
        raise ValueError("At least 2 clusters are needed to define alpha. Received 1 centroid.")
    gaps = np.empty(len(descriptors), dtype="float64")
    if variant == "v1":
        ref = centroids / np.linalg.norm(centroids, axis=1, keepdims=True).clip(1e-12)
    elif variant == "v2":
        ref = centroids
        ref_sq = np.sum(ref.astype("float64") ** 2, axis=1)
    else:
        raise ValueError(f"`variant` must be one of {NETVLAD_VARIANTS}. Received: variant={variant!r}")
    for start in range(0, len(descriptors), chunk_size):
        x = descriptors[start : start + chunk_size]
        scores = x @ ref.T
        if variant == "v2":  # negated squared distance, up to the per-row constant ‖x‖²
            scores = 2.0 * scores - ref_sq
        top = -np.partition(-scores, 1, axis=1)[:, :2]
        gaps[start : start + len(x)] = top[:, 0] - top[:, 1]
    return gaps


def default_alpha(centroids, descriptors, variant=DEFAULT_VARIANT, ratio=100.0):
    """The reference's α: the largest soft-assignment is `ratio`× the second largest on average.

    α = ln(ratio) / mean_i(gap_i) with the gap of `top2_margins` (MATLAB: −ln(0.01) / mean(...)).
    The mean log-ratio of the two largest assignments of the initialised layer is then exactly
    ln(ratio) on these descriptors.
    """
    gaps = top2_margins(centroids, descriptors, variant)
    mean_gap = float(np.mean(gaps))
    if not mean_gap > 0:
        raise ValueError(
            "Cannot set alpha: descriptors are equally close to their two nearest centroids "
            f"(mean gap {mean_gap}). Are the centroids distinct?"
        )
    return math.log(ratio) / mean_gap
