"""End-to-end jobs composed of library calls; the CLI and the notebooks call these."""

import logging
import os

from tf_netvlad.fileio import atomic_path

log = logging.getLogger(__name__)


def save_model(model, path):
    """Saves a `.keras` file atomically: a failed save leaves no partial file behind."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"Model files must end in `.keras`. Received: {path}")
    with atomic_path(path, ".keras") as tmp:
        model.save(tmp)
    return path


def load_split_checked(dataset, root=None):
    """Loads a split and refuses one without database images or queries."""
    from tf_netvlad import places

    split = places.load_split(dataset, root=root)
    if split.num_db == 0:
        raise ValueError(f"Dataset {dataset} has no database images.")
    if split.num_queries == 0:
        raise ValueError(f"Dataset {dataset} has no queries: nothing to evaluate or train on.")
    return split


def init_model(split, root=None, backbone="vgg16", weights=None, num_clusters=64, variant="v1",
               whitening_dim=None, image_size=None, num_images=500, per_image=100, niter=100,
               seed=43, batch_size=8, progress=True):
    """Builds a model and initialises its NetVLAD layer by k-means on `split`'s database images.

    This is the paper's "off-the-shelf NetVLAD". Returns `(model, init_stats)`.
    """
    from tf_netvlad.initialization import initialize_netvlad
    from tf_netvlad.model import build_model

    if whitening_dim is not None:
        raise ValueError("Whitening is fitted after initialisation: use `fit-whitening`.")
    model = build_model(backbone, weights=weights, num_clusters=num_clusters, variant=variant)
    stats = initialize_netvlad(
        model, split.db_paths, root=root if root is not None else split.root,
        image_size=image_size, num_images=num_images, per_image=per_image, niter=niter,
        seed=seed, batch_size=batch_size, progress=progress,
    )
    return model, stats


def evaluate_model(model, split, root=None, image_size=None, ns=None, batch_size=8,
                   json_path=None, plot_path=None, retrievals_path=None, num_examples=8,
                   top_k=5, label=None, progress=True, **protocol_options):
    """recall@N of `model` on `split`.

    `protocol_options` go to `evaluation.evaluate` (`protocol`, `query_image_size`,
    `approximate`, `approx_train_size`, `approx_nprobe`, `descriptor_dtype`, `memmap_dir`,
    `on_error`).
    Optionally writes the results as JSON, a recall@N curve PNG, and a PNG grid of the first
    `num_examples` queries with their top `top_k` retrieved images (green: within the positive
    radius, red: not; after panorama NMS for Tokyo 24/7).
    """
    import numpy as np

    from tf_netvlad import evaluation, plots

    results, ids = evaluation.evaluate(
        model, split, root=root, image_size=image_size,
        ns=ns or evaluation.DEFAULT_RECALL_NS, batch_size=batch_size, progress=progress,
        return_ids=True, **protocol_options,
    )
    results["model"] = label or model.name
    if json_path:
        evaluation.write_json(results, json_path)
    if plot_path:
        plots.plot_recall_curve(results, plot_path, labels=[results["model"]])
    if retrievals_path:
        positives = split.positives()
        shown = np.flatnonzero((ids >= 0).any(axis=1))[:num_examples]  # skips unreadable queries
        top = ids[shown, :top_k]
        top = top[:, : int(np.argmin(np.append((top >= 0).all(axis=0), False)))]  # no -1 slots
        plots.plot_retrievals(
            [split.query_paths[q] for q in shown],
            [[split.db_paths[j] for j in row] for row in top],
            [np.isin(row, positives[q]) for q, row in zip(shown, top)],
            retrievals_path, root=root if root is not None else split.root,
        )
    return results


def fit_whitening(model, paths, root=None, image_size=None, num_components=4096, max_images=10000,
                  seed=43, batch_size=8, progress=True):
    """Fits PCA-whitening on database descriptors and returns the model with it appended.

    As MATLAB `addPCA.m`: NetVLAD descriptors of at most `max_images` random database images
    (seeded), `whitening.fit_pca_whitening` (mean-centred, 1/sqrt(λ + 1e-9)), then a
    `PCAWhitening` layer (+ L2) on a copy of `model` (`model.with_whitening`). `num_components`
    must be <= min(descriptor dim, number of images − 1).
    """
    import numpy as np

    from tf_netvlad import extract
    from tf_netvlad.model import with_whitening
    from tf_netvlad.whitening import fit_pca_whitening

    if model.whitening_dim is not None:
        raise ValueError(f"Model {model.name!r} is already whitened (dim {model.whitening_dim}).")
    paths = list(paths)
    if not paths:
        raise ValueError("`paths` is empty: PCA-whitening needs database images.")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(paths), size=min(int(max_images), len(paths)), replace=False))
    desc = extract.extract_descriptors(model, [paths[i] for i in chosen], root=root, image_size=image_size,
                                       batch_size=batch_size, progress=progress)
    kernel, bias = fit_pca_whitening(desc, int(num_components))
    return with_whitening(model, kernel, bias)
