"""`tf_netvlad train`: weakly supervised training (`tf_netvlad.training.train`) from the command line.

Every `TrainConfig` field is a flag, generated from the dataclass: its type and help come from the
field, the --help line shows the paper's and the CPU recipe's value, and a flag that is not given
keeps the chosen recipe's value (`--recipe cpu|paper`).
"""

import argparse
import dataclasses
import os
import re

from tf_netvlad.cli import flags
from tf_netvlad.data.image_size import format_image_size
from tf_netvlad.defaults import (
    BACKBONE_NAMES,
    LOSS_REDUCTIONS,
    NETVLAD_VARIANTS,
    ON_BAD_IMAGE_CHOICES,
    OPTIMIZERS,
)
from tf_netvlad.training.config import CPU_RECIPE, LR_SCHEDULES, TrainConfig, flag_name

# Help for every TrainConfig field; the defaults shown come from the recipes themselves.
TRAIN_HELP = {
    "backbone": "backbone name", "weights": "backbone weights: none, imagenet or a file",
    "trainable_from": "first trainable backbone layer ('default': conv5_1 on VGG16; 'none': all)",
    "num_clusters": "NetVLAD clusters K", "variant": "NetVLAD variant v1 | v2",
    "margin": "ranking-loss margin m (squared distances)",
    "init_images": "database images sampled for the k-means init",
    "init_per_image": "local features per image for the k-means init",
    "image_size": "training image size HxW", "batch_size": "tuples per step",
    "num_positives": "positive-set size P (best positive = min in the graph)",
    "num_negatives": "mined negatives N per query", "negative_pool_size": "random negatives per query",
    "exclude_trivial_m2": "training positives must be farther than this many m² from the query "
                          "(MATLAB's dSq > 1 trivial-positive rule; none: no exclusion)",
    "violating_only": "only negatives that violated the margin when mined train (fillers masked), "
                      "re-checked in the step with fresh descriptors (MATLAB trainWeakly.m)",
    "exclude_very_hard": "semi-hard mining: skip negatives nearer than the best positive (MATLAB excludeVeryHard)",
    "keep_factor": "hardest N*keep_factor candidates are checked for margin violation",
    "cache_refresh_queries": "queries per descriptor-cache refresh (= one Keras epoch)",
    "refresh_share": "longer refresh cycles on a large database: a refresh and the validation at most "
                     "this share of a cycle's image passes (none: every --cache-refresh-queries, MATLAB)",
    "refresh_slowdown": "MATLAB schedule: also refresh at every pass end, cycles x 1/lr-decay-factor "
                        "at every LR drop",
    "cache_batch_size": "images per batch when caching descriptors",
    "passes": "passes over the training queries to train (the paper's epochs; none: --epochs or "
              "--time-limit-s decide)",
    "epochs": "at most this many refresh cycles (Keras epochs; none: no cap)",
    "optimizer": "sgd | adam", "lr": "learning rate",
    "momentum": "SGD momentum", "weight_decay": "L2 weight decay",
    "lr_decay_every": "multiply the LR by --lr-decay-factor every this many passes over the queries",
    "lr_decay_factor": "LR multiplier at each decay",
    "lr_schedule": "step (x --lr-decay-factor every --lr-decay-every passes, paper) | budget (warm-up + "
                   "cosine over the time limit or step budget, any dataset size)",
    "augment": "photometric + small geometric augmentation of each tuple's query image (MATLAB: none)",
    "augment_all_slots": "--augment changes every tuple image (query, positives, negatives), not only "
                         "the query",
    "db_queries": "the training database images also train as queries (positives: other database "
                  "images within 10 m; MATLAB: no)",
    "loss_reduction": "sum (per query) | mean_violating (÷ violating triplets in the batch, MATLAB)",
    "sparse_backward": "back-propagate only through the images that train (violating negatives, their "
                       "queries and best positives): the same gradients, faster when few violate",
    "mixed_precision": "mixed_float16 (NetVLAD, whitening and the loss stay float32)",
    "recall_ns": "validation recall@N values (must include 5)",
    "val_max_queries": "validation queries per epoch (MATLAB nTestSample)",
    "checkpoint_every_steps": "also checkpoint every this many steps (0: epoch ends only)",
    "time_limit_s": "stop cleanly after this many seconds (set-up included; at least one step)",
    "on_bad_image": "stop | skip",
    "image_cache_mb": "decode the training images once and hold them in memory (float32; uint8 for files "
                      "already at the training size) if they fit in this many MiB (0: decode the files at "
                      "every step)",
    "whiten": "fit PCA-whitening with this many dims on the best model at the end",
    "whiten_max_images": "database images used for the whitening fit", "seed": "random seed",
    "deterministic": "TensorFlow op determinism (slower)",
}

# Fields with a fixed set of values: argparse refuses any other.
TRAIN_CHOICES = {"backbone": BACKBONE_NAMES, "variant": NETVLAD_VARIANTS, "optimizer": OPTIMIZERS,
                 "lr_schedule": LR_SCHEDULES,
                 "loss_reduction": LOSS_REDUCTIONS, "on_bad_image": ON_BAD_IMAGE_CHOICES}
# Tuple fields: their converter.
TUPLE_TYPES = {"image_size": flags.image_size, "recall_ns": flags.int_list}
RECIPES = ("cpu", "paper")


def add_commands(subparsers):
    """Adds `train`."""
    p = flags.add_command(subparsers, "train", train,
                          "Weakly supervised training with hard-negative mining.")
    flags.add_dataset(p, "training split (.mat, CSV or @-folder)")
    p.add_argument("--val", help="validation split: recall@N each epoch, best model by recall@5")
    flags.add_root(p, "dataset root of the training split; " + flags.ROOT_HELP)
    flags.add_dataset_roots(p)
    p.add_argument("--val-root", help="dataset root of the validation split (detected as --root)")
    flags.add_dataset_roots(p, prefix="val-")
    p.add_argument("--out", required=True, help="run directory (init.keras, best.keras, logs, last/)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--recipe", choices=RECIPES, default="cpu",
                   help="base recipe: cpu (tiny backbone from scratch, 10 minutes on 2 cores) or paper "
                        "(MATLAB trainWeakly.m: VGG16, 30 passes, GPU); every flag below overrides one "
                        "of its numbers (docs/recipes.md)")
    p.add_argument("--multi-worker", action="store_true",
                   help="train with MultiWorkerMirroredStrategy over the TF_CONFIG cluster: run the "
                        "same command on every worker; --batch-size is the global batch "
                        "(docs/multi-worker.md)")
    p.add_argument("--communication", choices=("auto", "ring", "nccl"), default="auto",
                   help="--multi-worker collectives: ring (gRPC, CPU/GPU), nccl (NVIDIA GPUs) or auto")
    _add_config_flags(p)
    p.set_defaults(check=check_train)


def check_train(args):
    """--out and every training setting, refused before the datasets, TensorFlow or a model are
    loaded; a setting's error names its flag (`--batch-size`, not the field `batch_size`)."""
    flags.check_output(args.out, "--out", directory=True)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if hasattr(args, f.name)}
    try:
        train_config(args.recipe, overrides)
    except ValueError as err:
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        message = re.sub(r"`(\w+)`|\b(\w+)=", lambda m: _as_flag(m, fields), str(err))
        raise flags.CommandError(message) from None


def _as_flag(match, fields):
    name = match.group(1) or match.group(2)
    if name not in fields:
        return match.group(0)
    flag = flag_name(name)
    return flag if match.group(1) else flag + " "


def _add_config_flags(parser):
    """One flag per `TrainConfig` field, typed from the field; a flag not given is absent from
    the namespace, so the recipe's value stays."""
    paper = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        name, default = field.name, getattr(paper, field.name)
        flag = flag_name(name)
        text = f"{TRAIN_HELP.get(name, name)} (paper: {default}"
        text += f"; cpu: {CPU_RECIPE[name]})" if name in CPU_RECIPE else ")"
        if field.type is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=text)
        elif name == "image_size":
            flags.add_image_size(parser, help=text, default=argparse.SUPPRESS)
        else:
            convert = TUPLE_TYPES.get(name, field.type)
            if default is None or CPU_RECIPE.get(name, default) is None:
                convert = flags.optional(convert)  # "none" is a value of this setting
            parser.add_argument(flag, dest=name, type=convert, choices=TRAIN_CHOICES.get(name),
                                default=argparse.SUPPRESS, help=text)


def train_config(recipe, overrides):
    """The `TrainConfig` of `recipe` ('cpu' or 'paper') with `overrides` (field -> value)."""
    base = dict(CPU_RECIPE) if recipe == "cpu" else {}
    return dataclasses.replace(TrainConfig(), **{**base, **overrides})


def _multi_worker_strategy(communication):
    """MultiWorkerMirroredStrategy from TF_CONFIG; created before any other TensorFlow op."""
    import json

    import tensorflow as tf

    config = os.environ.get("TF_CONFIG")
    try:
        cluster = json.loads(config)["cluster"] if config else None
    except (ValueError, KeyError, TypeError):
        raise flags.CommandError(f"TF_CONFIG is not valid JSON with a 'cluster' entry: {config!r}")
    if not cluster:
        raise flags.CommandError(
            "--multi-worker needs TF_CONFIG on every worker, e.g. "
            '\'{"cluster": {"worker": ["hostA:12345", "hostB:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\' (see docs/multi-worker.md).')
    implementation = getattr(tf.distribute.experimental.CommunicationImplementation,
                             communication.upper())
    options = tf.distribute.experimental.CommunicationOptions(implementation=implementation)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def train(args):
    # every image of both splits is checked here, before the strategy, the model and the k-means
    train_split = flags.load_dataset(args.dataset, args.root, args.db_root, args.query_root)
    val_split = None
    if args.val:
        val_split = flags.load_dataset(args.val, args.val_root, args.val_db_root, args.val_query_root,
                                       prefix="val-", label="val")
    strategy = _multi_worker_strategy(args.communication) if args.multi_worker else None
    from tf_netvlad.training import train as train_lib

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if hasattr(args, f.name)}
    config = train_config(args.recipe, overrides)
    summary = train_lib.train(train_split, val_split, out_dir=args.out, config=config,
                              resume=args.resume, strategy=strategy)
    best = summary.get("best") or {}
    # the steps, not the minutes, are what a time-limited run's recall follows (docs/recipes.md)
    steps = summary.get("iterations")
    print(f"training {summary['status']}: {summary['epochs_done']} epochs"
          + (f", {steps:,} optimizer steps" if steps is not None else "")
          + f" in {summary['wall_time_s'] / 60:.1f} min")
    if best:
        print("best: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in best.items()))
    files = summary.get("files", {})
    for key, path in files.items():
        print(f"{key}: {path}")
    if files.get("best"):
        size = format_image_size(config.image_size)
        print(f"trained on {size} images; tf_netvlad evaluate reads each test image at its own size "
              f"unless given --image-size {size}")
    return 0
