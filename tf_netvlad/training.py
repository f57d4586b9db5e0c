"""Weakly supervised NetVLAD training: `train(...)`, its callbacks, checkpoints and resume.

A Keras epoch is one **refresh cycle**: `cache_refresh_queries` training queries (default 1000,
all queries if fewer) whose descriptor cache is refreshed and whose tuples are mined at the start
of the epoch (`mining.MiningCallback`). `epochs` therefore counts refresh cycles; the learning-rate
schedule is expressed in *passes over the training queries* (the paper's epochs), so "halve the LR
every 5 epochs" holds whatever the refresh rate: at cycle e the LR is
`lr * lr_decay_factor ** floor(e * cycle_size / (num_queries * lr_decay_every))`.
(Paper recipe on Pitts30k, 7,320 queries: 30 paper epochs = `epochs=220` cycles of 1000.)

Files written into `out_dir`:

* `init.keras`: the k-means-initialised model before any training step.
* `best.keras`: best model by validation recall@5 (ties broken by recall@1), or the final model
  when there is no validation split.
* `last` -> `checkpoints/ckpt-EEEE-SSSSSS/`: the latest checkpoint (model weights, optimizer state,
  epoch and step, tuple rows of the current cycle, negative memory, RNG states, config). It is
  written into a temp directory, renamed, and `last` (a symlink) is replaced atomically, so a
  killed run always leaves a complete checkpoint. Written at every epoch end, every
  `checkpoint_every_steps` steps within an epoch, and when the time limit stops a run.
* `logs/train.csv` (CSVLogger, appended on resume), `logs/tensorboard/`, `summary.json`.

Resume (`resume=True`) continues from `last` exactly where it was written: weights, optimizer
slots and iteration counter, epoch, position inside the epoch (the saved tuple rows are reused,
so no re-mining happens), negative memory, best score and RNG states. A run whose configuration
differs in a field that changes the training state (`RESUME_KEYS`) or whose training split differs
is refused with a clear error.
"""

import dataclasses
import hashlib
import json
import logging
import math
import os
import pickle
import random
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tf_netvlad import data, distributed, evaluation, losses, mining, places, tuples
from tf_netvlad.initialization import initialize_netvlad
from tf_netvlad.model import build_model, load_model
from tf_netvlad.workflows import fit_whitening, save_model

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every number of the training recipe (defaults: the paper/MATLAB recipe; see `CPU_RECIPE`).

    Model (used when `train(model=None)`): `backbone`, `weights` ("imagenet", None or a file),
    `trainable_from` ("default" = conv5_1 upward for VGG16), `num_clusters`, `variant`, `margin`,
    and the k-means initialisation `init_images` × `init_per_image` local features.
    Tuples and mining: `image_size` (H, W), `batch_size` tuples per step, `num_positives` P (the
    positive set, min taken in the graph), `num_negatives` N, `negative_pool_size`, `keep_factor`, `exclude_very_hard` (semi-hard mining),
    `cache_refresh_queries` (one Keras epoch), `cache_batch_size` (images per cache batch).
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
    num_clusters: int = 64
    variant: str = "v1"
    margin: float = 0.1
    init_images: int = 500
    init_per_image: int = 100
    image_size: tuple = (480, 640)
    batch_size: int = 4
    num_positives: int = 1
    num_negatives: int = 10
    negative_pool_size: int = 1000
    keep_factor: int = 10
    exclude_very_hard: bool = False
    cache_refresh_queries: int = 1000
    cache_batch_size: int = 8
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
    whiten_max_images: int = 10000
    seed: int = 43
    deterministic: bool = False

    def __post_init__(self):
        size = data.parse_image_size(self.image_size)
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
        losses.check_reduction(self.loss_reduction)
        choices = {"optimizer": ("sgd", "adam"), "on_bad_image": tuples.ON_BAD_IMAGE}
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
               "cache_refresh_queries", "optimizer", "loss_reduction", "mixed_precision", "seed")

# A from-scratch CPU recipe for the demo data (96x128 images, 700 db / 2500 queries in the training
# town) and 2 CPU cores. `tf_netvlad demo` (10 min, 16 epochs): test recall@1/5/10/20 0.247/0.453/
# 0.607/0.727 (k-means init) -> 0.613/0.833/0.913/0.960 (a rerun: 0.600/0.820/0.933/0.960). Needs:
# * the `tiny` backbone with GroupNormalization: without it, Adam at 3e-4 collapses the descriptors
#   (all d² -> 0.1, test recall@1 0.08), and at 1e-4 it barely learns (0.25 -> 0.26 in 3 min);
# * semi-hard mining (`exclude_very_hard`): hardest-negative mining from scratch collapses;
# * Adam at 3e-4 (1e-3 is worse than the k-means init), halved every 1.5 passes over the queries
#   so that the last epochs stop oscillating; 4 positives per query (the best is taken in the graph).
CPU_RECIPE = dict(backbone="tiny", weights=None, trainable_from=None, num_clusters=16,
                  image_size=(96, 128), init_images=300, init_per_image=50, batch_size=4,
                  num_positives=4, num_negatives=5, negative_pool_size=300, exclude_very_hard=True,
                  cache_refresh_queries=1000, optimizer="adam", lr=3e-4, weight_decay=0.0,
                  lr_decay_every=1.5, lr_decay_factor=0.5, epochs=100, time_limit_s=600)


# --------------------------------------------------------------------------- atomic files


def split_fingerprint(split):
    """A short hash of a split's image lists and positions (resume compatibility check)."""
    digest = hashlib.sha256()
    for paths in (split.db_paths, split.query_paths):
        digest.update("\n".join(paths).encode())
    digest.update(np.ascontiguousarray(split.db_utm).tobytes())
    digest.update(np.ascontiguousarray(split.query_utm).tobytes())
    return digest.hexdigest()[:16]


class Checkpointer:
    """Writes and reads `out_dir/last` checkpoints atomically (temp dir + rename + symlink swap)."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.dir = self.out_dir / "checkpoints"
        self.last = self.out_dir / "last"

    def exists(self):
        return (self.last / "state.json").is_file()

    def save(self, model, state, mining_state):
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"ckpt-{state['epoch']:04d}-{state['step']:06d}"
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.dir))
        try:
            model.save_weights(tmp / "model.weights.h5")
            opt_vars = model.optimizer.variables
            np.savez(tmp / "optimizer.npz", **{f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(opt_vars)})
            np.savez(tmp / "mining.npz", **mining_state)
            rng = {"numpy": np.random.get_state(), "python": random.getstate(),
                   "tf": tf.random.get_global_generator().state.numpy()}
            with open(tmp / "rng.pkl", "wb") as handle:
                pickle.dump(rng, handle)
            evaluation.write_json(state, tmp / "state.json")
            final = self.dir / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        link = self.out_dir / f".last.tmp-{os.getpid()}"
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(os.path.join("checkpoints", name), link)
        os.replace(link, self.last)
        for old in self.dir.glob("ckpt-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def load_state(self):
        with open(self.last / "state.json") as handle:
            return json.load(handle)

    def restore(self, model):
        """Loads weights, optimizer slots and RNG states; returns `(state, mining_state)`."""
        state = self.load_state()
        model.load_weights(self.last / "model.weights.h5")
        saved = np.load(self.last / "optimizer.npz")
        opt_vars = model.optimizer.variables
        if len(saved.files) != len(opt_vars):
            raise ValueError(
                f"Checkpoint {self.last} has {len(saved.files)} optimizer variables, this run's "
                f"optimizer has {len(opt_vars)}: the optimizer or the trainable layers differ."
            )
        for i, var in enumerate(opt_vars):
            value = saved[f"v{i:05d}"]
            if tuple(value.shape) != tuple(var.shape):
                raise ValueError(f"Optimizer variable {var.path} has shape {tuple(var.shape)} but the "
                                 f"checkpoint holds {value.shape}: incompatible model.")
            var.assign(value)
        with open(self.last / "rng.pkl", "rb") as handle:
            rng = pickle.load(handle)
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        tf.random.get_global_generator().reset(rng["tf"])
        mining_state = dict(np.load(self.last / "mining.npz"))
        return state, mining_state


# --------------------------------------------------------------------------- callbacks


class RunControl(keras.callbacks.Callback):
    """Counts steps, stops on a non-finite loss or when the time limit is over (after the step)."""

    def __init__(self, deadline=None, group=None):
        super().__init__()
        self.deadline = deadline
        self.group = group  # multi-worker: the workers agree on the time limit (any worker's clock)
        self.epoch = None
        self.step = 0
        self.start_step = 0  # steps already done in the resumed epoch
        self.nan_at = None
        self.time_stop = False
        self.partial_epoch = False

    def time_over(self):
        if self.deadline is None:
            return False
        over = time.monotonic() >= self.deadline
        return over if self.group is None else self.group.any(over)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.step, self.start_step = self.start_step, 0
        self.partial_epoch = False

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        loss = None if logs is None else logs.get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            self.nan_at = (self.epoch, self.step)
            self.model.stop_training = True
            self.partial_epoch = True
        elif self.time_over():
            self.time_stop = True
            self.model.stop_training = True
            self.partial_epoch = True


class LearningRateSchedule(keras.callbacks.Callback):
    """Step decay in passes over the training queries (paper: ×0.5 every 5 epochs)."""

    def __init__(self, lr, factor, every_passes, cycle_size, num_queries):
        super().__init__()
        self.lr, self.factor, self.every = lr, factor, every_passes
        self.cycle_size, self.num_queries = cycle_size, num_queries

    def value(self, epoch):
        drops = math.floor(epoch * self.cycle_size / (self.num_queries * self.every) + 1e-9)
        return self.lr * self.factor**drops

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate = self.value(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(self.value(epoch))


class ValidationRecall(keras.callbacks.Callback):
    """Adds `val_recall@N` to the epoch logs (faiss recall@N on the validation split)."""

    def __init__(self, split, root, image_size, ns, batch_size, progress, control):
        super().__init__()
        self.split, self.root, self.image_size = split, root, image_size
        self.ns, self.batch_size, self.progress, self.control = ns, batch_size, progress, control

    def on_epoch_end(self, epoch, logs=None):
        if self.control.nan_at is not None:
            return
        results = evaluation.evaluate(self.model, self.split, root=self.root, image_size=self.image_size,
                                      ns=self.ns, batch_size=self.batch_size, progress=self.progress)
        for n in self.ns:
            logs[f"val_recall@{n}"] = results[f"recall@{n}"]


def _selection_key(logs):
    return (logs.get("val_recall@5", -1.0), logs.get("val_recall@1", -1.0))


class TrainingCheckpoint(keras.callbacks.Callback):
    """`best.keras` by val recall@5 and the atomic `last` checkpoint (epoch ends and every k steps)."""

    def __init__(self, out_dir, checkpointer, miner, pipeline, control, fingerprint, every_steps,
                 best=None, history=None, write=True):
        super().__init__()
        self.out_dir = Path(out_dir)
        self.write = write  # False on the non-chief workers of a multi-worker run: they write nothing
        self.checkpointer, self.miner, self.pipeline = checkpointer, miner, pipeline
        self.control, self.fingerprint, self.every_steps = control, fingerprint, every_steps
        self.best = best  # {"epoch": e, "val_recall@1": ..., ...}
        self.history = list(history or [])
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _state(self, epoch, step, complete):
        # Each step consumes `batch_size` rows from row 0 of the cycle (with on_bad_image="skip" a
        # dropped tuple shifts this by one row: a resumed run may then skip a few tuples).
        rows_done = min(step * self.pipeline.batch_size, int(self.pipeline.end_row.numpy()))
        complete = complete or rows_done >= int(self.pipeline.end_row.numpy())
        return {
            "epoch": int(epoch + 1 if complete else epoch),
            "step": 0 if complete else int(step),
            "rows_done": int(rows_done),
            "iterations": int(self.model.optimizer.iterations.numpy()),
            "best": self.best,
            "history": self.history,
            "tuples_skipped": self.pipeline.skipped,
            **self.fingerprint,
        }

    def save(self, epoch, step, complete):
        if not self.write:
            return
        mining_state = self.miner.state_dict()
        mining_state["rows"] = self.pipeline.rows
        state = self._state(epoch, step, complete)
        self.checkpointer.save(self.model, state, mining_state)
        logger.info("Checkpoint: epoch %d step %d (%s)", state["epoch"], state["step"],
                    "epoch end" if complete else "within epoch")

    def on_train_batch_end(self, batch, logs=None):
        if self.control.nan_at is not None or self.control.time_stop:
            return
        if self.every_steps and self.control.step % self.every_steps == 0:
            self.save(self.epoch, self.control.step, complete=False)

    def on_epoch_end(self, epoch, logs=None):
        if self.control.nan_at is not None:
            return
        logs = logs or {}
        record = {k: float(v) for k, v in logs.items() if np.isscalar(v) or np.ndim(v) == 0}
        record["epoch"] = int(epoch)
        self.history.append(record)
        if "val_recall@5" in logs and (self.best is None or _selection_key(logs) > _selection_key(self.best)):
            self.best = record
            if self.write:
                save_model(self.model, self.out_dir / "best.keras")
            logger.info("New best model (epoch %d): val recall@5 = %.4f", epoch, logs["val_recall@5"])
        self.save(epoch, self.control.step, complete=not self.control.partial_epoch)


# --------------------------------------------------------------------------- helpers


def _as_split(split, root, what):
    if split is None or isinstance(split, places.PlaceSplit):
        return split
    if isinstance(split, (str, os.PathLike)):
        return places.load_split(split, root=root)
    raise TypeError(f"`{what}` must be a PlaceSplit or a path to a split file. Received: {type(split).__name__}")


def _make_optimizer(cfg):
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=cfg.lr, momentum=cfg.momentum)
    return keras.optimizers.Adam(learning_rate=cfg.lr)


def _check_resume(saved, cfg, fingerprint, last):
    problems = [f"{key}: checkpoint={saved['config'].get(key)!r}, now={_jsonable(getattr(cfg, key))!r}"
                for key in RESUME_KEYS if saved["config"].get(key) != _jsonable(getattr(cfg, key))]
    if saved.get("train_split") != fingerprint["train_split"]:
        problems.append("training split: different image lists or positions")
    if problems:
        raise ValueError(f"Cannot resume from {last}: the configuration differs from the checkpoint's "
                         f"({'; '.join(problems)}). Use the original settings or a new out_dir.")


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def _val_subset(split, max_queries, seed):
    if split is None or max_queries is None or split.num_queries <= max_queries:
        return split
    idx = np.sort(np.random.default_rng(seed).choice(split.num_queries, int(max_queries), replace=False))
    return split.subset_queries(idx)


def _prepare_out_dir(out_dir, resume):
    out_dir = Path(out_dir)
    checkpointer = Checkpointer(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not resume:
        raise FileExistsError(
            f"`out_dir` {str(out_dir)!r} already holds files (a previous run?). Pass resume=True to "
            "continue it, or choose a new out_dir."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "logs").mkdir(exist_ok=True)
    return out_dir, checkpointer


def _prepare_out_dir_multi(out_dir, resume, group):
    """Multi-worker: the chief checks and creates `out_dir`; every worker gets the same verdict and
    the same `resuming` decision (the others only read `out_dir`, to resume)."""
    out_dir, checkpointer, problem = Path(out_dir), Checkpointer(out_dir), None
    if group.is_chief:
        try:
            out_dir, checkpointer = _prepare_out_dir(out_dir, resume)
        except FileExistsError as error:
            problem = error
    verdict = group.broadcast(np.array([problem is not None, resume and checkpointer.exists()], np.int64))
    if verdict[0]:
        raise problem or FileExistsError(
            f"`out_dir` {str(out_dir)!r} already holds files (a previous run?), says the chief worker. "
            "Pass resume=True to continue it, or choose a new out_dir.")
    if verdict[1] and not checkpointer.exists():
        raise FileNotFoundError(
            f"The chief resumes from {checkpointer.last}, which this worker (index {group.index}) cannot "
            "read: `out_dir` must be on a filesystem shared by all workers.")
    return out_dir, checkpointer, bool(verdict[1])


def _new_model(cfg):
    return build_model(cfg.backbone, weights=cfg.weights, trainable_from=cfg.trainable_from,
                       num_clusters=cfg.num_clusters, variant=cfg.variant, margin=cfg.margin)


def _build_initial_model(cfg, model, train_split, root, out_dir, progress):
    if model is None:
        model = _new_model(cfg)
        paths = list(train_split.db_paths)
        if cfg.on_bad_image == "skip":  # sample the init images here and leave out unloadable ones
            rng = np.random.default_rng(cfg.seed)
            chosen = np.sort(rng.choice(len(paths), size=min(cfg.init_images, len(paths)), replace=False))
            resolved = data.resolve_paths([paths[i] for i in chosen], root)
            paths = [paths[i] for i, full in zip(chosen, resolved) if data.diagnose_image(full) is None]
            if len(paths) < len(chosen):
                logger.warning("k-means init: skipped %d images that cannot be loaded.", len(chosen) - len(paths))
        stats = initialize_netvlad(model, paths, root=root, image_size=cfg.image_size,
                                   num_images=cfg.init_images, per_image=cfg.init_per_image,
                                   seed=cfg.seed, batch_size=cfg.cache_batch_size, progress=progress)
    else:
        stats = {"note": "model given by the caller; no k-means initialisation"}
    save_model(model, out_dir / "init.keras")
    return model, stats


# --------------------------------------------------------------------------- train


def train(train_split, val_split=None, *, root=None, val_root=None, out_dir, model=None, config=None,
          resume=False, verbose=1, progress=True, strategy=None, callbacks=None, **overrides):
    """Trains NetVLAD with the weakly supervised ranking loss and hard-negative mining.

    Args:
        train_split: `places.PlaceSplit` or a split file (.mat / .csv / folder) of training images.
        val_split: optional validation split (recall@N every epoch, best-model selection).
        root, val_root: image roots (default: the splits' own `root`).
        out_dir: run directory (see the module docstring for its contents). Must be new or empty
            unless `resume=True`.
        model: a `NetVLADModel` to train as is (already initialised), or None to build one from
            the config (`backbone`, `weights`, `num_clusters`, ...) and k-means-initialise it.
        config: a `TrainConfig`; keyword `overrides` replace its fields (e.g. `epochs=5`).
        resume: continue from `out_dir/last` (fresh start when there is no checkpoint yet).
        verbose: Keras progress bar (0, 1 or 2). progress: tqdm bars for caching/evaluation.
        strategy: optional `tf.distribute.Strategy` to build and train the model under. With a
            `MultiWorkerMirroredStrategy` over W > 1 workers (run the same call on every worker;
            docs/multi-worker.md): `batch_size` is the global batch, split over all replicas in
            single-device order; each worker extracts only 1/W of the mining cache and loads only
            its replicas' tuples; every worker mines the same tuples; the chief (worker 0) alone
            runs the k-means initialisation (its weights are broadcast), evaluates the validation
            split and writes `out_dir`; the other workers write nothing. `out_dir` and the images
            must be readable by every worker (shared filesystem) for `resume`.
        callbacks: optional extra Keras callbacks passed to every `fit` call (one per cycle).

    Returns:
        dict summary (also written to `out_dir/summary.json`): status ("completed",
        "time_limit"), epochs done, best epoch and val recalls, init val recalls, files, counts.

    Raises:
        ValueError for bad configurations/splits or an incompatible resume directory;
        `data.ImageReadError` for an image that fails with `on_bad_image="stop"`;
        FloatingPointError when the loss becomes NaN/inf (the last good checkpoint is kept).
    """
    start_time = time.monotonic()
    cfg = dataclasses.replace(config or TrainConfig(), **overrides)
    train_split = _as_split(train_split, root, "train_split")
    val_split = _as_split(val_split, val_root, "val_split")
    root = train_split.root if root is None else root
    val_root = (val_split.root if val_root is None else val_root) if val_split is not None else None
    group = distributed.worker_group(strategy)
    if group is None:
        out_dir, checkpointer = _prepare_out_dir(out_dir, resume)
        resuming = resume and checkpointer.exists()
    else:
        out_dir, checkpointer, resuming = _prepare_out_dir_multi(out_dir, resume, group)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.random.set_global_generator(tf.random.Generator.from_seed(cfg.seed))
    fingerprint = {"config": {k: _jsonable(v) for k, v in dataclasses.asdict(cfg).items()},
                   "train_split": split_fingerprint(train_split)}
    if resuming:
        saved = checkpointer.load_state()
        _check_resume(saved, cfg, fingerprint, checkpointer.last)
    miner = mining.HardNegativeMiner(
        train_split, root=root, image_size=cfg.image_size, num_positives=cfg.num_positives,
        num_negatives=cfg.num_negatives, pool_size=cfg.negative_pool_size, keep_factor=cfg.keep_factor,
        margin=cfg.margin, cache_refresh_queries=cfg.cache_refresh_queries, seed=cfg.seed,
        batch_size=cfg.cache_batch_size, on_bad_image=cfg.on_bad_image, progress=progress,
        exclude_very_hard=cfg.exclude_very_hard, group=group)
    previous_policy = keras.config.dtype_policy()
    if cfg.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    scope = strategy.scope() if strategy is not None else _null_scope()
    try:
        with scope:
            init_stats = {}
            if resuming:
                model = load_model(out_dir / "init.keras", compile=False)
            elif group is None or group.is_chief:
                model, init_stats = _build_initial_model(cfg, model, train_split, root, out_dir, progress)
            else:  # the chief's k-means initialisation (or given model) is broadcast below
                model = _new_model(cfg) if model is None else model
                init_stats = {"note": "weights broadcast from the chief (worker 0)"}
            model.compile(optimizer=_make_optimizer(cfg))
            model.set_training_options(loss_reduction=cfg.loss_reduction, weight_decay=cfg.weight_decay)
            model.optimizer.build(model.trainable_variables)
        if group is not None:
            group.broadcast_variables(model.weights)
        return _fit(cfg, model, miner, train_split, val_split, root, val_root, out_dir, checkpointer,
                    fingerprint, resuming, init_stats, start_time, verbose, progress, group,
                    list(callbacks or []))
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _tensorboard_available():
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        logger.warning("TensorBoard logs are off: the `tensorboard` package is not installed "
                       "(pip install tensorboard). CSV logs are written.")
        return False
    return True


class _null_scope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _fit(cfg, model, miner, train_split, val_split, root, val_root, out_dir, checkpointer, fingerprint,
         resuming, init_stats, start_time, verbose, progress, group=None, extra_callbacks=()):
    pipeline = tuples.TuplePipeline(
        train_split.query_paths, train_split.db_paths, root, cfg.image_size, num_rows=miner.cycle_size,
        num_positives=cfg.num_positives, num_negatives=cfg.num_negatives, batch_size=cfg.batch_size,
        on_bad_image=cfg.on_bad_image)
    deadline = None if cfg.time_limit_s is None else start_time + cfg.time_limit_s
    control = RunControl(deadline, group)
    chief = group is None or group.is_chief
    val_eval = _val_subset(val_split, cfg.val_max_queries, cfg.seed) if chief else None
    initial_epoch, best, history, init_val = 0, None, [], None
    miner_cb = mining.MiningCallback(miner, pipeline, skip_when=control.time_over)
    if resuming:
        state, mining_state = checkpointer.restore(model)
        if group is not None:  # all read the chief's checkpoint; make sure nobody read a stale one
            group.broadcast_variables(model.weights + list(model.optimizer.variables))
        miner.load_state_dict(mining_state)
        initial_epoch, best, history = state["epoch"], state.get("best"), state.get("history", [])
        init_val = state.get("init_val")
        if state["step"] > 0:
            miner_cb.resume_rows(state["epoch"], mining_state["rows"], state["rows_done"])
            control.start_step = state["step"]
        logger.info("Resuming from %s: epoch %d, step %d", checkpointer.last, state["epoch"], state["step"])
    elif val_eval is not None:
        init_val = evaluation.evaluate(model, val_eval, root=val_root, image_size=cfg.image_size,
                                       ns=cfg.recall_ns, batch_size=cfg.cache_batch_size, progress=progress)
    fingerprint = dict(fingerprint, init_val=init_val)
    checkpoint_cb = TrainingCheckpoint(out_dir, checkpointer, miner, pipeline, control, fingerprint,
                                       cfg.checkpoint_every_steps, best=best, history=history, write=chief)
    callbacks = [control, checkpoint_cb, miner_cb,
                 LearningRateSchedule(cfg.lr, cfg.lr_decay_factor, cfg.lr_decay_every, miner.cycle_size,
                                      len(miner.valid_queries))]
    if val_eval is not None:
        callbacks.append(ValidationRecall(val_eval, val_root, cfg.image_size, cfg.recall_ns,
                                          cfg.cache_batch_size, progress, control))
    csv_logger = None
    if chief:
        csv_logger = keras.callbacks.CSVLogger(str(out_dir / "logs" / "train.csv"), append=resuming)
        callbacks.append(csv_logger)
        if _tensorboard_available():
            callbacks.append(keras.callbacks.TensorBoard(str(out_dir / "logs" / "tensorboard"),
                                                         write_graph=False, profile_batch=0))
    callbacks.extend(extra_callbacks)
    # the checkpoint must run after validation and logging at epoch end: move it last
    callbacks.remove(checkpoint_cb)
    callbacks.append(checkpoint_cb)
    status = "completed"
    # with a strategy, `fit` reads a first batch (symbolic build) before `on_epoch_begin`
    prepare_before_fit = model.distribute_strategy is not tf.distribute.get_strategy()
    if group is None:
        dataset = pipeline.dataset()
    else:  # each worker reads only its replicas' rows of every global batch
        dataset = group.strategy.distribute_datasets_from_function(pipeline.replica_dataset)
    try:
        # One `fit` call per epoch: Keras learns the number of batches of a dataset of unknown
        # length from the first epoch of a `fit` call and caps later epochs at it, which would
        # truncate the epochs after a partial (resumed, or skip-mode) epoch.
        for epoch in range(initial_epoch, cfg.epochs):
            if control.time_over() and epoch > initial_epoch:
                break
            if prepare_before_fit:
                miner_cb.set_model(model)
                miner_cb.prepare(epoch)
            with warnings.catch_warnings():
                # One refresh cycle per fit(): the tuple dataset is finite by design (its length is
                # only known after mining), which Keras reports as "input ran out of data".
                warnings.filterwarnings("ignore", message="Your input ran out of data")
                model.fit(dataset, epochs=epoch + 1, initial_epoch=epoch, shuffle=False,
                          callbacks=callbacks, verbose=verbose)
            if csv_logger is not None:
                csv_logger.append = True
            if model.stop_training:
                break
    except tf.errors.InvalidArgumentError as error:
        message = pipeline.describe_failure(error)
        if message is None:
            raise
        raise data.ImageReadError(message) from None
    if control.nan_at is not None:
        last = checkpointer.last if checkpointer.exists() else "none written yet"
        raise FloatingPointError(
            f"The training loss became NaN/inf at epoch {control.nan_at[0]}, step {control.nan_at[1]}. "
            f"Training stopped; the last good checkpoint is kept ({last}). Lower the learning rate "
            f"(lr={cfg.lr}) or check the input images, then resume with resume=True."
        )
    if control.time_stop or (cfg.time_limit_s is not None and control.time_over()):
        status = "time_limit"
    return _finish(cfg, model, checkpoint_cb, train_split, val_split, root, out_dir, status, init_val,
                   init_stats, miner, pipeline, start_time, progress, group)


def _finish(cfg, model, checkpoint_cb, train_split, val_split, root, out_dir, status, init_val,
            init_stats, miner, pipeline, start_time, progress, group=None):
    worker = None if group is None else {"index": group.index, "num_workers": group.num_workers,
                                         "is_chief": group.is_chief}
    if group is not None and not group.is_chief:  # writes nothing; the chief's summary is the run's
        return {"status": status, "worker": worker, "epochs_done": len(checkpoint_cb.history),
                "iterations": int(model.optimizer.iterations.numpy()), "last_mining": miner.last_stats,
                "files": {}, "wall_time_s": time.monotonic() - start_time}
    if val_split is None or not (out_dir / "best.keras").exists():
        save_model(model, out_dir / "best.keras")
    files = {"init": str(out_dir / "init.keras"), "best": str(out_dir / "best.keras"),
             "last": str(out_dir / "last"), "csv_log": str(out_dir / "logs" / "train.csv"),
             "tensorboard": str(out_dir / "logs" / "tensorboard")}
    whitened = None
    if cfg.whiten:
        best = load_model(out_dir / "best.keras", compile=False)
        white = fit_whitening(best, train_split.db_paths, root=root, image_size=cfg.image_size,
                              num_components=cfg.whiten, max_images=cfg.whiten_max_images, seed=cfg.seed,
                              batch_size=cfg.cache_batch_size, progress=progress)
        path = save_model(white, out_dir / f"best_white{cfg.whiten}.keras")
        files["best_whitened"] = str(path)
        whitened = str(path)
    history = checkpoint_cb.history
    summary = {
        "status": status,
        "epochs_done": len(history),
        "epochs_requested": cfg.epochs,
        "iterations": int(model.optimizer.iterations.numpy()),
        "queries_per_epoch": miner.cycle_size,
        "training_queries": len(miner.valid_queries),
        "queries_without_positives": miner.dropped_queries,
        "tuples_skipped_bad_images": pipeline.skipped,
        "images_skipped_in_cache": int(len(miner.bad_db) + len(miner.bad_queries)),
        "init_val": init_val,
        "best": checkpoint_cb.best,
        "final": history[-1] if history else None,
        "init_stats": init_stats,
        "whitened_model": whitened,
        "last_mining": miner.last_stats,
        "worker": worker,
        "files": files,
        "wall_time_s": time.monotonic() - start_time,
        "config": {k: _jsonable(v) for k, v in dataclasses.asdict(cfg).items()},
    }
    evaluation.write_json(summary, out_dir / "summary.json")
    return summary
