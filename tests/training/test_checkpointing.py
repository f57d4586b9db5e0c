"""The run directory (tf_netvlad.training.checkpointing): RNG states as JSON (no pickle), `last`
confined to the run, one writer at a time, leftovers of killed runs, nothing left by a failed one."""

import json
import os
import pickle
import random

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.data.test_locking import kill_hard, start_holder
from tf_netvlad.cli import main
from tf_netvlad.data.locking import LOCK_FILE, DirectoryLockedError
from tf_netvlad.models.model import build_model
from tf_netvlad.training import checkpointing, train
from tf_netvlad.training.checkpointing import Checkpointer, RunDirectory

# A recipe the tiny demo split (50 db images, 25 queries) accepts; these tests stop before training.
SMALL = dict(backbone="tiny", weights=None, trainable_from=None, num_clusters=4, image_size=(48, 64),
             init_images=10, init_per_image=10, num_positives=2, num_negatives=2, negative_pool_size=10,
             cache_refresh_queries=10, batch_size=2, val_max_queries=None)


def _draws():
    return (np.random.standard_normal(3).tolist(), [random.random() for _ in range(3)],
            random.gauss(0, 1), tf.random.get_global_generator().normal([3]).numpy().tolist())


def test_rng_states_round_trip_through_json_exactly():
    np.random.seed(5)
    random.seed(6)
    tf.random.set_global_generator(tf.random.Generator.from_seed(7))
    np.random.standard_normal(1)  # leaves a cached Gaussian in NumPy's legacy state
    random.gauss(0, 1)  # and in Python's (gauss_next)
    saved = json.loads(json.dumps(checkpointing.rng_state(), allow_nan=False))
    assert saved["numpy"]["has_gauss"] == 1 and saved["python"]["gauss_next"] is not None
    expected = _draws()
    _draws()  # move every stream on
    checkpointing.set_rng_state(saved)
    assert _draws() == expected
    with pytest.raises(ValueError, match="ckpt/rng.json: malformed RNG state.*damaged"):
        checkpointing.set_rng_state({"numpy": {}}, "ckpt/rng.json")


def _tiny_compiled():
    model = build_model("tiny", num_clusters=2)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    model.optimizer.build(model.trainable_variables)
    return model


def test_checkpoint_files_are_data_only_and_restore(tmp_path):
    model = _tiny_compiled()
    tf.random.set_global_generator(tf.random.Generator.from_seed(1))
    checkpointer = Checkpointer(tmp_path / "run")
    state = {"epoch": 1, "step": 0, "config": {}}
    checkpointer.save(model, state, {"neg_cache": np.arange(6).reshape(3, 2)})
    files = sorted(os.listdir(tmp_path / "run" / "last"))
    assert files == ["mining.npz", "model.weights.h5", "optimizer.npz", "rng.json", "state.json"]
    expected = _draws()
    restored = _tiny_compiled()
    got_state, mining = checkpointer.restore(restored)
    assert got_state == state and mining["neg_cache"].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert _draws() == expected
    for a, b in zip(model.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(a, b)


class _Payload:
    """Unpickling it creates `path`: what a hostile `rng.pkl` could do (any code would do)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _old_run_with_pickle(run, marker):
    """A run folder as tf_netvlad wrote it before: `last` -> checkpoints/ckpt-*, RNG in rng.pkl."""
    ckpt = run / "checkpoints" / "ckpt-0001-000000"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"epoch": 1, "step": 0, "config": {}}))
    (ckpt / "rng.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    os.symlink(os.path.join("checkpoints", ckpt.name), run / "last")


def test_a_pickled_rng_state_is_refused_and_never_unpickled(tmp_path, tiny_demo):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()  # the payload does run when unpickled
    run, marker = tmp_path / "run", tmp_path / "marker"
    _old_run_with_pickle(run, marker)
    with pytest.raises(ValueError, match=r"rng.pkl, a Python pickle, which tf_netvlad no longer "
                                         r"reads: unpickling a file runs any code"):
        Checkpointer(run).load_state()
    with pytest.raises(ValueError, match="rng.pkl"):
        Checkpointer(run).restore(_tiny_compiled())
    with pytest.raises(ValueError, match="rng.pkl"):  # train --resume refuses before any work
        train.train(tiny_demo["train_mat"], out_dir=run, resume=True, progress=False, verbose=0,
                    **SMALL)
    assert not marker.exists()
    assert not (run / "init.keras").exists() and not (run / LOCK_FILE).exists()


def test_last_and_checkpoints_must_stay_inside_the_run(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "state.json").write_text("{}")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for target in (str(elsewhere), os.path.join("checkpoints", "..", "..", "elsewhere")):
        os.symlink(target, run / "last")
        with pytest.raises(ValueError, match=r"links to .*not to a checkpoint in .*altered"):
            Checkpointer(run).load_state()
        os.unlink(run / "last")
    (run / "checkpoints").rmdir()
    os.symlink(elsewhere, run / "checkpoints")
    with pytest.raises(ValueError, match="checkpoints is a link"):
        Checkpointer(run).load_state()
    with pytest.raises(ValueError, match="checkpoints is a link"):  # nothing is cleaned in there
        with RunDirectory(run, resume=True):
            pass
    assert sorted(os.listdir(elsewhere)) == ["state.json"]


def test_the_next_run_removes_leftovers_of_a_killed_one(tmp_path):
    run = tmp_path / "run"
    current = run / "checkpoints" / "ckpt-0002-000004"
    for ckpt in (current, run / "checkpoints" / "ckpt-0002-000002", run / "checkpoints" / ".tmp-x1y2"):
        ckpt.mkdir(parents=True)
        (ckpt / "state.json").write_text("{}")
    os.symlink(os.path.join("checkpoints", current.name), run / "last")
    os.symlink(os.path.join("checkpoints", "ckpt-0002-000002"), run / ".last.tmp-4242")
    (run / ".tmp-abcd.json").write_text("{")
    with RunDirectory(run, resume=True) as directory:
        assert directory.resuming and (run / LOCK_FILE).exists()
        assert sorted(os.listdir(run / "checkpoints")) == [current.name]
        assert sorted(os.listdir(run)) == sorted([LOCK_FILE, "checkpoints", "last"])  # train() makes logs/
    assert sorted(os.listdir(run)) == ["checkpoints", "last"]


def _fail_inside(directory, resume=False, write_checkpoint=False):
    with pytest.raises(RuntimeError, match="simulated"):
        with RunDirectory(directory, resume=resume) as run:
            (run.out_dir / "init.keras").write_bytes(b"k-means init")
            (run.out_dir / "logs").mkdir()  # as `train()` does after its resume check
            (run.out_dir / "logs" / "train.csv").write_text("epoch\n")
            if write_checkpoint:
                (run.out_dir / "checkpoints" / "ckpt-0000-000001").mkdir(parents=True)
                (run.out_dir / "checkpoints" / "ckpt-0000-000001" / "state.json").write_text("{}")
                os.symlink("checkpoints/ckpt-0000-000001", run.out_dir / "last")
            raise RuntimeError("simulated failure")


def test_a_fresh_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path):
    _fail_inside(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    _fail_inside(tmp_path / "empty", resume=True)
    assert os.listdir(tmp_path / "empty") == []
    # kept: a run with a checkpoint to resume, and a directory that held files before
    _fail_inside(tmp_path / "ckpt", write_checkpoint=True)
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["checkpoints", "init.keras", "last", "logs"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "notes.txt").write_text("mine")
    _fail_inside(tmp_path / "old", resume=True)
    assert sorted(os.listdir(tmp_path / "old")) == ["init.keras", "logs", "notes.txt"]


def test_train_failing_after_creating_the_run_leaves_nothing_and_the_retry_hint_names_the_flag(
        tmp_path, tiny_demo, monkeypatch, capsys):
    def failing_miner(*args, **kwargs):
        raise ValueError("simulated failure after the run directory was made")

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(train.mining, "HardNegativeMiner", failing_miner)
        with pytest.raises(ValueError, match="simulated"):
            train.train(tiny_demo["train_mat"], out_dir=run, progress=False, verbose=0, **SMALL)
    assert not run.exists()
    run.mkdir()
    (run / "init.keras").write_bytes(b"a previous run")
    flags = ["--backbone", "tiny", "--weights", "none", "--num-clusters", "4", "--batch-size", "2",
             "--num-negatives", "2", "--negative-pool-size", "10"]
    assert main.main(["train", "--dataset", str(tiny_demo["train_mat"]), "--out", str(run), *flags]) == 2
    error = capsys.readouterr().err
    assert "already holds files" in error and "Pass --resume (Python: resume=True)" in error
    assert sorted(os.listdir(run)) == ["init.keras"]


def test_a_second_training_process_is_refused_naming_the_first(tmp_path, tiny_demo):
    run = tmp_path / "run"
    holder = start_holder(run)
    try:
        with pytest.raises(DirectoryLockedError, match=f"training run .* pid {holder.pid} on host"):
            train.train(tiny_demo["train_mat"], out_dir=run, progress=False, verbose=0, **SMALL)
        assert os.listdir(run) == [LOCK_FILE]
    finally:
        kill_hard(holder)
