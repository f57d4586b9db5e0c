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
  (`training_callbacks.TrainingCheckpoint`). Every file of a checkpoint is data, never code:
  weights (`.h5`), `.npz` arrays read with `allow_pickle=False`, JSON (`state.json`, and
  `rng.json` for the NumPy, Python and TensorFlow RNG states). Checkpoints of older versions kept
  the RNG states in `rng.pkl`; unpickling runs any code the file holds, so they are refused.
* `logs/train.csv` (CSVLogger, appended on resume), `logs/tensorboard/`, `summary.json`.

While `train` runs, it holds the run directory's writer lock (`RunDirectory`,
`tf_netvlad.data.locking`): a second writer is refused at once, naming the first. The next run
removes the temp files a killed one left (`checkpoints/.tmp-*`, unreferenced checkpoints), and
a fresh run that fails before its first checkpoint removes what it created, so a retry is not
refused as "a previous run". `last` must be a directory inside the run directory or a link to
`checkpoints/<name>`: a run folder someone hands you cannot point the resume elsewhere.

Resume (`resume=True`) continues from `last` exactly where it was written: weights, optimizer
slots and iteration counter, epoch, position inside the epoch (the saved tuple rows are reused,
so no re-mining happens), negative memory, best score and RNG states. A run whose configuration
differs in a field that changes the training state (`train_config.RESUME_KEYS`) or whose training
split differs is refused with a clear error (`check_resume`).
"""

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from tf_netvlad.data.fileio import jsonable, write_json
from tf_netvlad.data.locking import LOCK_FILE, DirectoryLock
from tf_netvlad.data.scratch import remove_orphans
from tf_netvlad.training.config import RESUME_DEFAULTS, RESUME_KEYS, flag_name

RNG_FILE = "rng.json"
# What a run writes into its directory: removed again when a fresh run fails before its first
# checkpoint (`RunDirectory`).
RUN_OUTPUTS = ("init.keras", "best.keras", "best_white*.keras", "summary.json", "logs", "checkpoints",
               "last", ".last.tmp-*", ".tmp-*")


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
            write_json(rng_state(), tmp / RNG_FILE, allow_nan=False)
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

    def check_last(self):
        """Refuses a `last` that leads outside the run directory, or a checkpoint whose RNG
        states are a pickle (`rng.pkl`, older tf_netvlad): nothing is read from it."""
        if self.dir.is_symlink():
            raise ValueError(f"{self.dir} is a link; a run directory keeps its checkpoints inside it. "
                             "Start the run over in a new --out directory.")
        if self.last.is_symlink():
            parts = Path(os.readlink(self.last)).parts
            if len(parts) != 2 or parts[0] != "checkpoints" or parts[1] in ("..", "."):
                raise ValueError(
                    f"{self.last} links to {os.readlink(self.last)!r}, not to a checkpoint in "
                    f"{self.dir}: the run directory was altered. Start the run over in a new --out.")
        if (self.last / "rng.pkl").exists() and not (self.last / RNG_FILE).is_file():
            raise ValueError(
                f"Checkpoint {self.last} keeps its RNG states in rng.pkl, a Python pickle, which "
                "tf_netvlad no longer reads: unpickling a file runs any code it holds. Start the "
                "run over in a new --out directory (or move this one away and train again).")

    def load_state(self):
        self.check_last()
        with open(self.last / "state.json") as handle:
            return json.load(handle)

    def restore(self, model):
        """Loads weights, optimizer slots and RNG states; returns `(state, mining_state)`."""
        state = self.load_state()
        if not (self.last / RNG_FILE).is_file():
            raise ValueError(f"Checkpoint {self.last} has no {RNG_FILE}: it is incomplete or "
                             "damaged. Start the run over in a new --out directory.")
        with open(self.last / RNG_FILE) as handle:
            rng = json.load(handle)
        model.load_weights(self.last / "model.weights.h5")
        saved = np.load(self.last / "optimizer.npz", allow_pickle=False)
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
        set_rng_state(rng, self.last / RNG_FILE)
        mining_state = dict(np.load(self.last / "mining.npz", allow_pickle=False))
        return state, mining_state

    def remove_leftovers(self):
        """Removes what a killed writer left: temp checkpoints and links, and checkpoints `last`
        does not point to. Call only while holding the run directory's lock."""
        remove_orphans(self.out_dir, [".last.tmp-*", ".tmp-*"])
        if not self.dir.is_dir() or self.dir.is_symlink():
            return
        remove_orphans(self.dir, [".tmp-*"])
        if self.last.is_symlink():
            current = os.path.basename(os.readlink(self.last))
        elif os.path.lexists(self.last):  # not a layout this module writes: leave it alone
            return
        else:  # no complete checkpoint yet: any ckpt-* is from a run killed before its first link
            current = None
        remove_orphans(self.dir, [p.name for p in self.dir.glob("ckpt-*") if p.name != current])


def rng_state():
    """The NumPy (legacy global), Python `random` and TensorFlow global generator states as JSON
    values (no pickle: a checkpoint holds data only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    tf_state = tf.random.get_global_generator().state.numpy()
    return {"numpy": {"kind": kind, "keys": np.asarray(keys).tolist(), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
            "tf": {"dtype": tf_state.dtype.name, "state": tf_state.tolist()}}


def set_rng_state(rng, source="RNG state"):
    """Restores the states `rng_state` returned; a ValueError naming `source` if malformed."""
    try:
        n, p, t = rng["numpy"], rng["python"], rng["tf"]
        np.random.set_state((str(n["kind"]), np.array(n["keys"], np.uint32), int(n["pos"]),
                             int(n["has_gauss"]), float(n["cached_gaussian"])))
        random.setstate((int(p["version"]), tuple(int(v) for v in p["internal"]),
                         None if p["gauss_next"] is None else float(p["gauss_next"])))
        tf.random.get_global_generator().reset(np.array(t["state"], np.dtype(t["dtype"])))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{source}: malformed RNG state ({type(error).__name__}: {error}); the "
                         "checkpoint is damaged. Start the run over in a new --out.") from None


class ResumeMismatch(ValueError):
    """A checkpoint that `check_resume` refuses: `settings` lists the configuration keys that differ
    (one string each), `split_differs` says whether the training split does, and `restore` holds the
    checkpoint's values of the differing keys, which the message turns into `tf_netvlad train` flags."""

    def __init__(self, last, settings, split_differs, restore=None):
        self.last, self.settings, self.split_differs = last, list(settings), bool(split_differs)
        self.restore = dict(restore or {})
        problems = self.settings + (["training split: different image lists or positions"] if split_differs else [])
        fixes = []
        if self.restore:
            flags = " ".join(_as_flag(key, value) for key, value in self.restore.items())
            python = ", ".join(f"{key}={value!r}" for key, value in self.restore.items())
            fixes.append(f"resume with the checkpoint's settings ({flags}; Python: {python})")
        if split_differs:
            fixes.append("train on the checkpoint's --dataset")
        super().__init__(f"Cannot resume from {last}: the configuration differs from the checkpoint's "
                         f"({'; '.join(problems)}). To continue it, {' and '.join(fixes)}; to start "
                         "over, choose a new --out (Python: out_dir=).")


def _as_flag(key, value):
    """`tf_netvlad train`'s flag that sets config field `key` to `value` (JSON form, as saved)."""
    flag = flag_name(key)
    if value is True:
        return flag
    if value is False:
        return "--no-" + flag[2:]
    if value is None:
        return f"{flag} none"
    if isinstance(value, (list, tuple)):
        return f"{flag} {'x'.join(str(v) for v in value)}"
    return f"{flag} {value}"


def check_resume(saved, cfg, fingerprint, last):
    """Raises `ResumeMismatch` when `cfg` or the training split differs from the checkpoint's."""
    config = {**RESUME_DEFAULTS, **saved["config"]}
    differing = [key for key in RESUME_KEYS if config.get(key) != jsonable(getattr(cfg, key))]
    settings = [f"{key}: checkpoint={config.get(key)!r}, now={jsonable(getattr(cfg, key))!r}" for key in differing]
    split_differs = saved.get("train_split") != fingerprint["train_split"]
    if settings or split_differs:
        raise ResumeMismatch(last, settings, split_differs, {key: config.get(key) for key in differing})


def check_cycle_size(saved, cycle_size, size_without_share, last):
    """Raises `ResumeMismatch` when the run's refresh cycles (queries per cycle, `cycle_size`) differ
    from the checkpoint's. A checkpoint saved before `refresh_share` existed has no
    `queries_per_cycle`: its cycles were `size_without_share`."""
    before = saved.get("queries_per_cycle", size_without_share)
    if before != cycle_size:
        share = saved["config"].get("refresh_share")
        raise ResumeMismatch(last, [f"refresh cycle: checkpoint={before} queries, now={cycle_size} (set by "
                                    f"refresh_share, checkpoint={share!r}, and the database and validation "
                                    "sizes)"], False, {"refresh_share": share})


def _is_empty(out_dir):
    """True if `out_dir` does not exist or holds nothing but a writer lock file."""
    return not out_dir.is_dir() or all(p.name == LOCK_FILE for p in out_dir.iterdir())


def prepare_out_dir(out_dir, resume):
    """Checks and creates the run directory; the caller holds its lock (`RunDirectory`)."""
    out_dir = Path(out_dir)
    checkpointer = Checkpointer(out_dir)
    if not _is_empty(out_dir) and not resume:
        raise FileExistsError(
            f"`out_dir` {str(out_dir)!r} already holds files (a previous run?). Pass --resume "
            "(Python: resume=True) to continue it, or choose a new --out / out_dir."
        )
    checkpointer.check_last()  # before anything is written or cleaned in there
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpointer.remove_leftovers()
    return out_dir, checkpointer


def prepare_out_dir_multi(out_dir, resume, group):
    """Multi-worker: the chief locks, checks and creates `out_dir`; every worker gets the same
    verdict and the same `resuming` decision (the others only read `out_dir`, to resume).

    Returns `(out_dir, checkpointer, resuming, lock)`; `lock` is the chief's `DirectoryLock`
    (None on the other workers), for the caller to release.
    """
    out_dir, checkpointer, problem, lock = Path(out_dir), Checkpointer(out_dir), None, None
    if group.is_chief:
        try:
            lock = DirectoryLock(out_dir, "training run").acquire()
            out_dir, checkpointer = prepare_out_dir(out_dir, resume)
        except (OSError, ValueError, RuntimeError) as error:
            problem = error
            if lock is not None:
                lock.release()
    code = 0 if problem is None else 1 if isinstance(problem, FileExistsError) else 2
    verdict = group.broadcast(np.array([code, resume and checkpointer.exists()], np.int64))
    if verdict[0] == 1:
        raise problem or FileExistsError(
            f"`out_dir` {str(out_dir)!r} already holds files (a previous run?), says the chief worker. "
            "Pass --resume (Python: resume=True) to continue it, or choose a new out_dir.")
    if verdict[0]:
        raise problem or RuntimeError(
            f"The chief worker cannot write `out_dir` {str(out_dir)!r} (another writer holds it, or "
            "it is not a usable directory); its error message says which.")
    if verdict[1] and not checkpointer.exists():
        raise FileNotFoundError(
            f"The chief resumes from {checkpointer.last}, which this worker (index {group.index}) cannot "
            "read: `out_dir` must be on a filesystem shared by all workers.")
    return out_dir, checkpointer, bool(verdict[1]), lock


class RunDirectory:
    """The run directory of one `train` call, as a context manager.

    On enter: takes the writer lock (single process, or the chief of a multi-worker group),
    checks and creates the directory (`prepare_out_dir`), removes a killed run's temp files.
    On exit: if the run fails and it started in an empty or new directory and wrote no checkpoint
    yet, removes what it created (`RUN_OUTPUTS`, and the directory if it created it), so a retry
    is not refused as "a previous run"; then releases the lock.

    Attributes (after enter): `out_dir`, `checkpointer`, `resuming`, `group`.

    Example:
    >>> with RunDirectory("runs/mine", resume=False) as run:
    ...     train_into(run.out_dir, run.checkpointer)
    """

    def __init__(self, out_dir, resume, group=None):
        self.out_dir, self.resume, self.group = Path(out_dir), bool(resume), group
        self.writes = group is None or group.is_chief
        self.lock, self.fresh, self.checkpointer, self.resuming = None, False, None, False

    def __enter__(self):
        self.fresh = _is_empty(self.out_dir)
        if self.group is not None:
            self.out_dir, self.checkpointer, self.resuming, self.lock = prepare_out_dir_multi(
                self.out_dir, self.resume, self.group)
            return self
        self.lock = DirectoryLock(self.out_dir, "training run").acquire()
        try:
            self.fresh = _is_empty(self.out_dir)
            self.out_dir, self.checkpointer = prepare_out_dir(self.out_dir, self.resume)
        except BaseException:
            self.lock.release()
            raise
        self.resuming = self.resume and self.checkpointer.exists()
        return self

    def __exit__(self, exc_type, exc, traceback):
        try:
            if exc_type is not None and self.fresh and self.writes and not self.checkpointer.exists():
                remove_orphans(self.out_dir, RUN_OUTPUTS)
        finally:
            if self.lock is not None:
                self.lock.release()
        return False
