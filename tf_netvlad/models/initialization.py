"""Fitting a model to database images: k-means initialisation of the NetVLAD layer on sampled
local features (the reference recipe, `initialize_netvlad` / `init_model`) and PCA-whitening on
database descriptors (`fit_whitening`). Each public function parses `image_size` once."""

import logging

import numpy as np

from tf_netvlad.data.image_size import parse_image_size
from tf_netvlad.defaults import (
    DEFAULT_VARIANT,
    EXTRACT_BATCH_SIZE,
    INIT_IMAGES,
    INIT_PER_IMAGE,
    KMEANS_NITER,
    NUM_CLUSTERS,
    SEED,
    WHITEN_COMPONENTS,
    WHITEN_MAX_IMAGES,
)
from tf_netvlad.layers.netvlad import default_alpha, top2_margins
from tf_netvlad.models import extract
from tf_netvlad.search import faiss_index

log = logging.getLogger(__name__)


def initialize_netvlad(model, paths, root=None, image_size=None, num_images=INIT_IMAGES,
                       per_image=INIT_PER_IMAGE, niter=KMEANS_NITER, seed=SEED,
                       batch_size=EXTRACT_BATCH_SIZE, progress=True):
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
    image_size = parse_image_size(image_size)
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
    centroids = faiss_index.kmeans(local, layer.num_clusters, niter=niter, seed=seed)
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


def init_model(split, root=None, backbone="vgg16", weights=None, num_clusters=NUM_CLUSTERS, variant=DEFAULT_VARIANT,
               whitening_dim=None, image_size=None, num_images=INIT_IMAGES, per_image=INIT_PER_IMAGE,
               niter=KMEANS_NITER, seed=SEED, batch_size=EXTRACT_BATCH_SIZE, progress=True):
    """Builds a model and initialises its NetVLAD layer by k-means on `split`'s database images.

    This is the paper's "off-the-shelf NetVLAD". Returns `(model, init_stats)`.
    """
    from tf_netvlad.models.model import build_model

    if whitening_dim is not None:
        raise ValueError("Whitening is fitted after initialisation: use `fit-whitening`.")
    image_size = parse_image_size(image_size)
    model = build_model(backbone, weights=weights, num_clusters=num_clusters, variant=variant)
    stats = initialize_netvlad(
        model, split.db_paths, root=root if root is not None else split.root,
        image_size=image_size, num_images=num_images, per_image=per_image, niter=niter,
        seed=seed, batch_size=batch_size, progress=progress,
    )
    return model, stats


def fit_whitening(model, paths, root=None, image_size=None, num_components=WHITEN_COMPONENTS,
                  max_images=WHITEN_MAX_IMAGES, seed=SEED, batch_size=EXTRACT_BATCH_SIZE,
                  progress=True):
    """Fits PCA-whitening on database descriptors and returns the model with it appended.

    As MATLAB `addPCA.m`: NetVLAD descriptors of at most `max_images` random database images
    (seeded), `whitening.fit_pca_whitening` (mean-centred, 1/sqrt(λ + 1e-9)), then a
    `PCAWhitening` layer (+ L2) on a copy of `model` (`model.with_whitening`). `num_components`
    must be <= min(descriptor dim, number of images − 1).
    """
    from tf_netvlad.layers.whitening import fit_pca_whitening
    from tf_netvlad.models.model import with_whitening

    if model.whitening_dim is not None:
        raise ValueError(f"Model {model.name!r} is already whitened (dim {model.whitening_dim}).")
    image_size = parse_image_size(image_size)
    paths = list(paths)
    if not paths:
        raise ValueError("`paths` is empty: PCA-whitening needs database images.")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(paths), size=min(int(max_images), len(paths)), replace=False))
    desc = extract.extract_descriptors(model, [paths[i] for i in chosen], root=root, image_size=image_size,
                                       batch_size=batch_size, progress=progress)
    kernel, bias = fit_pca_whitening(desc, int(num_components))
    return with_whitening(model, kernel, bias)
