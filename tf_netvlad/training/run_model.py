"""The model a training run trains: built from the config and k-means-initialised, given by the
caller, or read back from `init.keras` to resume; its training size recorded; compiled.

`prepare_model` is the one place a run's model comes from. `init.keras` (written here, by the chief
of a fresh run) and every later `.keras` of the run carry `NetVLADModel.training_image_size`, the
size `evaluate`, `index`, `localize`, `hloc` and `export` compare theirs with.
"""

import logging

import keras
import numpy as np

from tf_netvlad.data.fileio import resolve_paths
from tf_netvlad.data.image_size import format_image_size
from tf_netvlad.data.images import diagnose_image
from tf_netvlad.models.initialization import initialize_netvlad
from tf_netvlad.models.model import build_model
from tf_netvlad.models.model_files import load_model, save_model

logger = logging.getLogger(__name__)


def prepare_model(cfg, model, train_split, root, out_dir, resuming, group, progress):
    """`(compiled model, k-means statistics)` of a run.

    Args:
        cfg: the run's `TrainConfig`.
        model: the caller's `NetVLADModel` (trained as is) or None (built from `cfg` and
            k-means-initialised on `train_split`'s database).
        train_split, root: the training split and its image root (the k-means images).
        out_dir: the run directory; a fresh run's chief writes `init.keras` there.
        resuming: read the model back from `out_dir/init.keras` (the checkpoint restores its
            weights later).
        group: the multi-worker group or None; a worker other than the chief builds the model
            without initialising it (the chief's weights are broadcast).
        progress: tqdm bar for the k-means features.
    """
    chief = group is None or group.is_chief
    if resuming:
        model, stats = load_model(out_dir / "init.keras", compile=False), {}
    elif chief:
        model, stats = _initialised(cfg, model, train_split, root, progress)
    else:
        model = new_model(cfg) if model is None else model
        stats = {"note": "weights broadcast from the chief (worker 0)"}
    # saved with every .keras of the run; a resumed run written before it was recorded gets it too
    model.training_image_size = format_image_size(cfg.image_size)
    if chief and not resuming:
        save_model(model, out_dir / "init.keras")
    model.compile(optimizer=make_optimizer(cfg))
    model.set_training_options(loss_reduction=cfg.loss_reduction, weight_decay=cfg.weight_decay,
                               exclude_very_hard=cfg.exclude_very_hard and cfg.violating_only,
                               sparse_backward=cfg.sparse_backward)
    model.optimizer.build(model.trainable_variables)
    return model, stats


def make_optimizer(cfg):
    """`cfg.optimizer` at `cfg.lr` (the learning-rate callback sets the rate of every cycle)."""
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=cfg.lr, momentum=cfg.momentum)
    return keras.optimizers.Adam(learning_rate=cfg.lr)


def new_model(cfg):
    """An uninitialised `NetVLADModel` of `cfg`'s backbone, clusters, variant and margin."""
    return build_model(cfg.backbone, weights=cfg.weights, trainable_from=cfg.trainable_from,
                       num_clusters=cfg.num_clusters, variant=cfg.variant, margin=cfg.margin)


def _initialised(cfg, model, train_split, root, progress):
    """`(model, statistics)`: a new model k-means-initialised on the database, or the caller's."""
    if model is not None:
        return model, {"note": "model given by the caller; no k-means initialisation"}
    model = new_model(cfg)
    paths = list(train_split.db_paths)
    if cfg.on_bad_image == "skip":  # sample the init images here and leave out unloadable ones
        rng = np.random.default_rng(cfg.seed)
        chosen = np.sort(rng.choice(len(paths), size=min(cfg.init_images, len(paths)), replace=False))
        resolved = resolve_paths([paths[i] for i in chosen], root)
        paths = [paths[i] for i, full in zip(chosen, resolved) if diagnose_image(full) is None]
        if len(paths) < len(chosen):
            logger.warning("k-means init: skipped %d images that cannot be loaded.", len(chosen) - len(paths))
    stats = initialize_netvlad(model, paths, root=root, image_size=cfg.image_size,
                               num_images=cfg.init_images, per_image=cfg.init_per_image,
                               seed=cfg.seed, batch_size=cfg.cache_batch_size, progress=progress)
    return model, stats
