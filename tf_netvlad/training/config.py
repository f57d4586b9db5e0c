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
    TRIVIAL_POS_DIST_SQ_M2,
    WHITEN_MAX_IMAGES,
)

# "step": decay every `lr_decay_every` passes (paper); "budget": warm-up + cosine over the run's budget.
LR_SCHEDULES = ("step", "budget")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every number of the training recipe. Field defaults: the paper recipe (`--recipe paper`,
    MATLAB `trainWeakly.m` as the authors ran it on Pitts30k); `CPU_RECIPE` overrides some of them
    (`--recipe cpu`, the CLI default). docs/recipes.md says which recipe to pick.

    **Model** (used when `train(model=None)`):

    * `backbone`, `weights`, `trainable_from`: paper "vgg16", "imagenet", "default" (VGG16 conv5_3
      before ReLU, ImageNet weights, conv5_1 and above trained: MATLAB `backPropToLayer` conv5_1,
      the paper's best trade-off). CPU "tiny_s2", None, None (4 convs with GroupNormalization,
      D = 64, the first with stride 2, every layer trained from scratch: fits 2 cores at 96×128;
      a step takes 0.85× the time of "tiny"'s, whose first convolution and pooling run at full
      resolution; with 2 positives 0.65×: docs/recipes.md). `--backbone tiny_ws` (the same
      convolutions weight-standardised, no GroupNormalization) takes 0.80–0.83× `tiny_s2`'s step; in
      eight pairs of 10-minute runs it was ahead at 96×128 on the held-out towns on average, but
      gained under 20 points in one run and was behind at the files' size (docs/recipes.md,
      "`tiny_ws` against the recipe over more seeds"), so it is not the recipe's.
    * `num_clusters`, `variant`: paper K = 64, "v1" (the official models); CPU K = 16 (D·K = 1024).
    * `margin`: m on squared distances of unit descriptors. Paper 0.1 (MATLAB `margin`); CPU 0.3
      (a backbone trained from scratch with semi-hard mining: with 0.1 few mined triplets still
      violate late in a run; 0.3 gained 1 to 7.5 points of test recall@1 in six of seven paired
      runs on the held-out towns and lost 2.5 in the seventh, docs/recipes.md).
    * `init_images` × `init_per_image`: k-means features; paper 500 × 100 = 50,000 (MATLAB
      `getClusters.m`); CPU 300 × 50 (a small database and K = 16).

    **Tuples and mining** (`tf_netvlad.training.mining`, `tuple_mining`):

    * `image_size` (H, W): paper 480×640 (Pittsburgh / Tokyo photos, MATLAB trains at full
      resolution); CPU 96×128 (the demo's native size: nothing is resized).
    * `batch_size`: 4 tuples per step (MATLAB `batchSize`), both recipes.
    * `num_positives` P: paper 1 (MATLAB: the nearest potential positive under the cached
      descriptors); CPU 2 (the min over 2 is taken in the graph with fresh descriptors, so a stale
      cache picks a wrong best positive less often; 4 cost 25 % more images per step, and `tiny`
      with 4 reached less recall in 10 minutes than `tiny_s2` with 2: docs/recipes.md).
    * `exclude_trivial_m2`: training positives must be farther than this many m² from the query
      (the `dSq > 1` rule of MATLAB `dbBase.nontrivialPosQ`, also in `dbTokyoTimeMachine`: a
      database image within 1 m is the query's own panorama or a duplicate, nothing to learn
      from). Paper 1.0; CPU None (no exclusion, as tuned: demo queries are separate renders, never
      copies of database images; 46 of the 1,639 training positives of the 0.1-scale demo lie
      within 1 m and no query loses all of them). `PlaceSplit.non_trivial_positives`.
    * `num_negatives` N: paper 10 (MATLAB `nNegCap` = `nNegCache` = 10); CPU 5.
    * `negative_pool_size`: random negatives (> 25 m) per query and refresh; paper 1000 (MATLAB
      `nNegChoice`); CPU 300 (a 700-image database).
    * `keep_factor`: the `keep_factor · N` nearest candidates are checked for margin violation
      (MATLAB's "10x is hacky but fine"), 10 in both.
    * `exclude_very_hard`: semi-hard mining, MATLAB `excludeVeryHard`: negatives nearer than the
      best positive are not used. Paper False (MATLAB's default); CPU True (a backbone trained from
      scratch collapses under hardest-negative mining: test recall@1 0.08).
    * `violating_only`: which negatives train, as `trainWeakly.m`: only those that violated the
      margin when mined (slots filled up with non-violating "filler" negatives, which MATLAB never
      loads, are masked in the loss), re-checked in the step with fresh descriptors (a negative
      trains iff d²(q, n) < d²(q, p*) + m now and, with `exclude_very_hard`, d²(q, n) >= d²(q, p*)
      now). Paper True; CPU False (as tuned: every slot trains whenever it violates with the fresh
      descriptors, fillers and very hard ones included).

    **Cache refresh** (`tf_netvlad.training.refresh_schedule`):

    * `cache_refresh_queries`: queries per refresh of the descriptor cache = one Keras epoch
      (MATLAB `compFeatsFrequency` = 1000), both recipes.
    * `refresh_share`: None, or cycles longer than `cache_refresh_queries` on a large database,
      so that a refresh (one forward pass over the database and the cycle's own query images) and
      the validation that ends the cycle are at most this share of a cycle's image passes (training
      counted as 3 passes per tuple image: `refresh_schedule.share_cycle_size`). Paper None
      (MATLAB refreshes every 1000 queries whatever the database's size). CPU 0.25: the same
      cycles as before up to about 7,000 database and validation images (the demo and the held-out
      towns: refreshes 6-9 % of a cycle); on held-out datasets of 20,000 and 15,000 database
      images, where refreshing every 1000 queries took about 40 % of a 10-minute run (test
      recall@1 27.0 % and 34.5 %), longer cycles reached 32.0-36.0 % and 37.5-42.0 %
      (docs/recipes.md, "A large database").
    * `refresh_slowdown`: MATLAB's schedule: also refresh at every pass end, and the refresh
      interval grows by 1/`lr_decay_factor` at every LR drop. Paper True; CPU False.
    * `cache_batch_size`: images per model call when computing caches, the k-means init's features
      and validation. Paper 8 (VGG16 at 480x640); CPU 64 (`tiny_s2` at 96x128: a refresh's
      extraction 1.4x faster than with 8, so more of the time limit trains; docs/recipes.md).

    **Loss and optimisation** (`tf_netvlad.models.losses`):

    * `loss_reduction`: paper "mean_violating": the hinge sum of the batch ÷ the number of
      violating triplets in it, MATLAB's `thisBatchSize = sum(numTriplets)`, so each step has
      MATLAB's size against the same weight decay ("sum", per query, is up to N = 10 times larger).
      CPU "sum" (as tuned; Adam divides out the gradient's overall scale and there is no weight
      decay, the reason for MATLAB's normaliser).
    * `sparse_backward`: the step back-propagates only through the images whose descriptor has a
      gradient (the negatives with a positive hinge, their queries and best positives), found by
      a first pass over every image outside the gradient tape; the same loss and gradients
      (`NetVLADModel.set_training_options`). It pays off while less than about 60 % of the
      negatives violate (`models.model.SPARSE_MAX_VIOLATING`; above, the step runs the full
      pass). Paper off (not measured there: with VGG16 frozen below conv5 the backward pass is short,
      and the extra forward pass is expected to cost more than it saves); CPU on (late in a run 15-45 % of its negatives violate; benchmarks/RESULTS.md).
      Refused for backbones with batch normalisation or dropout.
    * `optimizer`, `lr`, `momentum`, `weight_decay`: paper SGD, 1e-3, 0.9, 1e-3 (MATLAB `demo.m`
      for Pitts30k; use lr 1e-4 for Pitts250k and TokyoTM as `demo.m` does; weight decay coupled
      to the kernels); CPU Adam 3e-4, no weight decay (1e-3 was worse than the k-means init).
    * `lr_schedule`: "step": `lr · lr_decay_factor ** floor(passes done / lr_decay_every)`, the
      paper recipe (5 passes, ×0.5, MATLAB `lrDownFreq` 5, `lrDownFactor` 2). "budget"
      (`tf_netvlad.training.budget_schedule`), the CPU recipe: a 5 % linear warm-up, then a cosine
      to 2 % of `lr` over the run's budget (the time limit, or the steps `passes` / `epochs` allow),
      so a time-limited run keeps a useful rate to its end whatever the dataset's size (a
      pass-based decay every 1.5 passes, tuned on the demo's 2,500 queries, is at 1e-6 a third of
      the way through a 10-minute run on 400 queries, and never decays on 100,000). A resumed
      time-limited run restarts the schedule over its new limit.
    * `augment`: photometric and small geometric changes of each tuple's query image, drawn per
      image and per refresh cycle (`tf_netvlad.training.augment`); paper off (MATLAB has none), CPU
      on. In 10-minute CPU runs on the held-out configurations, two pairs run back to back on the
      same host (docs/recipes.md, runs V-Y), changing the query only raised test recall@1 on
      "small" from 20.0 to 24.5 % (@5 36.5 -> 42.0 %) and on "other" from 27.5 to 30.0 % (@5 45.0 ->
      52.5 %). Changing every image of the tuple (`augment_all_slots`) cost recall in three
      measurements (on "other" 33.5 -> 29.0 % @1, 54.5 -> 43.5 % @5; a tie on "small").
    * `augment_all_slots`: with `augment`, also the positives and negatives change (each its own
      draw); off in both recipes.
    * `db_queries`: the training split's database images also train as queries
      (`PlaceSplit.with_database_queries`: positives the other database images within 10 m, never
      the image itself; negatives beyond 25 m). Positions are the only labels, and the database has
      them too: more tuples per pass, teaching viewpoint change along the street. Paper off (its
      queries are the dataset's queries only); CPU on (held-out "small": test recall@1 20.0 % ->
      23.0 % with augmentation on in both runs).
    * `mixed_precision`: mixed_float16 (NetVLAD, whitening and the loss stay float32); off.

    **Length** (a run stops at the first bound reached; at least one must be set):

    * `passes`: passes over the training queries (those with a positive), the paper's epochs:
      paper 30 (MATLAB `nEpoch`); CPU None (the time limit decides). With `refresh_slowdown` the
      refresh cycles end at pass ends, so the run is exactly `passes` passes; without it the last
      cycle may run up to one cycle beyond (whole cycles).
    * `epochs`: at most this many refresh cycles (Keras epochs); paper None (no cap: `passes`
      decides), CPU 100.
    * `time_limit_s`: stop cleanly after this many seconds, counted from the call (k-means init and
      the first validation included); checked after every step, so a run always trains at least
      one step: when the set-up alone used the limit up, it trains one step, says so in a warning
      and stops (status "time_limit"). Paper None; CPU 600.

    **Validation and run control**: `recall_ns` (must include 5: `best.keras` is chosen by val
    recall@5 as MATLAB `pickBestNet`), `val_max_queries` (MATLAB `nTestSample` = 1000 random
    validation queries), `checkpoint_every_steps` (also checkpoint every k steps within an epoch;
    0 = epoch ends only), `on_bad_image` ("stop" | "skip"), `image_cache_mb` (both recipes 2048:
    the training images are decoded once and held in memory as float32, `data.decoded.DecodedImages`,
    when they fit in this many MiB, instead of being decoded at every step and refresh, or as uint8
    in a quarter of that when every file is already at `image_size` (exact); 0 = never; a split too
    large for it reads the files, with a log line saying so), `whiten` (None or the number of
    PCA-whitening components fitted on the best model at the end), `whiten_max_images`, `seed`
    (MATLAB seeds with 43), `deterministic` (TF op determinism, slower).
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
    exclude_trivial_m2: float = TRIVIAL_POS_DIST_SQ_M2
    num_negatives: int = 10
    negative_pool_size: int = 1000
    keep_factor: int = 10
    exclude_very_hard: bool = False
    violating_only: bool = True
    cache_refresh_queries: int = 1000
    refresh_share: float = None
    refresh_slowdown: bool = True
    cache_batch_size: int = EXTRACT_BATCH_SIZE
    passes: float = 30.0
    epochs: int = None
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-3
    lr_decay_every: float = 5.0
    lr_decay_factor: float = 0.5
    lr_schedule: str = "step"
    augment: bool = False
    augment_all_slots: bool = False
    db_queries: bool = False
    loss_reduction: str = "mean_violating"
    sparse_backward: bool = False
    mixed_precision: bool = False
    recall_ns: tuple = (1, 5, 10)
    val_max_queries: int = 1000
    checkpoint_every_steps: int = 50
    time_limit_s: float = None
    on_bad_image: str = "stop"
    image_cache_mb: int = 2048
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
        if self.epochs is not None and (isinstance(self.epochs, bool)
                                        or not isinstance(self.epochs, (int, np.integer)) or self.epochs < 1):
            raise ValueError(f"`epochs` (refresh cycles) must be an int >= 1 or None. Received: "
                             f"epochs={self.epochs!r}")
        for name in ("passes", "time_limit_s"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float, np.number)) and value > 0
                                          and np.isfinite(value)):
                raise ValueError(f"`{name}` must be a number > 0 or None. Received: {name}={value!r}")
        if self.passes is None and self.epochs is None and self.time_limit_s is None:
            raise ValueError("The run has no length: set `passes` (passes over the training queries), "
                             "`epochs` (refresh cycles) or `time_limit_s` (seconds).")
        if self.exclude_trivial_m2 is not None and not (
                isinstance(self.exclude_trivial_m2, (int, float, np.number)) and self.exclude_trivial_m2 >= 0
                and np.isfinite(self.exclude_trivial_m2)):
            raise ValueError("`exclude_trivial_m2` must be a number >= 0 (m²) or None. Received: "
                             f"exclude_trivial_m2={self.exclude_trivial_m2!r}")
        for name in ("lr", "lr_decay_every", "lr_decay_factor", "margin"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0. Received: {name}={getattr(self, name)!r}")
        if not (0 <= self.momentum < 1 and self.weight_decay >= 0):
            raise ValueError(f"`momentum` must be in [0, 1) and `weight_decay` >= 0. Received: "
                             f"momentum={self.momentum!r}, weight_decay={self.weight_decay!r}")
        choices = {"optimizer": OPTIMIZERS, "on_bad_image": ON_BAD_IMAGE_CHOICES, "lr_schedule": LR_SCHEDULES,
                   "loss_reduction": LOSS_REDUCTIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}. Received: {getattr(self, name)!r}")
        for name in ("checkpoint_every_steps", "image_cache_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"`{name}` must be an int >= 0. Received: {name}={value!r}")
        if self.refresh_share is not None and not (isinstance(self.refresh_share, (int, float, np.number))
                                                   and 0 < self.refresh_share < 1):
            raise ValueError(f"`refresh_share` must be a number in (0, 1) or None. Received: "
                             f"refresh_share={self.refresh_share!r}")
        if "recall@5" not in {f"recall@{n}" for n in self.recall_ns}:
            raise ValueError(f"`recall_ns` must include 5 (model selection). Received: {self.recall_ns!r}")


# Fields that define the training state; a resume with other values is refused. (`passes`,
# `epochs` and `time_limit_s` are the run's length: a resume may extend it. `refresh_share` is
# checked by the cycle size it gives on the run's split, `checkpointing.check_cycle_size`: where
# it changes nothing, a run saved before it existed resumes.)
RESUME_KEYS = ("backbone", "num_clusters", "variant", "margin", "image_size", "batch_size",
               "num_positives", "exclude_trivial_m2", "num_negatives", "negative_pool_size", "keep_factor",
               "exclude_very_hard", "violating_only", "cache_refresh_queries", "refresh_slowdown",
               "optimizer", "loss_reduction", "mixed_precision", "seed", "db_queries")
# Keys added after runs were already saved: a checkpoint without one was made with this value
# (before these options existed every positive within 10 m trained, every negative slot trained,
# and the cache refresh interval was fixed).
RESUME_DEFAULTS = {"refresh_slowdown": False, "exclude_trivial_m2": None, "violating_only": False,
                   "db_queries": False}

# A from-scratch CPU recipe for 2 CPU cores, tuned on the demo data (96x128 images, 700 db / 2500
# queries in the training town) and then checked on the held-out configurations "small" and
# "other" (docs/recipes.md, "The CPU recipe on data it was not tuned on"). 10 minutes on a 2-core AMD
# EPYC, test recall@1 (k-means init -> trained) at the training size, 96x128: `tf_netvlad demo`
# 0.260 -> 0.600 (0.713 in an earlier run); "small" 0.095 -> 0.340 (0.280, 0.325 earlier), "other"
# 0.060 -> 0.345 (0.360 earlier) with `tf_netvlad train`; the images decoded once, `image_cache_mb`,
# give 22 cycles instead of 15. With `augment` (query only), on a slow afternoon (14-15 cycles):
# demo 0.260 -> 0.607, "small" 0.095 -> 0.295, "other" 0.060 -> 0.325 (0.580, 0.240, 0.310 without
# it, the same hour); at the files' own size (180x240, 120x160; `tf_netvlad evaluate`'s default)
# "small" 0.130 -> 0.245 and "other" 0.075 -> 0.300.
# Runs spread by up to 0.11: a time-limited run follows the host's speed. Needs:
# * a `tiny` backbone with GroupNormalization: without it, Adam at 3e-4 collapses the descriptors
#   (all d² -> 0.1, test recall@1 0.08), and at 1e-4 it barely learns (0.25 -> 0.26 in 3 min);
#   `tiny_s2` (stride-2 first convolution) with 2 positives per tuple takes 0.65x the step time of
#   `tiny` with 4, for more recall in 10 minutes (on "small" 0.230 -> 0.310);
# * semi-hard mining (`exclude_very_hard`): hardest-negative mining from scratch collapses;
# * Adam at 3e-4 (1e-3 is worse than the k-means init, 6e-4 worse than 3e-4 on "small"); the best of
#   the positives is taken in the graph;
# * the "budget" LR schedule (warm-up, cosine over the time limit): the pass-based halving every 1.5
#   passes, tuned on the demo's 2,500 queries, is at 1e-6 a third of the way through a 10-minute run
#   on 400 queries (issue 11);
# * `db_queries`: the database images also train as queries. On "small" (400 queries, `tiny`), 10
#   minutes: test recall@1 0.130 (init) -> 0.200 (budget + augment), 0.230 (+ db_queries), 0.260
#   (budget + db_queries, no augmentation).
# * `augment` on the query images only (2026-12-01, runs V-Y of docs/recipes.md): test recall@1 on
#   "small" 0.200 -> 0.245, on "other" 0.275 -> 0.300 at the files' size (0.240 -> 0.295 and
#   0.310 -> 0.325 at 96x128), each against the recipe without it run back to back on the same
#   host. Augmenting every tuple image did not help in three measurements (in 10 minutes the runs
#   are short of steps; "other" 0.545 -> 0.435 @5).
# * `margin` 0.3 instead of the paper's 0.1 (2026-12-02, docs/recipes.md, "A larger margin"): with
#   0.1 only 11-13 % of the mined triplets still violated late in a run; with 0.3, 20-24 %. Test
#   recall@1 at 96x128 against 0.1 with the same seed: "small" 0.295 -> 0.320 (seed 43), 0.275 ->
#   0.310 (1), 0.280 -> 0.290 (2), 0.265 -> 0.340 (3); "other" 0.325 -> 0.335 (43), 0.280 -> 0.300
#   (1); at the files' size +1.5 to +9.5 points on the same runs; `tf_netvlad demo` 0.607 -> 0.607
#   (@5 0.820 -> 0.833). A seventh pair, run later on a slower hour, is behind: "other" seed 2
#   0.340 -> 0.315 (3,437 and 3,000 steps); the same seed run twice can end 0.06 apart.
# * `cache_batch_size` 64 instead of 8 (2026-12-02, docs/recipes.md, "64 images per extraction
#   call"): each refresh's extraction 1.4x faster; 3-7 % more steps in 10 minutes, the same tuples.
# * `sparse_backward` (2026-12-03): the same gradients, only the images that train back-propagate.
# The paper recipe's MATLAB rules that were not part of the tuning stay off here (`loss_reduction`
# "sum", `violating_only` False, `exclude_trivial_m2` None): see `TrainConfig`.
CPU_RECIPE = dict(backbone="tiny_s2", weights=None, trainable_from=None, num_clusters=16,
                  image_size=DEMO_IMAGE_SIZE, init_images=300, init_per_image=50, batch_size=4,
                  num_positives=2, exclude_trivial_m2=None, num_negatives=5, negative_pool_size=300,
                  exclude_very_hard=True, violating_only=False, cache_refresh_queries=1000,
                  refresh_share=0.25, refresh_slowdown=False, optimizer="adam", lr=3e-4, weight_decay=0.0,
                  lr_decay_every=1.5, lr_decay_factor=0.5, lr_schedule="budget", augment=True, db_queries=True,
                  loss_reduction="sum", margin=0.3, cache_batch_size=64, sparse_backward=True,
                  passes=None, epochs=100, time_limit_s=600)


def flag_name(field):
    """The `tf_netvlad train` flag of `TrainConfig` field `field` ("batch_size" -> "--batch-size")."""
    return "--" + field.replace("_", "-")


def config_json(cfg):
    """`cfg` as a JSON-ready dict (the form saved in checkpoints and `summary.json`)."""
    return jsonable(dataclasses.asdict(cfg))
