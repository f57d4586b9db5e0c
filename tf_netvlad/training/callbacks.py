"""The Keras callbacks of `training.train`: run control, LR schedule, validation, checkpoints.

One `fit` call trains one refresh cycle (a Keras epoch); the callbacks carry state across the
calls. `TrainingCheckpoint` must run after `ValidationRecall` and the loggers at an epoch end.
"""

import logging
import time
from pathlib import Path

import keras
import numpy as np

from tf_netvlad.evaluation import recall
from tf_netvlad.models.model_files import save_model
from tf_netvlad.training.budget_schedule import budget_learning_rate, budget_progress

logger = logging.getLogger(__name__)


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
    """Step decay in passes over the training queries (paper: ×0.5 every 5 epochs).

    `schedule` is the miner's `refresh_schedule.RefreshSchedule`: it knows how many passes are
    done when cycle (Keras epoch) e starts, and the decay every / factor.
    """

    def __init__(self, lr, schedule):
        super().__init__()
        self.lr, self.schedule = lr, schedule

    def value(self, epoch):
        return self.schedule.learning_rate(self.lr, epoch)

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate = self.value(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(self.value(epoch))


class BudgetLearningRate(keras.callbacks.Callback):
    """Warm-up + cosine over the run's budget (`training.budget_schedule`), set before every step.

    The budget is the larger used fraction of the time left at the first step (until `control`'s
    deadline) and of `max_steps` (optimizer steps the run's `passes` / `epochs` allow; None if
    unbounded). Without a deadline and `max_steps` there is no budget (ValueError).
    """

    def __init__(self, lr, control, max_steps=None):
        super().__init__()
        if control.deadline is None and not max_steps:
            raise ValueError("lr_schedule='budget' needs a time limit (`time_limit_s`) or a bounded "
                             "length (`passes` or `epochs`).")
        self.lr, self.control, self.max_steps = lr, control, max_steps
        self._t0 = self._steps0 = None
        self.current = None

    def value(self):
        now, steps = time.monotonic(), int(self.model.optimizer.iterations.numpy())
        if self._t0 is None:  # the budget starts at the first step (after the k-means and validation)
            self._t0, self._steps0 = now, steps
        deadline = self.control.deadline
        return budget_learning_rate(self.lr, budget_progress(
            now - self._t0, None if deadline is None else max(deadline - self._t0, 1e-9),
            steps, self.max_steps))

    def on_train_batch_begin(self, batch, logs=None):
        self.current = self.value()
        self.model.optimizer.learning_rate = self.current

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.current is not None:
            logs["lr"] = float(self.current)


def learning_rate_callback(cfg, schedule, control, group=None):
    """The LR callback of `cfg.lr_schedule` (a `TrainConfig`): "step" (passes) or "budget".

    `schedule` is the miner's `refresh_schedule.RefreshSchedule`, `control` the run's `RunControl`
    (its deadline is the time budget). The step budget of "budget" is the optimizer steps that
    `cfg.passes` / `cfg.epochs` allow (None if both are None). `group`: a multi-worker group; the
    workers' clocks differ, so there the budget is the step budget alone.
    """
    if cfg.lr_schedule == "step":
        return LearningRateSchedule(cfg.lr, schedule)
    max_steps = None
    if cfg.passes is not None or cfg.epochs is not None:
        max_steps = sum(-(-schedule.cycle(c)[2] // cfg.batch_size)
                        for c in schedule.cycle_indices(0, cfg.passes, cfg.epochs))
    if group is not None:
        if max_steps is None:
            raise ValueError("lr_schedule='budget' under a multi-worker strategy follows the step "
                             "budget: set `passes` or `epochs` (--passes / --epochs).")
        control = RunControl(None)
    return BudgetLearningRate(cfg.lr, control, max_steps)


def validation_queries(split, max_queries, seed):
    """`split` with at most `max_queries` of its queries, drawn at random with `seed` (MATLAB's
    `nTestSample` validation queries; `TrainConfig.val_max_queries`), kept in their order."""
    if split is None or max_queries is None or split.num_queries <= max_queries:
        return split
    idx = np.sort(np.random.default_rng(seed).choice(split.num_queries, int(max_queries), replace=False))
    return split.subset_queries(idx)


class ValidationRecall(keras.callbacks.Callback):
    """Adds `val_recall@N` to the epoch logs (faiss recall@N on the validation split)."""

    def __init__(self, split, root, image_size, ns, batch_size, progress, control, images=None):
        super().__init__()
        self.split, self.root, self.image_size = split, root, image_size
        self.ns, self.batch_size, self.progress, self.control = ns, batch_size, progress, control
        self.images = images  # the split's images decoded in memory (`recall.evaluate(images=)`)

    def on_epoch_end(self, epoch, logs=None):
        if self.control.nan_at is not None:
            return
        results = recall.evaluate(self.model, self.split, root=self.root, image_size=self.image_size,
                                  ns=self.ns, batch_size=self.batch_size, progress=self.progress,
                                  images=self.images)
        for n in self.ns:
            logs[f"val_recall@{n}"] = results[f"recall@{n}"]


# The best model: highest validation recall@5 (MATLAB's `pickBestNet`), ties broken by recall@1.
SELECTED_BY = ("val_recall@5", "val_recall@1")


def selection_key(logs):
    """The tuple `best.keras` is chosen by (greater is better); -1 where a recall is missing."""
    return tuple(logs.get(key, -1.0) for key in SELECTED_BY)


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
        # Each step consumes exactly `batch_size` rows from row 0 of the cycle (a tuple that fails
        # in "skip" mode keeps its slot as padding), so this is the exact row to resume at.
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
        if SELECTED_BY[0] in logs and (self.best is None or selection_key(logs) > selection_key(self.best)):
            self.best = record
            if self.write:
                save_model(self.model, self.out_dir / "best.keras")
            logger.info("New best model (epoch %d): %s", epoch,
                        ", ".join(f"{key} = {logs[key]:.4f}" for key in SELECTED_BY if key in logs))
        self.save(epoch, self.control.step, complete=not self.control.partial_epoch)
