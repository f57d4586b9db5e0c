"""`TrainConfig`: every number of the training recipe, validated; `CPU_RECIPE`; `RESUME_KEYS`.

`TrainConfig`'s field defaults are the recipe's one home: the training modules' own defaults
(mining, tuples, refresh schedule) read them (`TrainConfig.num_negatives`, ...), and the values
shared with other levels come from `tf_netvlad.defaults`. `image_size` is parsed here, at the
boundary, into the `(H, W)` tuple the training pipeline uses. Imports only the standard library,
NumPy and `data.image_size`, so the CLI reads its defaults without TensorFlow.
"""

import dataclasses

import numpy as np

from tf_netvlad.data.fileio import jsonable
from tf_netvlad.data.image_size import parse_image_size
from tf_netvlad.defaults import (
    DEFAULT_VARIANT,
    DEMO_IMAGE_SIZE,
    EXTRACT_BATCH_SIZE,
    INIT_IMAGES,
    INIT_PER_IMAGE,
    LOSS_REDUCTIONS,
    MARGIN,
    NUM_CLUSTERS,
    ON_BAD_IMAGE_CHOICES,
    OPTIMIZERS,
    PAPER_IMAGE_SIZE,
    SEED,
    WHITEN_MAX_IMAGES,
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every number of the training recipe (defaults: the paper/MATLAB recipe; see `CPU_RECIPE`).

    Model (used when `train(model=None)`): `backbone`, `weights` ("imagenet", None or a file),
    `trainable_from` ("default" = conv5_1 upward for VGG16), `num_clusters`, `variant`, `margin`,
    and the k-means initialisation `init_images` × `init_per_image` local features.
    Tuples and mining: `image_size` (H, W), `batch_size` tuples per step, `num_positives` P (the
    positive set, min taken in the graph), `num_negatives` N, `negative_pool_size`, `keep_factor`, `exclude_very_hard` (semi-hard mining),
    `cache_refresh_queries` (one Keras epoch), `refresh_slowdown` (MATLAB's schedule: the cache is
    also refreshed at every pass end and the refresh interval grows by 1/`lr_decay_factor` at every
    LR drop; see `tf_netvlad.training.refresh_schedule`), `cache_batch_size` (images per cache batch).
    Optimisation: `epochs` (refresh cycles), `optimizer` ("sgd" | "adam"), `lr`, `momentum`,
    `weight_decay` (coupled L2), `lr_decay_every` (passes over the queries), `lr_decay_factor`,
    `loss_reduction` ("sum" | "mean_violating"), `mixed_precision`.
    Validation and run control: `recall_ns`, `val_max_queries` (MATLAB `nTestSample`),
    `checkpoint_every_steps` (also checkpoint every k steps within an epoch; 0 = epoch ends only), `time_limit_s`, `on_bad_image`
    ("stop" | "skip"), `whiten` (None or number of PCA-whitening components fitted at the end),
    `whiten_max_images`, `seed`, `deterministic` (TF op determinism).
    """

    backbone: str = "vgg16"
    weights: str = "imagenet"
    trainable_from: str = "default"
    num_clusters: int = NUM_CLUSTERS
    variant: str = DEFAULT_VARIANT
    margin: float = MARGIN
    init_images: int = INIT_IMAGES
    init_per_image: int = INIT_PER_IMAGE
    image_size: tuple = PAPER_IMAGE_SIZE
    batch_size: int = 4
    num_positives: int = 1
    num_negatives: int = 10
    negative_pool_size: int = 1000
    keep_factor: int = 10
    exclude_very_hard: bool = False
    cache_refresh_queries: int = 1000
    refresh_slowdown: bool = True
    cache_batch_size: int = EXTRACT_BATCH_SIZE
    epochs: int = 30
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-3
    lr_decay_every: float = 5.0
    lr_decay_factor: float = 0.5
    loss_reduction: str = "sum"
    mixed_precision: bool = False
    recall_ns: tuple = (1, 5, 10)
    val_max_queries: int = 1000
    checkpoint_every_steps: int = 50
    time_limit_s: float = None
    on_bad_image: str = "stop"
    whiten: int = None
    whiten_max_images: int = WHITEN_MAX_IMAGES
    seed: int = SEED
    deterministic: bool = False

    def __post_init__(self):
        size = parse_image_size(self.image_size)
        if not isinstance(size, tuple):
            raise ValueError(f"`image_size` must be (H, W) for training. Received: {self.image_size!r}")
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "recall_ns", tuple(int(n) for n in self.recall_ns))
        positive_ints = ("num_clusters", "init_images", "init_per_image", "batch_size", "num_positives",
                         "num_negatives", "negative_pool_size", "keep_factor", "cache_refresh_queries",
                         "cache_batch_size", "whiten_max_images")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1. Received: {name}={value!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, np.integer)) or self.epochs < 0:
            raise ValueError(f"`epochs` must be an int >= 0. Received: epochs={self.epochs!r}")
        for name in ("lr", "lr_decay_every", "lr_decay_factor", "margin"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0. Received: {name}={getattr(self, name)!r}")
        if not (0 <= self.momentum < 1 and self.weight_decay >= 0):
            raise ValueError(f"`momentum` must be in [0, 1) and `weight_decay` >= 0. Received: "
                             f"momentum={self.momentum!r}, weight_decay={self.weight_decay!r}")
        choices = {"optimizer": OPTIMIZERS, "on_bad_image": ON_BAD_IMAGE_CHOICES,
                   "loss_reduction": LOSS_REDUCTIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}. Received: {getattr(self, name)!r}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(f"`time_limit_s` must be > 0 or None. Received: {self.time_limit_s!r}")
        if self.checkpoint_every_steps < 0:
            raise ValueError(f"`checkpoint_every_steps` must be >= 0. Received: {self.checkpoint_every_steps!r}")
        if "recall@5" not in {f"recall@{n}" for n in self.recall_ns}:
            raise ValueError(f"`recall_ns` must include 5 (model selection). Received: {self.recall_ns!r}")


# Fields that define the training state; a resume with other values is refused.
RESUME_KEYS = ("backbone", "num_clusters", "variant", "margin", "image_size", "batch_size",
               "num_positives", "num_negatives", "negative_pool_size", "keep_factor", "exclude_very_hard",
               "cache_refresh_queries", "refresh_slowdown", "optimizer", "loss_reduction",
               "mixed_precision", "seed")
# Keys added after runs were already saved: a checkpoint without one was made with this value.
RESUME_DEFAULTS = {"refresh_slowdown": False}

# A from-scratch CPU recipe for the demo data (96x128 images, 700 db / 2500 queries in the training
# town) and 2 CPU cores. `tf_netvlad demo` (10 min, 16-20 epochs): test recall@1/5/10/20 0.247/0.453/
# 0.607/0.727 (k-means init) -> 0.613/0.833/0.913/0.960 (later runs: 0.600/0.820/0.933/0.960,
# 0.607/0.827/0.880/0.947). Needs:
# * the `tiny` backbone with GroupNormalization: without it, Adam at 3e-4 collapses the descriptors
#   (all d² -> 0.1, test recall@1 0.08), and at 1e-4 it barely learns (0.25 -> 0.26 in 3 min);
# * semi-hard mining (`exclude_very_hard`): hardest-negative mining from scratch collapses;
# * Adam at 3e-4 (1e-3 is worse than the k-means init), halved every 1.5 passes over the queries
#   so that the last epochs stop oscillating; 4 positives per query (the best is taken in the graph).
CPU_RECIPE = dict(backbone="tiny", weights=None, trainable_from=None, num_clusters=16,
                  image_size=DEMO_IMAGE_SIZE, init_images=300, init_per_image=50, batch_size=4,
                  num_positives=4, num_negatives=5, negative_pool_size=300, exclude_very_hard=True,
                  cache_refresh_queries=1000, refresh_slowdown=False, optimizer="adam", lr=3e-4,
                  weight_decay=0.0, lr_decay_every=1.5, lr_decay_factor=0.5, epochs=100, time_limit_s=600)


def config_json(cfg):
    """`cfg` as a JSON-ready dict (the form saved in checkpoints and `summary.json`)."""
    return jsonable(dataclasses.asdict(cfg))
