"""Weakly supervised NetVLAD training: `train(...)`, one `fit` per refresh cycle, and its outputs.

A Keras epoch is one **refresh cycle**: `cache_refresh_queries` training queries (default 1000,
all queries if fewer; more with `refresh_share` when the database is large) whose descriptor cache
is refreshed and whose tuples are mined just before the epoch's `fit` call
(`mining.MiningCallback.prepare`), so the epoch's dataset declares its exact number of steps. The
run's length is `passes` passes over the training queries (the paper's
epochs: 30), capped by `epochs` refresh cycles and `time_limit_s`; the learning-rate
schedule is expressed in *passes over the training queries* (the paper's epochs), so "halve the LR
every 5 epochs" holds whatever the refresh rate: a cycle starting after p passes has the LR
`lr * lr_decay_factor ** floor(p / lr_decay_every)`. With `refresh_slowdown` (the paper recipe's
default, MATLAB's schedule) a refresh also happens at every pass end and the cycles grow by
1/`lr_decay_factor` at every LR drop (`tf_netvlad.training.refresh_schedule`): on Pitts30k (7,320 queries)
30 paper epochs are 8 cycles per pass for 5 passes, then 4, 2 and 1 per pass (5 passes each):
85 cycles for `passes=30`. Without it, cycles of 1000 run across pass ends: 220 cycles.

`train` writes `out_dir` (`init.keras`, `best.keras`, the atomic `last` checkpoint, logs and
`summary.json`; see `tf_netvlad.training.checkpointing`) and resumes from it exactly (`resume=True`).
The run's model comes from `tf_netvlad.training.run_model`, its last files and summary from
`tf_netvlad.training.run_summary`.

The recipe is a `TrainConfig` (`tf_netvlad.training.config`), whose `image_size` is already the
parsed `(H, W)`: `train` hands it unchanged to the tuple pipeline, the mining cache, the k-means
initialisation, validation and whitening.
"""

import dataclasses
import logging
import os
import time
import warnings

import keras
import tensorflow as tf

from tf_netvlad.data import pipelines, places, split_loading
from tf_netvlad.data.decoded import decode_splits
from tf_netvlad.evaluation import recall
from tf_netvlad.training import (
    augment,
    distributed,
    input_checks,
    mining,
    onednn,
    run_model,
    run_summary,
    tuples,
)
from tf_netvlad.training.callbacks import (
    RunControl,
    TrainingCheckpoint,
    ValidationRecall,
    learning_rate_callback,
    validation_queries,
)
from tf_netvlad.training.checkpointing import (
    RunDirectory,
    check_cycle_size,
    check_resume,
    split_fingerprint,
)
from tf_netvlad.training.config import TrainConfig, config_json
from tf_netvlad.training.refresh_schedule import RefreshSchedule

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- train


def train(train_split, val_split=None, *, root=None, val_root=None, out_dir, model=None, config=None,
          resume=False, verbose=1, progress=True, strategy=None, callbacks=None, **overrides):
    """Trains NetVLAD with the weakly supervised ranking loss and hard-negative mining.

    Args:
        train_split: `places.PlaceSplit` or a split file (.mat / .csv / folder) of training images.
        val_split: optional validation split (recall@N every epoch, best-model selection).
        root, val_root: image roots (default: the splits' own `root`). A split file is read with
            `split_loading.load_split` (database/query folders detected under the root); load it yourself
            with `db_root=` / `query_root=` to give the folders. Every image of both splits is
            checked before anything is written or computed (`split_loading.check_images`).
        out_dir: run directory (contents: see `tf_netvlad.training.checkpointing`). Must be new or empty
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
    if warning := onednn.onednn_off_warning():  # `import tensorflow` came before `import tf_netvlad`
        logger.warning(warning)
    cfg = dataclasses.replace(config or TrainConfig(), **overrides)
    sources = (train_split, val_split)  # as the caller named them: errors name the files
    train_split = _as_split(train_split, root, "train_split")
    val_split = _as_split(val_split, val_root, "val_split")
    root = train_split.root if root is None else root
    val_root = (val_split.root if val_root is None else val_root) if val_split is not None else None
    # positives, one batch, negatives, validation positives: from the positions, before anything runs
    input_checks.check_training_input(cfg, train_split, val_split, sources)
    # every image the run will read, checked before the run directory, the model and the k-means
    split_loading.check_images(train_split, root=root, flags=_ROOT_ARGS,
                               source=_source(sources[0], "train_split", train_split))
    if val_split is not None:
        split_loading.check_images(val_split, root=val_root, flags=("val_root=",) + _ROOT_ARGS[1:],
                                   source=_source(sources[1], "val_split", val_split))
    group = distributed.worker_group(strategy)
    # Holds the run directory's writer lock; a fresh run that fails early leaves nothing behind.
    with RunDirectory(out_dir, resume, group) as run:
        return _train(cfg, train_split, val_split, root, val_root, run, model, verbose, progress,
                      strategy, callbacks, start_time)


def _train(cfg, train_split, val_split, root, val_root, run, model, verbose, progress, strategy,
           callbacks, start_time):
    group, out_dir, checkpointer, resuming = run.group, run.out_dir, run.checkpointer, run.resuming
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.random.set_global_generator(tf.random.Generator.from_seed(cfg.seed))
    fingerprint = {"config": config_json(cfg),
                   "train_split": split_fingerprint(train_split)}
    if resuming:
        saved = checkpointer.load_state()
        check_resume(saved, cfg, fingerprint, checkpointer.last)
    if cfg.db_queries:  # after the fingerprint, which names the split as given (and `db_queries`)
        train_split = train_split.with_database_queries()
    # the validation queries of every cycle's end; their images count in the cycle size (every worker
    # sizes the cycles the same), the chief validates on them
    val_eval = validation_queries(val_split, cfg.val_max_queries, cfg.seed)
    validation_images = 0 if val_eval is None else val_eval.num_db + val_eval.num_queries
    miner = mining.HardNegativeMiner(
        train_split, root=root, image_size=cfg.image_size, num_positives=cfg.num_positives,
        num_negatives=cfg.num_negatives, pool_size=cfg.negative_pool_size, keep_factor=cfg.keep_factor,
        margin=cfg.margin, cache_refresh_queries=cfg.cache_refresh_queries, seed=cfg.seed,
        batch_size=cfg.cache_batch_size, on_bad_image=cfg.on_bad_image, progress=progress,
        exclude_very_hard=cfg.exclude_very_hard, group=group, refresh_slowdown=cfg.refresh_slowdown,
        lr_decay_every=cfg.lr_decay_every, lr_decay_factor=cfg.lr_decay_factor,
        exclude_trivial_m2=cfg.exclude_trivial_m2, violating_only=cfg.violating_only,
        refresh_share=cfg.refresh_share, validation_images=validation_images)
    fingerprint["queries_per_cycle"] = miner.cycle_size
    if resuming:
        unshared = RefreshSchedule(len(miner.valid_queries), cfg.cache_refresh_queries).size
        check_cycle_size(saved, miner.cycle_size, unshared, checkpointer.last)
    previous_policy = keras.config.dtype_policy()
    if cfg.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    scope = strategy.scope() if strategy is not None else _null_scope()
    try:
        with scope:
            model, init_stats = run_model.prepare_model(cfg, model, train_split, root, out_dir,
                                                        resuming, group, progress)
        if group is not None:
            group.broadcast_variables(model.weights)
        return _fit(cfg, model, miner, train_split, val_split, val_eval, root, val_root, out_dir,
                    checkpointer, fingerprint, resuming, init_stats, start_time, verbose, progress, group,
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


def _fit(cfg, model, miner, train_split, val_split, val_eval, root, val_root, out_dir, checkpointer,
         fingerprint, resuming, init_stats, start_time, verbose, progress, group=None, extra_callbacks=()):
    chief = group is None or group.is_chief
    val_eval = val_eval if chief else None  # `validation_queries(val_split)`: the chief validates
    # every training and validation image decoded once, if they fit in `image_cache_mb`; under a
    # multi-worker strategy each worker holds the training images (its replicas' tuples and its
    # share of every refresh read them), the chief also the validation images
    images = decode_splits(
        [(train_split, root)] + ([(val_eval, val_root)] if val_eval is not None else []), cfg.image_size,
        cfg.image_cache_mb, cfg.cache_batch_size, progress)
    miner.images = images
    pipeline = tuples.TuplePipeline(
        train_split.query_paths, train_split.db_paths, root, cfg.image_size,
        num_rows=miner.schedule.max_size,
        num_positives=cfg.num_positives, num_negatives=cfg.num_negatives, batch_size=cfg.batch_size,
        on_bad_image=cfg.on_bad_image, augmentation=augment.Augmentation() if cfg.augment else None,
        augment_all_slots=cfg.augment_all_slots, seed=cfg.seed, images=images)
    deadline = None if cfg.time_limit_s is None else start_time + cfg.time_limit_s
    control = RunControl(deadline, group)
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
        init_val = recall.evaluate(model, val_eval, root=val_root, image_size=cfg.image_size, ns=cfg.recall_ns,
                                   batch_size=cfg.cache_batch_size, progress=progress, images=images)
    fingerprint = dict(fingerprint, init_val=init_val)
    checkpoint_cb = TrainingCheckpoint(out_dir, checkpointer, miner, pipeline, control, fingerprint,
                                       cfg.checkpoint_every_steps, best=best, history=history, write=chief)
    callbacks = [control, checkpoint_cb, miner_cb, learning_rate_callback(cfg, miner.schedule, control, group)]
    if val_eval is not None:
        callbacks.append(ValidationRecall(val_eval, val_root, cfg.image_size, cfg.recall_ns,
                                          cfg.cache_batch_size, progress, control, images))
    csv_logger = None
    if chief:
        (out_dir / "logs").mkdir(exist_ok=True)  # here, after the resume check: a refused run adds nothing
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
    distributed_dataset = None
    if group is not None:  # each worker reads only its replicas' rows of every global batch
        distributed_dataset = group.strategy.distribute_datasets_from_function(pipeline.replica_dataset)
    if control.time_over():  # documented (TrainConfig.time_limit_s): one step, then stop
        logger.warning("The time limit (time_limit_s=%g s, --time-limit-s) was used up before the first "
                       "training step (set-up took %.1f s: model, k-means initialisation, validation): "
                       "training one step only, then stopping. Raise the limit to train.",
                       cfg.time_limit_s, time.monotonic() - start_time)
    try:
        # One `fit` call per refresh cycle, on a table mined before the call: the dataset declares
        # the cycle's exact number of batches, so Keras shows n/N steps and never runs out of data
        # (and under a strategy, `fit` reads a first batch before `on_epoch_begin`).
        for epoch in miner.schedule.cycle_indices(initial_epoch, cfg.passes, cfg.epochs):
            if control.time_over() and epoch > initial_epoch:
                break
            miner_cb.set_model(model)
            miner_cb.prepare(epoch)
            if group is None:
                dataset = pipeline.dataset(num_batches=pipeline.num_batches)
            else:
                dataset = distributed_dataset
            with warnings.catch_warnings():
                if group is not None:  # per-replica datasets: Keras cannot know their length
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
        raise pipelines.ImageReadError(message) from None
    if control.nan_at is not None:
        last = checkpointer.last if checkpointer.exists() else "none written yet"
        raise FloatingPointError(
            f"The training loss became NaN/inf at epoch {control.nan_at[0]}, step {control.nan_at[1]}. "
            f"Training stopped; the last good checkpoint is kept ({last}). Lower the learning rate "
            f"(lr={cfg.lr}) or check the input images, then resume (--resume; Python: resume=True)."
        )
    if control.time_stop or (cfg.time_limit_s is not None and control.time_over()):
        status = "time_limit"
    return run_summary.finish_run(cfg, model, checkpoint_cb, train_split, val_split, root, out_dir,
                                  status, init_val, init_stats, miner, pipeline, start_time, progress,
                                  group)


# --------------------------------------------------------------------------- helpers


_ROOT_ARGS = ("root=", "tf_netvlad.load_split(db_root=...)", "tf_netvlad.load_split(query_root=...)")


def _source(given, what, split):
    """How an image-check error names a split: its file when one was given, else `what` and name."""
    return os.fspath(given) if isinstance(given, (str, os.PathLike)) else f"{what} {split.name!r}"


def _as_split(split, root, what):
    if split is None or isinstance(split, places.PlaceSplit):
        return split
    if isinstance(split, (str, os.PathLike)):
        return split_loading.load_split(split, root=root)
    raise TypeError(f"`{what}` must be a PlaceSplit or a path to a split file. Received: {type(split).__name__}")
