"""The run directory: atomic `last` checkpoints, resume compatibility, `out_dir` preparation.

Files written into `out_dir` by `training.train`:

* `init.keras`: the k-means-initialised model before any training step.
* `best.keras`: best model by validation recall@5 (ties broken by recall@1), or the final model
  when there is no validation split.
* `last` -> `checkpoints/ckpt-EEEE-SSSSSS/`: the latest checkpoint (model weights, optimizer state,
  epoch and step, tuple rows of the current cycle, negative memory, RNG states, config). It is
  written into a temp directory, renamed, and `last` (a symlink) is replaced atomically, so a
  killed run always leaves a complete checkpoint (`Checkpointer`). Written at every epoch end,
  every `checkpoint_every_steps` steps within an epoch, and when the time limit stops a run
  (`training_callbacks.TrainingCheckpoint`).
* `logs/train.csv` (CSVLogger, appended on resume), `logs/tensorboard/`, `summary.json`.

Resume (`resume=True`) continues from `last` exactly where it was written: weights, optimizer
slots and iteration counter, epoch, position inside the epoch (the saved tuple rows are reused,
so no re-mining happens), negative memory, best score and RNG states. A run whose configuration
differs in a field that changes the training state (`train_config.RESUME_KEYS`) or whose training
split differs is refused with a clear error (`check_resume`).
"""

import hashlib
import json
import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from tf_netvlad.data.fileio import jsonable, write_json
from tf_netvlad.training.config import RESUME_DEFAULTS, RESUME_KEYS


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
            write_json(state, tmp / "state.json")
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


def check_resume(saved, cfg, fingerprint, last):
    config = {**RESUME_DEFAULTS, **saved["config"]}
    problems = [f"{key}: checkpoint={config.get(key)!r}, now={jsonable(getattr(cfg, key))!r}"
                for key in RESUME_KEYS if config.get(key) != jsonable(getattr(cfg, key))]
    if saved.get("train_split") != fingerprint["train_split"]:
        problems.append("training split: different image lists or positions")
    if problems:
        raise ValueError(f"Cannot resume from {last}: the configuration differs from the checkpoint's "
                         f"({'; '.join(problems)}). Use the original settings or a new out_dir.")


def prepare_out_dir(out_dir, resume):
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


def prepare_out_dir_multi(out_dir, resume, group):
    """Multi-worker: the chief checks and creates `out_dir`; every worker gets the same verdict and
    the same `resuming` decision (the others only read `out_dir`, to resume)."""
    out_dir, checkpointer, problem = Path(out_dir), Checkpointer(out_dir), None
    if group.is_chief:
        try:
            out_dir, checkpointer = prepare_out_dir(out_dir, resume)
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
