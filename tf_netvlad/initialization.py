"""k-means initialisation of the NetVLAD layer on sampled local features (the reference recipe)."""

import logging

import numpy as np

from tf_netvlad import extract, index
from tf_netvlad.netvlad import default_alpha, top2_margins

log = logging.getLogger(__name__)


def initialize_netvlad(model, paths, root=None, image_size=None, num_images=500, per_image=100,
                       niter=100, seed=43, batch_size=8, progress=True):
    """Sets a model's NetVLAD centroids by k-means and α by the reference rule.

    Samples `per_image` local features from each of `num_images` database images (default
    100 × 500 = 50,000), L2-normalises them when the layer uses preL2 (the descriptors the
    layer actually pools), clusters them with faiss (K = `model.num_clusters`, `niter`
    iterations, seeded) and sets α so that, on these descriptors, the largest soft-assignment
    is on average (geometric mean) 100× the second largest.

    Returns:
        dict with `num_descriptors`, `alpha`, `assignment_ratio` (geometric mean of the
        top-1/top-2 soft-assignment ratio after init, ≈ 100), `median_ratio` and `kmeans_mse`.
    """
    layer = model.netvlad
    local = extract.sample_local_features(
        model.local_features_model(), paths, root=root, num_images=num_images,
        per_image=per_image, image_size=image_size, seed=seed, batch_size=batch_size,
        progress=progress,
    )
    local = np.asarray(local, dtype="float32")
    if layer.pre_l2:
        local /= np.sqrt(np.sum(local * local, axis=1, keepdims=True) + layer.epsilon)
    if len(local) < layer.num_clusters:
        raise ValueError(
            f"k-means needs at least num_clusters={layer.num_clusters} descriptors; sampling "
            f"{len(paths)} images gave {len(local)}. Use more images or fewer clusters."
        )
    centroids = index.kmeans(local, layer.num_clusters, niter=niter, seed=seed)
    alpha = default_alpha(centroids, local, layer.variant)
    layer.set_centroids(centroids, alpha)
    log_ratio = alpha * top2_margins(centroids, local, layer.variant)
    sq_dist = np.sum(local * local, 1, keepdims=True) - 2 * local @ centroids.T + np.sum(centroids**2, 1)
    stats = {
        "num_descriptors": int(len(local)),
        "alpha": float(alpha),
        "assignment_ratio": float(np.exp(np.mean(log_ratio))),
        "median_ratio": float(np.exp(np.median(log_ratio))),
        "kmeans_mse": float(np.mean(np.maximum(sq_dist.min(axis=1), 0.0))),
    }
    log.info("NetVLAD k-means init: %s", stats)
    return stats
