"""Distributed training: the per-replica tuple input; `train()` under MirroredStrategy on two logical
CPUs against one device; two real MultiWorkerMirroredStrategy worker processes on localhost against
a single-process run, and their agreed refusals (out_dir not empty, unreadable resume directory)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import mean_values
from tf_netvlad.training.tuples import ERROR_MARKER, TuplePipeline

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- per-replica input


def _replica_batches(pipe, workers, worker, replicas=None):
    context = tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=worker,
                                         num_replicas_in_sync=replicas or workers)
    return list(pipe.replica_dataset(context).as_numpy_iterator())


ROWS = np.array([[0, 1, -1, 5, 6, 7], [2, 3, 4, 0, 1, 2], [1, 7, 6, 3, 4, 5], [3, 0, -1, 1, 2, 4],
                 [4, 5, 6, 7, 0, 1]])


def test_replica_batches_split_each_global_batch_in_single_device_order(colour_images):
    root, paths = colour_images
    pipe = TuplePipeline(paths[:5], paths, root, (6, 8), num_rows=6, num_positives=2, num_negatives=3,
                         batch_size=4)
    pipe.assign(ROWS)  # 5 rows: global batches of 4 and 1 rows
    single = list(pipe.dataset().as_numpy_iterator())
    w0, w1 = _replica_batches(pipe, 2, 0), _replica_batches(pipe, 2, 1)
    assert len(w0) == len(w1) == len(single) == 2  # same number of steps on every worker
    assert all(len(b["query"]) == 2 for b in w0 + w1)  # S = ceil(4 / 2) rows on every replica
    for step in range(2):
        joined = {k: np.concatenate([w0[step][k], w1[step][k]]) for k in w0[step]}
        real = joined["positive_mask"].max(axis=1) > 0  # padding rows have no positive
        for key in single[step]:
            np.testing.assert_array_equal(joined[key][real], single[step][key])
    np.testing.assert_array_equal(mean_values(w0[0]["query"]), [0, 20])  # rows 0, 1 on replica 0
    np.testing.assert_array_equal(mean_values(w1[0]["query"]), [10, 30])  # rows 2, 3 on replica 1
    np.testing.assert_array_equal(mean_values(w0[1]["query"]), [40, 0])  # row 4, then padding
    assert w1[1]["positive_mask"].max() == 0 and w1[1]["negatives"].max() == 0  # padding only
    # an odd batch size: S = 2 of 3 rows on replica 0, 1 row + padding on replica 1
    pipe3 = TuplePipeline(paths[:5], paths, root, (6, 8), num_rows=6, num_positives=2, num_negatives=3,
                          batch_size=3)
    pipe3.assign(ROWS)
    q0 = [mean_values(b["query"]).tolist() for b in _replica_batches(pipe3, 2, 0)]
    q1 = [list(b["positive_mask"].max(axis=1)) for b in _replica_batches(pipe3, 2, 1)]
    assert q0 == [[0, 20], [30, 40]] and q1 == [[1, 0], [0, 0]]  # rows 0 1 | 2 -, then 3 4 | - -


def test_replica_batches_resume_mid_epoch_and_two_local_replicas(colour_images):
    root, paths = colour_images
    pipe = TuplePipeline(paths[:5], paths, root, (6, 8), num_rows=6, num_positives=2, num_negatives=3,
                         batch_size=2)
    pipe.assign(ROWS, start_row=2)  # rows 2, 3, 4
    w0, w1 = _replica_batches(pipe, 2, 0), _replica_batches(pipe, 2, 1)
    assert [mean_values(b["query"]).tolist() for b in w0] == [[10], [40]]
    assert [mean_values(b["query"]).tolist() for b in w1] == [[30], [0]]
    assert w1[1]["positive_mask"].max() == 0
    # 2 workers x 2 local replicas, batch 4: worker 1 feeds replicas 2 and 3 (one row each)
    pipe = TuplePipeline(paths[:5], paths, root, (6, 8), num_rows=6, num_positives=2, num_negatives=3,
                         batch_size=4)
    pipe.assign(ROWS)
    w1 = _replica_batches(pipe, 2, 1, replicas=4)
    assert [mean_values(b["query"]).tolist() for b in w1] == [[10], [30], [0], [0]]


def test_replica_batches_bad_image_skip_masks_the_tuple_and_stop_names_the_file(colour_images):
    root, paths = colour_images
    (root / paths[6]).write_bytes(b"not a png")
    for mode in ("skip", "stop"):
        pipe = TuplePipeline(paths[:5], paths, root, (6, 8), num_rows=6, num_positives=2, num_negatives=3,
                             batch_size=4, on_bad_image=mode)
        pipe.assign(ROWS)  # rows 0, 2 and 4 use img6; worker 1 holds rows 2 and 3
        if mode == "skip":
            w1 = _replica_batches(pipe, 2, 1)
            assert len(w1) == 2 and [list(b["positive_mask"].max(axis=1)) for b in w1] == [[0, 1], [0, 0]]
            np.testing.assert_array_equal(mean_values(w1[0]["query"]), [0, 30])  # row 2 masked, row 3 kept
            np.testing.assert_array_equal(mean_values(w1[0]["negatives"][0]), [0, 0, 0])
            np.testing.assert_array_equal(mean_values(w1[0]["negatives"][1]), [10, 20, 40])
            assert pipe.skipped == 1
        else:
            with pytest.raises(tf.errors.InvalidArgumentError, match=f"{ERROR_MARKER} row=2") as info:
                _replica_batches(pipe, 2, 1)
            assert "img6.png" in pipe.describe_failure(info.value)


# --------------------------------------------------------------------------- two worker processes

# Tiny recipe: 50 db / 25 queries (demo scale 0.01), 10 queries per cycle = global batches of 4, 4
# and 2 tuples (the last one leaves worker 1's replica with padding only).
RECIPE = dict(backbone="tiny", weights=None, trainable_from=None, num_clusters=8, image_size=(48, 64),
              init_images=20, init_per_image=20, num_positives=2, num_negatives=4, negative_pool_size=20,
              cache_refresh_queries=10, batch_size=4, optimizer="sgd", lr=0.05, momentum=0.9,
              weight_decay=1e-3, checkpoint_every_steps=0, val_max_queries=None, deterministic=True)

WORKER_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    multi = sys.argv[5] == "multi"
    if multi:  # must exist before any other TensorFlow op
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    import keras
    import numpy as np
    from tf_netvlad.training.train import train

    class SaveWeights(keras.callbacks.Callback):  # after every fit: the last file holds the final weights
        def on_train_end(self, logs=None):
            np.savez(sys.argv[3], *self.model.get_weights())

    summary = train(sys.argv[1], out_dir=sys.argv[2], strategy=strategy if multi else None,
                    callbacks=[SaveWeights()], resume=True, progress=False, verbose=0,
                    epochs=int(sys.argv[4]), **{recipe})
    print(json.dumps({{k: summary.get(k) for k in ("status", "worker", "iterations", "last_mining", "files",
                                                   "images_in_memory")}}))
""")


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _env(tf_config=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _run_workers(script, worker_args, timeout=300):
    """Starts 2 workers on localhost, worker i with arguments `worker_args[i]`; returns their parsed
    last output lines. Kills both on any failure."""
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    procs = []
    for index in range(2):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", script, *map(str, worker_args[index])],
            env=_env(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in procs[len(outputs):]:
            outputs.append(proc.communicate())
    report = "\n".join(f"--- worker {i} (exit {p.returncode}) stderr:\n{err[-4000:]}"
                       for i, (p, (_, err)) in enumerate(zip(procs, outputs)))
    assert all(p.returncode == 0 for p in procs), report
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]


def _train_workers(script, split, out_dir, weights, epochs):
    return _run_workers(script, [(split, out_dir, weights[i], epochs, "multi") for i in range(2)])


def _weights(path):
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


@pytest.mark.slow
def test_two_workers_train_like_one_process_on_the_same_global_batch(tiny_demo, tmp_path):
    """Two MultiWorkerMirroredStrategy workers (1 CPU replica each) train the real `train()` path:
    k-means on the chief, sharded mining, per-replica input, and a resume, and end with identical
    weights equal to a single-process run on the same global batch (batch 4 = 2 + 2 rows). With
    `db_queries` (the CPU recipe's), the split's own queries are extracted in blocks, one per worker,
    and a query that is a database image takes its descriptor from the worker holding that image, as
    the single process takes it from its database pass (without `db_queries` only the blocks are
    used: `test_mining.test_multi_worker_miner_extracts_its_shard_and_mines_the_same_rows`)."""
    from tf_netvlad.models.model_files import load_model

    script = WORKER_SCRIPT.format(recipe=repr(dict(RECIPE, db_queries=True)))
    split = tiny_demo["train_mat"]
    # single process, no strategy, 2 cycles in one go
    ref = subprocess.run([sys.executable, "-c", script, str(split), str(tmp_path / "single"),
                          str(tmp_path / "single.npz"), "2", "single"],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-4000:]
    ref_summary = json.loads(ref.stdout.strip().splitlines()[-1])
    # two workers: 1 cycle, then resumed from the chief's checkpoint for the 2nd cycle
    run = tmp_path / "multi"
    weights = [tmp_path / "worker0.npz", tmp_path / "worker1.npz"]
    first = _train_workers(script, split, run, weights, epochs=1)
    assert [s["iterations"] for s in first] == [3, 3]
    second = _train_workers(script, split, run, weights, epochs=2)
    chief, other = second
    assert chief["worker"] == {"index": 0, "num_workers": 2, "is_chief": True}
    assert other["worker"]["index"] == 1 and other["files"] == {}  # worker 1 writes nothing
    assert chief["iterations"] == other["iterations"] == ref_summary["iterations"] == 6
    # every worker trained and mined from the images decoded once, as the single process did
    assert chief["images_in_memory"] == other["images_in_memory"] == ref_summary["images_in_memory"] == 75
    # (a) identical weights on both workers
    w0, w1 = _weights(weights[0]), _weights(weights[1])
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b)
    # each worker extracted half of the database; the chief's checkpoint holds the same tuples and
    # negative memory as the single-process run
    assert chief["last_mining"]["extracted_db_images"] == other["last_mining"]["extracted_db_images"] == 25
    # only the split's own queries of the cycle are read as query images, each by one worker
    queries_read = [s["last_mining"]["extracted_query_images"] for s in (chief, other, ref_summary)]
    assert queries_read[0] + queries_read[1] == queries_read[2] < 10
    assert ref_summary["last_mining"]["extracted_db_images"] == 50
    for name in ("rows", "neg_cache"):
        np.testing.assert_array_equal(np.load(run / "last" / "mining.npz")[name],
                                      np.load(tmp_path / "single" / "last" / "mining.npz")[name])
    # (b) the single-process weights, up to float summation order: the gradient is the sum of two
    # replica halves instead of one batch sum (relative rounding ~1e-7 per step, 6 steps). The
    # rounding is relative to the gradient's sums, not to each weight, so the tolerance is the
    # array's scale: conv1 ended 1.3e-6 apart on a weight of 1.5e-3 among weights up to 0.27
    # (2026-12-03, its weight gradients as GEMMs), where a replica left out of the sum moves
    # weights by the order of the updates
    single = _weights(tmp_path / "single.npz")
    for a, b in zip(w0, single):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    # (c) training changed the k-means-initialised weights (the chief's init.keras == single's)
    init = load_model(run / "init.keras").get_weights()
    for a, b in zip(init, load_model(tmp_path / "single" / "init.keras").get_weights()):
        np.testing.assert_array_equal(a, b)
    changes = [np.abs(a - b).max() for a, b in zip(w0, init)]
    assert max(changes) > 1e-3, changes
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in (tmp_path / "single").iterdir())


# --------------------------------------------------------------------------- two logical CPUs

MIRRORED_TRAIN_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    cpu = tf.config.list_physical_devices("CPU")[0]  # before TensorFlow initialises its context
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from tf_netvlad.training.train import train

    class SaveWeights(keras.callbacks.Callback):  # after every fit: the file holds the final weights
        def __init__(self, path):
            super().__init__()
            self.path, self.replicas = path, []

        def on_train_end(self, logs=None):
            self.replicas.append(self.model.distribute_strategy.num_replicas_in_sync)
            np.savez(self.path, *self.model.get_weights())

    out, (train_split, val_split, run_dir) = dict(), sys.argv[1:4]
    for name, strategy in [("single", None), ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]:
        saver = SaveWeights(run_dir + "/" + name + ".npz")
        summary = train(train_split, val_split, out_dir=run_dir + "/" + name, strategy=strategy,
                        callbacks=[saver], progress=False, verbose=0, epochs=2, **{recipe})
        out[name] = dict(replicas=saver.replicas, summary=summary)
    print(json.dumps(out))
""")


def _relative_files(run_dir):
    """Paths under a run directory, without TensorBoard event file names (host and time stamped)."""
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                  if "tensorboard" not in p.relative_to(run_dir).parts[1:2] or p.is_dir())


def test_train_under_mirrored_strategy_on_two_cpus_equals_one_device(tiny_demo, tmp_path):
    """`train(strategy=MirroredStrategy(2 logical CPUs))` runs the whole loop (k-means init, mining
    with extraction under the strategy, validation, checkpoints) and ends with the weights of a
    single-device `train()` on the same global batch. 11 queries per cycle with batch 4 give global
    batches of 4, 4 and 3 tuples: the last is split 2 + 1 over the replicas."""
    from tf_netvlad.models.model_files import load_model

    recipe = dict(RECIPE, cache_refresh_queries=11, lr=0.01)
    script = MIRRORED_TRAIN_SCRIPT.format(recipe=repr(recipe))
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_demo["train_mat"]), str(tiny_demo["val_mat"]),
                           str(tmp_path)], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["single"]["replicas"] == [1, 1] and out["mirrored"]["replicas"] == [2, 2]  # one fit per cycle
    single, mirrored = out["single"]["summary"], out["mirrored"]["summary"]
    for summary in (single, mirrored):
        assert summary["status"] == "completed" and summary["epochs_done"] == 2
        assert summary["iterations"] == 6  # 3 steps (4 + 4 + 3 tuples) per cycle
        assert summary["worker"] is None and summary["last_mining"]["num_tuples"] == 11
    # the same k-means initialisation, and the same mined tuples and memory at the last checkpoint
    for a, b in zip(load_model(tmp_path / "single" / "init.keras").get_weights(),
                    load_model(tmp_path / "mirrored" / "init.keras").get_weights()):
        np.testing.assert_array_equal(a, b)
    for name in ("rows", "neg_cache"):
        np.testing.assert_array_equal(np.load(tmp_path / "mirrored" / "last" / "mining.npz")[name],
                                      np.load(tmp_path / "single" / "last" / "mining.npz")[name])
    # Final weights: equal up to float32 summation order. The mirrored step computes each replica's
    # gradient on half the batch and all-reduces the two sums, instead of one batch sum; each step
    # then differs by a few float32 ulps (~1e-7 relative), carried through 6 SGD-momentum steps and
    # the normalisations. Measured: max |difference| 3.9e-7, at most 5e-6 of a tensor's largest
    # value, while training moved the weights by up to 0.08. Bound: 2e-5 of the largest value.
    init = load_model(tmp_path / "single" / "init.keras").get_weights()
    one, two = _weights(tmp_path / "single.npz"), _weights(tmp_path / "mirrored.npz")
    assert len(one) == len(two) == len(init)
    for a, b in zip(one, two):
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-5 * np.abs(a).max())
    assert max(np.abs(a - b).max() for a, b in zip(one, init)) > 1e-2  # training did change them
    # the run directory: the same files, the same epoch records, a loadable best model
    assert _relative_files(tmp_path / "mirrored") == _relative_files(tmp_path / "single")
    assert {"init.keras", "best.keras", "last", "summary.json", "logs/train.csv"} <= set(
        _relative_files(tmp_path / "mirrored"))
    state = json.loads((tmp_path / "mirrored" / "last" / "state.json").read_text())
    assert state["epoch"] == 2 and state["step"] == 0 and state["iterations"] == 6
    assert single["config"] == mirrored["config"]
    assert [h["epoch"] for h in state["history"]] == [0, 1]
    for s, m in zip(json.loads((tmp_path / "single" / "last" / "state.json").read_text())["history"],
                    state["history"]):
        assert s.keys() == m.keys() and s["val_recall@5"] == m["val_recall@5"]
        np.testing.assert_allclose(m["loss"], s["loss"], rtol=1e-5)
    csv_rows = (tmp_path / "mirrored" / "logs" / "train.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 3 and "val_recall@5" in csv_rows[0]
    best = load_model(tmp_path / "mirrored" / "best.keras").get_weights()
    best_single = load_model(tmp_path / "single" / "best.keras").get_weights()
    for a, b in zip(best_single, best):
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-5 * np.abs(a).max())


MIXED_MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from tf_netvlad.training.train import train

    class Inspect(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.first = [w.numpy().copy() for w in self.model.weights]

        def on_train_end(self, logs=None):
            opt = self.model.optimizer
            self.report = dict(
                optimizer=type(opt).__name__, loss_scale=float(opt.dynamic_scale.numpy()),
                replicas=self.model.distribute_strategy.num_replicas_in_sync,
                backbone_compute=self.model.backbone.dtype_policy.compute_dtype,
                netvlad_compute=self.model.netvlad.dtype_policy.compute_dtype,
                finite=bool(all(np.isfinite(w.numpy()).all() for w in self.model.weights)),
                moved=max(float(np.abs(w.numpy() - f).max()) for w, f in zip(self.model.weights, self.first)))

    inspect = Inspect()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    summary = train(sys.argv[1], sys.argv[2], out_dir=sys.argv[3], strategy=strategy, callbacks=[inspect],
                    progress=False, verbose=0, epochs=2, **{recipe})
    print(json.dumps(dict(summary=summary, **inspect.report)))
""")


def test_mixed_precision_train_under_mirrored_strategy_runs_the_whole_loop(tiny_demo, tmp_path):
    """`mixed_float16` under MirroredStrategy through the whole `train()` loop: float16 backbone,
    float32 NetVLAD and descriptors, the loss-scaling optimizer, finite trained weights and a
    reloadable best model. (Not compared with one device: dynamic loss scaling skips a step when the
    float16 gradients overflow, which depends on how the batch is split over the replicas.)"""
    from tf_netvlad.models.model_files import load_model

    recipe = dict(RECIPE, cache_refresh_queries=11, lr=0.01, mixed_precision=True)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", MIXED_MIRRORED_SCRIPT.format(recipe=repr(recipe)),
                           str(tiny_demo["train_mat"]), str(tiny_demo["val_mat"]), str(run)],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = out["summary"]
    assert summary["status"] == "completed" and summary["epochs_done"] == 2 and out["replicas"] == 2
    assert out["optimizer"] == "LossScaleOptimizer" and out["loss_scale"] >= 1
    assert out["backbone_compute"] == "float16" and out["netvlad_compute"] == "float32"
    assert 4 <= summary["iterations"] <= 6  # 6 steps; only an overflowing one is skipped
    assert out["finite"] and out["moved"] > 1e-3
    losses = [float(line.split(",")[1]) for line in (run / "logs" / "train.csv").read_text().splitlines()[1:]]
    assert len(losses) == 2 and all(np.isfinite(losses))
    best = load_model(run / "best.keras", compile=False)
    images = np.random.default_rng(0).uniform(0, 255, (3, 48, 64, 3)).astype("float32")
    descriptors = np.asarray(best(images))
    assert descriptors.dtype == np.float32 and np.isfinite(descriptors).all()
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-3)


# --------------------------------------------------------------------------- agreed refusals

REFUSAL_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    from tf_netvlad.training.train import train

    errors = []
    for out_dir, resume in ((sys.argv[2], False), (sys.argv[3], True)):  # both workers, in this order
        try:
            train(sys.argv[1], out_dir=out_dir, resume=resume, strategy=strategy, progress=False,
                  verbose=0, epochs=1, **{recipe})
            errors.append(None)
        except Exception as error:
            errors.append([type(error).__name__, str(error)])
    print(json.dumps(errors))
""")


def test_multi_worker_refusals_follow_the_chief(tiny_demo, tmp_path):
    """The out_dir checks run on the chief and every worker gets its verdict. Each worker is given
    its own out_dir, so a worker deciding alone would decide differently:
    (1) the chief's out_dir holds a file, worker 1's is empty: both refuse (worker 1 "says the chief");
    (2) resume: the chief's out_dir has a checkpoint, worker 1's does not exist (no shared
    filesystem): worker 1 refuses naming the unreadable checkpoint; the chief reads its checkpoint
    and refuses it as incompatible (a config that differs in every resume key)."""
    chief_full, worker_empty = tmp_path / "chief_full", tmp_path / "worker_empty"
    chief_full.mkdir()
    (chief_full / "stray.txt").write_text("a previous run")
    worker_empty.mkdir()
    chief_resume, worker_missing = tmp_path / "chief_resume", tmp_path / "worker_missing"
    (chief_resume / "last").mkdir(parents=True)
    (chief_resume / "last" / "state.json").write_text(json.dumps({"config": {}, "train_split": "other"}))
    script = REFUSAL_SCRIPT.format(recipe=repr(RECIPE))
    split = tiny_demo["train_mat"]
    chief, other = _run_workers(script, [(split, chief_full, chief_resume), (split, worker_empty, worker_missing)],
                                timeout=120)
    assert chief[0][0] == other[0][0] == "FileExistsError"
    assert "already holds files" in chief[0][1] and "says the chief" not in chief[0][1]
    assert "says the chief worker" in other[0][1] and "resume=True" in other[0][1]
    assert other[1][0] == "FileNotFoundError"
    assert str(worker_missing / "last") in other[1][1] and "index 1" in other[1][1]
    assert "shared by all workers" in other[1][1]
    assert chief[1][0] == "ResumeMismatch" and "Cannot resume from" in chief[1][1]  # a ValueError
    assert "training split" in chief[1][1] and "backbone" in chief[1][1]
    # nothing was written (logs/ is made only after the resume check)
    assert sorted(p.name for p in chief_full.iterdir()) == ["stray.txt"]
    assert list(worker_empty.iterdir()) == [] and not worker_missing.exists()
    assert sorted(p.name for p in chief_resume.iterdir()) == ["last"]
