"""train_step / test_step, MirroredStrategy equivalence, train(): checkpoints, resume, bad input."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_netvlad.data.pipelines import ImageReadError
from tf_netvlad.defaults import LOSS_REDUCTIONS
from tf_netvlad.models.model import build_model
from tf_netvlad.training import train
from tf_netvlad.training.config import CPU_RECIPE

REPO = Path(__file__).resolve().parents[2]

# A small, fast recipe for the tiny demo data (train: 70 db, 250 queries; 20 queries per epoch).
TINY = dict(backbone="tiny", weights=None, trainable_from=None, num_clusters=8, image_size=(48, 64),
            init_images=40, init_per_image=20, num_positives=2, num_negatives=4, negative_pool_size=40,
            cache_refresh_queries=20, optimizer="sgd", lr=0.01, weight_decay=1e-3, val_max_queries=None)


def _tuple_batch(rng, batch=4, num_pos=2, num_neg=3, size=(24, 32)):
    shape = (batch,) + size + (3,)
    return {
        "query": (rng.random(shape) * 255).astype("float32"),
        "positives": (rng.random((batch, num_pos) + size + (3,)) * 255).astype("float32"),
        "positive_mask": np.array([[1, 0], [1, 1], [0, 1], [1, 1]][:batch], "float32"),
        "negatives": (rng.random((batch, num_neg) + size + (3,)) * 255).astype("float32"),
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from tf_netvlad.demo.dataset import generate_demo_data

    return generate_demo_data(tmp_path_factory.mktemp("demo") / "data", scale=0.1, progress=False)


# --------------------------------------------------------------------------- train_step


@pytest.mark.parametrize("reduction", LOSS_REDUCTIONS)
def test_train_step_loss_equals_reference_on_model_descriptors(reduction):
    keras.utils.set_random_seed(1)
    model = build_model("tiny", num_clusters=4)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    model.set_training_options(loss_reduction=reduction)
    batch = _tuple_batch(np.random.default_rng(0))
    q = model.predict(batch["query"], verbose=0)
    p = model.predict(batch["positives"].reshape((-1, 24, 32, 3)), verbose=0).reshape(4, 2, -1)
    n = model.predict(batch["negatives"].reshape((-1, 24, 32, 3)), verbose=0).reshape(4, 3, -1)
    # NumPy reference of the loss with the masked min over positives
    d2p = ((q[:, None] - p) ** 2).sum(-1)
    d2n = ((q[:, None] - n) ** 2).sum(-1)
    best = np.where(batch["positive_mask"] > 0, d2p, np.inf).min(1)
    hinge = np.maximum(best[:, None] + model.margin - d2n, 0)
    want = hinge.sum() / (4 if reduction == "sum" else max(1, (hinge > 0).sum()))
    logs = model.test_on_batch(batch, return_dict=True)
    assert sorted(logs) == ["loss", "negative_d2", "positive_d2", "violating_triplets"]
    np.testing.assert_allclose(logs["loss"], want, rtol=1e-4)
    np.testing.assert_allclose(logs["violating_triplets"], (hinge > 0).mean(), rtol=1e-6)
    np.testing.assert_allclose(logs["positive_d2"], best.mean(), rtol=1e-4)
    np.testing.assert_allclose(logs["negative_d2"], d2n.mean(), rtol=1e-4)
    first = model.train_on_batch(batch, return_dict=True)["loss"]
    np.testing.assert_allclose(first, want, rtol=1e-4)  # the step reports the pre-update loss
    for _ in range(3):
        model.train_on_batch(batch)
    assert model.test_on_batch(batch, return_dict=True)["loss"] < want
    assert int(model.optimizer.iterations.numpy()) == 4


def test_train_step_masks_fillers_and_rechecks_very_hard_negatives():
    """The paper recipe's step (`violating_only`): `negative_mask` from the pipeline and the very-hard
    exclusion on the step's own descriptors, against a NumPy reference of MATLAB's rule."""
    keras.utils.set_random_seed(3)
    model = build_model("tiny", num_clusters=4)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    model.set_training_options(loss_reduction="mean_violating", exclude_very_hard=True)
    batch = _tuple_batch(np.random.default_rng(5))
    batch["negatives"][:, 0] = batch["query"] * 0.95  # a very hard negative in every tuple
    batch["negative_mask"] = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 0]], "float32")
    q, p, n = (np.asarray(t) for t in model.tuple_descriptors(batch))
    d2p = ((q[:, None] - p) ** 2).sum(-1)
    d2n = ((q[:, None] - n) ** 2).sum(-1)
    best = np.where(batch["positive_mask"] > 0, d2p, np.inf).min(1)
    counted = (batch["negative_mask"] > 0) & (d2n >= best[:, None])
    hinge = np.maximum(best[:, None] + model.margin - d2n, 0) * counted
    assert (d2n[:, 0] < best).all() and (hinge > 0).sum() >= 1  # the case exercises both rules
    logs = model.test_on_batch(batch, return_dict=True)
    np.testing.assert_allclose(logs["loss"], hinge.sum() / (hinge > 0).sum(), rtol=1e-4)
    np.testing.assert_allclose(logs["violating_triplets"], (hinge > 0).sum() / counted.sum(), rtol=1e-5)


def test_weight_decay_is_coupled_l2_on_kernels():
    keras.utils.set_random_seed(2)
    batch = _tuple_batch(np.random.default_rng(1))
    batch["negatives"] = batch["query"][:, None].repeat(3, axis=1) * 0  # any content
    model = build_model("tiny", num_clusters=4)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.set_training_options(weight_decay=0.5)
    with tf.GradientTape() as tape:
        y_pred = model.tuple_descriptors(batch, training=True)
        loss, _, _, _ = model._loss_and_stats(batch, y_pred)
    grads = tape.gradient(loss, model.trainable_variables)
    before = [v.numpy() for v in model.trainable_variables]
    model.train_on_batch(batch)
    for var, old, grad in zip(model.trainable_variables, before, grads):
        decay = 0.5 * old if old.ndim >= 2 else 0.0
        g = 0.0 if grad is None else grad.numpy()
        np.testing.assert_allclose(var.numpy(), old - 0.1 * (g + decay), atol=2e-5)


def test_mixed_precision_train_step_keeps_float32_descriptors():
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_model("tiny", num_clusters=4)
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        batch = _tuple_batch(np.random.default_rng(3))
        q, p, n = model.tuple_descriptors(batch)
        assert q.dtype == tf.float32 and n.shape == (4, 3, 4 * 64)
        logs = model.train_on_batch(batch, return_dict=True)
        assert np.isfinite(logs["loss"]) and logs["loss"] > 0
    finally:
        keras.config.set_dtype_policy(policy)


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from tf_netvlad.models.model import build_model

    rng = np.random.default_rng(0)
    def batch(b):
        return {"query": (rng.random((b, 24, 32, 3)) * 255).astype("float32"),
                "positives": (rng.random((b, 2, 24, 32, 3)) * 255).astype("float32"),
                "positive_mask": np.tile([[1, 0], [1, 1], [0, 1]], (2, 1))[:b].astype("float32"),
                "negatives": (rng.random((b, 3, 24, 32, 3)) * 255).astype("float32")}
    # the second batch has 3 tuples, split 2 + 1 over the replicas (Keras builds on the first batch,
    # which must split evenly)
    first, second = batch(4), batch(3)
    dataset = tf.data.Dataset.from_tensors(first).concatenate(tf.data.Dataset.from_tensors(second))
    keras.utils.set_random_seed(0)
    init = build_model("tiny", num_clusters=4).get_weights()
    out = {}
    for name, strategy in [("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                           ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))]:
        for reduction in ("sum", "mean_violating"):
            with strategy.scope():
                model = build_model("tiny", num_clusters=4)
                model.set_weights(init)
                model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
                model.set_training_options(loss_reduction=reduction, weight_decay=1e-2)
            losses = model.fit(dataset, epochs=2, verbose=0).history["loss"]
            out[f"{name}_{reduction}"] = {"losses": losses, "replicas": strategy.num_replicas_in_sync,
                                          "weights": [w.tolist() for w in model.get_weights()]}
    json.dump(out, sys.stdout)
""")


def test_mirrored_strategy_on_two_cpus_matches_one_device():
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for reduction in LOSS_REDUCTIONS:
        one, two = out[f"one_{reduction}"], out[f"two_{reduction}"]
        assert one["replicas"] == 1 and two["replicas"] == 2
        np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-4)
        for a, b in zip(one["weights"], two["weights"]):
            np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-4, atol=1e-6)
    # the two reductions really differ (so the test would notice a wrong normaliser)
    assert out["one_sum"]["losses"][0] != pytest.approx(out["one_mean_violating"]["losses"][0])


# --------------------------------------------------------------------------- train()


def test_train_writes_artifacts_and_checkpoint_state(demo, tmp_path):
    # the paper recipe's length is in passes: 0.1 of 250 queries in cycles of 20 = 2 cycles
    summary = train.train(demo["train_mat"], demo["val_mat"], out_dir=tmp_path / "run", passes=0.1,
                          checkpoint_every_steps=2, progress=False, verbose=0, **TINY)
    assert summary["cycles_planned"] == 2 and summary["passes_requested"] == 0.1
    run = tmp_path / "run"
    for name in ("init.keras", "best.keras", "summary.json", "logs/train.csv", "last/state.json"):
        assert (run / name).exists(), name
    assert os.path.islink(run / "last") and len(list((run / "checkpoints").iterdir())) == 1
    state = json.loads((run / "last" / "state.json").read_text())
    assert state["epoch"] == 2 and state["step"] == 0
    assert state["iterations"] == summary["iterations"] == 2 * 5  # 20 tuples / batch 4, 2 cycles
    memory = np.load(run / "last" / "mining.npz")["neg_cache"]
    assert memory.shape == (250, 4) and (memory >= 0).sum(axis=1).max() == 4  # all training queries
    assert summary["status"] == "completed" and summary["epochs_done"] == 2
    assert set(summary["best"]) >= {"val_recall@1", "val_recall@5", "val_recall@10", "loss", "lr"}
    # init.keras and best.keras are the models whose validation recalls the summary reports:
    # evaluated again from the files, they give the same numbers, and training moved the weights.
    # (10 steps do not beat the k-means init reliably: val recall@1 init -> best over data seeds
    # 0-2 x training seeds 43-45 went .57->.60, .60->.57, .67->.53, .70->.60, .67->.70, .70->.60,
    # .70->.57, and recall@5 starts at .9-1.0; the gain is asserted by
    # test_short_training_raises_recall_on_tiny_demo_data.)
    from tf_netvlad.data.split_loading import load_split
    from tf_netvlad.evaluation.recall import evaluate
    from tf_netvlad.models.model_files import load_model

    val, models = load_split(demo["val_mat"]), {}
    for name, want in (("init", summary["init_val"]),
                       ("best", {k[4:]: v for k, v in summary["best"].items() if k.startswith("val_")})):
        models[name] = load_model(run / f"{name}.keras", compile=False)
        assert models[name].training_image_size == "48x64"  # TINY's image_size, recorded for evaluate
        got = evaluate(models[name], val, image_size=TINY["image_size"], ns=(1, 5, 10), progress=False)
        assert [got[f"recall@{n}"] for n in (1, 5, 10)] == pytest.approx(
            [want[f"recall@{n}"] for n in (1, 5, 10)]), name
    moved = [np.abs(a - b).max() for a, b in zip(models["init"].get_weights(), models["best"].get_weights())]
    assert min(moved) > 1e-5, moved  # every weight (convs, assignment, centroids) was trained
    csv = (run / "logs" / "train.csv").read_text().splitlines()
    assert "val_recall@5" in csv[0] and len(csv) == 3
    with pytest.raises(FileExistsError, match="resume=True"):
        train.train(demo["train_mat"], out_dir=run, epochs=1, progress=False, verbose=0, **TINY)
    with pytest.raises(ValueError, match="num_negatives: checkpoint=4, now=3"):
        train.train(demo["train_mat"], out_dir=run, resume=True, epochs=3, progress=False, verbose=0,
                       **dict(TINY, num_negatives=3))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(demo, tmp_path):
    run = tmp_path / "run"
    train.train(demo["train_mat"], out_dir=run, epochs=1, progress=False, verbose=0, **TINY)
    good = np.load(run / "last" / "optimizer.npz")["v00000"]
    with pytest.raises(FloatingPointError, match="NaN/inf at epoch 1.*last good checkpoint"):
        train.train(demo["train_mat"], out_dir=run, epochs=3, resume=True, progress=False, verbose=0,
                       **dict(TINY, lr=1e30))
    state = json.loads((run / "last" / "state.json").read_text())
    assert state["epoch"] == 1 and np.load(run / "last" / "optimizer.npz")["v00000"] == good
    model = build_model("tiny", num_clusters=8)
    model.load_weights(run / "last" / "model.weights.h5")
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_bad_image_stop_names_file_and_skip_counts(demo, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(demo["root"], root)
    from tf_netvlad.data.split_loading import load_split

    split = load_split(root / "demo_train.mat")
    bad = root / split.db_paths[3]
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageReadError, match=split.db_paths[3]):
        train.train(split, out_dir=tmp_path / "stop", epochs=1, progress=False, verbose=0,
                       **dict(TINY, init_images=5))
    summary = train.train(split, out_dir=tmp_path / "skip", epochs=1, progress=False, verbose=0,
                             on_bad_image="skip", **dict(TINY, init_images=5))
    assert summary["status"] == "completed" and summary["images_skipped_in_cache"] == 1
    rows = np.load(tmp_path / "skip" / "last" / "mining.npz")["neg_cache"]
    assert 3 not in rows


def test_time_limit_stops_after_a_step_and_resume_continues(demo, tmp_path, caplog):
    """A limit used up by the set-up (documented in `TrainConfig`): one step, a warning, stop."""
    run = tmp_path / "run"
    with caplog.at_level("WARNING", logger="tf_netvlad.training.train"):
        summary = train.train(demo["train_mat"], out_dir=run, epochs=50, time_limit_s=1e-3, progress=False,
                              verbose=0, **TINY)
    assert summary["status"] == "time_limit" and summary["iterations"] == 1
    assert "used up before the first training step" in caplog.text and "--time-limit-s" in caplog.text
    summary = train.train(demo["train_mat"], out_dir=run, epochs=2, resume=True, progress=False, verbose=0,
                             **TINY)
    assert summary["status"] == "completed" and summary["iterations"] == 10


class _HideImages(keras.callbacks.Callback):
    """Moves the image folder away for each refresh cycle's `fit` (its steps, the cache refresh of
    the next cycle's tuples and the validation) and back after it."""

    def __init__(self, root):
        super().__init__()
        self.root, self.cycles = root, 0

    def on_train_begin(self, logs=None):
        os.rename(self.root / "images", self.root / "hidden")

    def on_train_end(self, logs=None):
        os.rename(self.root / "hidden", self.root / "images")
        self.cycles += 1


def test_training_reads_its_images_from_memory_after_decoding_them_once(demo, tmp_path, caplog):
    import shutil

    from tf_netvlad.data.split_loading import load_split

    root = tmp_path / "copy"
    shutil.copytree(demo["root"], root)
    train_split, val_split = load_split(root / "demo_train.mat"), load_split(root / "demo_val.mat")
    count = len(set(train_split.db_paths) | set(train_split.query_paths)
                | set(val_split.db_paths) | set(val_split.query_paths))
    hide = _HideImages(root)  # the steps, refreshes and validations must run without the files
    with caplog.at_level("INFO", logger="tf_netvlad.data.decoded"):
        summary = train.train(train_split, val_split, out_dir=tmp_path / "memory", epochs=2, progress=False,
                              verbose=0, callbacks=[hide], **TINY)
    assert summary["status"] == "completed" and summary["iterations"] == 10 and hide.cycles == 2
    assert summary["images_in_memory"] == count
    # 48x64x3 float32 per image
    assert f"Decoding the {count} training and validation images into memory ({count * 36864 / 2**20:.0f} MiB)" \
        in caplog.text
    # the same run reading the files fails: the test would see a run that reads them
    with pytest.raises((ImageReadError, FileNotFoundError, tf.errors.OpError)):
        train.train(train_split, val_split, out_dir=tmp_path / "files", epochs=2, progress=False, verbose=0,
                    callbacks=[_HideImages(root)], **dict(TINY, image_cache_mb=0))
    if (root / "hidden").exists():
        os.rename(root / "hidden", root / "images")
    caplog.clear()
    with caplog.at_level("INFO", logger="tf_netvlad.data.decoded"):
        summary = train.train(train_split, out_dir=tmp_path / "small_budget", epochs=1, progress=False,
                              verbose=0, **dict(TINY, image_cache_mb=1))
    assert summary["images_in_memory"] == 0
    assert "Reading the training images from their files: decoded they need" in caplog.text
    assert "image_cache_mb=1 (--image-cache-mb)" in caplog.text


def test_budget_schedule_and_augmentation_run_through_train(demo, tmp_path):
    # 2 cycles of 5 steps: the budget is 10 steps, so the rate logged at the end of cycle 0 is the
    # one set before step 4 (progress 0.4) and at the end of cycle 1 the one before step 9.
    from tf_netvlad.training.budget_schedule import budget_learning_rate

    summary = train.train(demo["train_mat"], out_dir=tmp_path / "run", epochs=2, lr_schedule="budget",
                          augment=True, progress=False, verbose=0, **TINY)
    assert summary["status"] == "completed" and summary["iterations"] == 10
    log = (tmp_path / "run" / "logs" / "train.csv").read_text().splitlines()
    lrs = [float(row.split(",")[log[0].split(",").index("lr")]) for row in log[1:]]
    np.testing.assert_allclose(lrs, [budget_learning_rate(0.01, 0.4), budget_learning_rate(0.01, 0.9)],
                               rtol=1e-5)


def test_database_images_train_as_queries_and_a_resume_must_keep_the_option(demo, tmp_path):
    from tf_netvlad.data.split_loading import load_split

    split = load_split(demo["train_mat"])
    summary = train.train(demo["train_mat"], out_dir=tmp_path / "run", epochs=1, db_queries=True,
                          progress=False, verbose=0, **TINY)
    # independent count from the positions: queries, then db images, with another db image within 10 m
    d2_q = ((split.query_utm[:, None] - split.db_utm[None]) ** 2).sum(-1)
    d2_db = ((split.db_utm[:, None] - split.db_utm[None]) ** 2).sum(-1)
    np.fill_diagonal(d2_db, np.inf)
    want = int((d2_q.min(1) <= 100).sum() + (d2_db.min(1) <= 100).sum())
    assert want > split.num_queries and summary["training_queries"] == want
    assert summary["iterations"] == 5  # one cycle of cache_refresh_queries = 20 queries, 4 per batch
    with pytest.raises(ValueError, match="db_queries"):
        train.train(demo["train_mat"], out_dir=tmp_path / "run", epochs=2, resume=True, progress=False,
                    verbose=0, **TINY)


def test_fit_whitening_appends_whitening(demo):
    from tf_netvlad.data.split_loading import load_split
    from tf_netvlad.models.initialization import fit_whitening

    split = load_split(demo["train_mat"])
    model = build_model("tiny", num_clusters=2)
    white = fit_whitening(model, split.db_paths, root=split.root, image_size=(48, 64),
                          num_components=16, max_images=40, progress=False)
    desc = white.predict(np.zeros((2, 48, 64, 3), "float32") + 100, verbose=0)
    assert desc.shape == (2, 16) and np.allclose(np.linalg.norm(desc, axis=1), 1, atol=1e-5)


def test_config_validation_and_no_positive_split(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        train.TrainConfig(image_size=640)
    with pytest.raises(ValueError, match="loss_reduction|reduction"):
        train.TrainConfig(loss_reduction="mean")
    with pytest.raises(ValueError, match="`image_cache_mb` must be an int >= 0. Received: image_cache_mb=-1"):
        train.TrainConfig(image_cache_mb=-1)
    for share in (0, 1, 1.5, "0.2"):
        with pytest.raises(ValueError, match=r"`refresh_share` must be a number in \(0, 1\) or None"):
            train.TrainConfig(refresh_share=share)
    from tf_netvlad.data.places import PlaceSplit

    far = PlaceSplit(name="far", db_paths=("a.jpg", "b.jpg"), db_utm=np.array([[0.0, 0], [1, 0]]),
                     query_paths=("q.jpg",), query_utm=np.array([[500.0, 0]]))
    with pytest.raises(ValueError, match="Training split 'far' .*its only query has no database image within 10 m"):
        train.train(far, out_dir=tmp_path / "run", progress=False, **TINY)


# --------------------------------------------------------------------------- end to end


# Held-out configurations (`demo.configs.CONFIGS`, never used to tune the CPU recipe), shrunk to a
# CI-sized run: (config, dataset scale, refresh cycles, queries per cycle).
HELD_OUT_RUNS = {"small": ("small", 0.25, 6, 400), "other": ("other", 0.25, 6, 400)}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HELD_OUT_RUNS))
def test_short_training_raises_recall_on_held_out_data(name, tmp_path):
    """The product's CPU recipe (`training.CPU_RECIPE`, every default), shortened to a fixed number of
    steps, must clearly beat its k-means-initialised model on the test town of a generated
    configuration the recipe was not tuned on (issue 11: generality is measured, not assumed)."""
    from tf_netvlad.data.split_loading import load_split
    from tf_netvlad.demo.dataset import generate_demo_data
    from tf_netvlad.evaluation.recall import evaluate
    from tf_netvlad.models.model_files import load_model

    config, scale, cycles, per_cycle = HELD_OUT_RUNS[name]
    # the training and validation towns scaled down; 200 test queries, so that a gain of a few
    # queries is not noise (50 would be)
    data = generate_demo_data(tmp_path / "data", config=config, scale=scale, progress=False,
                              sizes={"test_queries": 200}, workers=2)
    recipe = dict(CPU_RECIPE, epochs=cycles, cache_refresh_queries=per_cycle, time_limit_s=None)
    summary = train.train(data["train_mat"], data["val_mat"], out_dir=tmp_path / "run", progress=False,
                          verbose=0, **recipe)
    test = load_split(data["test_mat"])
    size = recipe["image_size"]
    ns = (1, 5, 10)
    before = evaluate(load_model(tmp_path / "run" / "init.keras"), test, image_size=size, ns=ns,
                      progress=False)
    after = evaluate(load_model(tmp_path / "run" / "best.keras"), test, image_size=size, ns=ns,
                     progress=False)
    gains = {n: after[f"recall@{n}"] - before[f"recall@{n}"] for n in ns}
    print(f"{name}: test recall@1 {before['recall@1']:.3f} -> {after['recall@1']:.3f}, "
          f"gains {gains}")  # shown with pytest -rA
    assert summary["epochs_done"] == cycles and summary["iterations"] == cycles * per_cycle // 4
    # 600 steps are short: which model they reach depends on every float rounding (the same run
    # with TensorFlow's own kernels instead of oneDNN's, or another training seed, is another
    # trajectory). Measured with the recipe's query augmentation (points of recall@1 / @5 / @10
    # gained over the init, 200 test queries; training seeds 43 (the default), 1, 2, 3):
    #   small: +18.0/+16.5/+14.5, +8.0/+2.0/+3.0, +4.5/+7.5/+3.0, +9.0/+10.0/+7.5
    #   other: +9.5/+8.5/+5.0, +7.0/+9.5/+0.0, +5.5/+3.5/+3.5, +6.0/+9.0/+12.0
    # (with margin 0.1; with the recipe's 0.3 since 2026-12-02, seed 43: small +10.5/+11.5/+10.0,
    # other +9.5/+2.0/+0.0), so no single N at one seed is asserted (@5 gained +2.0 in two runs).
    # Asserted: about half of the smallest gains, at recall@1 (+4.5) and on average over N = 1, 5,
    # 10 (+3.8).
    assert gains[1] >= 0.02 - 1e-9, (before, after)
    assert sum(gains.values()) / len(ns) >= 0.02 - 1e-9, (before, after)


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from tf_netvlad.training.train import train
    config = dict({tiny}, epochs=6, checkpoint_every_steps=1, deterministic=True)
    train("{train}", "{val}", out_dir=sys.argv[1], resume=True, progress=False, verbose=0, **config)
""")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(demo, tmp_path):
    script = KILL_SCRIPT.format(tiny=repr(TINY), train=demo["train_mat"], val=demo["val_mat"])
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")

    def run(out_dir):
        return subprocess.run([sys.executable, "-c", script, str(out_dir)], env=env, capture_output=True,
                              text=True, timeout=600)

    reference = run(tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", script, str(killed_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = killed_dir / "last" / "state.json"
    deadline = time.monotonic() + 300
    state = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            state = None
        if state and state["epoch"] >= 2 and state["step"] >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state and state["epoch"] >= 2 and state["step"] >= 2, "no mid-epoch checkpoint before the end"
    assert not (killed_dir / "summary.json").exists()  # really interrupted
    killed_at = json.loads(state_file.read_text())
    resumed = run(killed_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref_sum = json.loads((tmp_path / "reference" / "summary.json").read_text())
    res_sum = json.loads((killed_dir / "summary.json").read_text())
    assert res_sum["iterations"] == ref_sum["iterations"] == 6 * 5 >= killed_at["iterations"]
    assert [h["epoch"] for h in res_sum_history(killed_dir)] == list(range(6))
    for name in ("model.weights.h5",):
        ref_model, res_model = build_model("tiny", num_clusters=8), build_model("tiny", num_clusters=8)
        ref_model.load_weights(tmp_path / "reference" / "last" / name)
        res_model.load_weights(killed_dir / "last" / name)
        for a, b in zip(ref_model.get_weights(), res_model.get_weights()):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    for name in ("optimizer.npz", "mining.npz"):
        ref, res = np.load(tmp_path / "reference" / "last" / name), np.load(killed_dir / "last" / name)
        for key in ref.files:
            np.testing.assert_allclose(res[key], ref[key], rtol=1e-5, atol=1e-6)


def res_sum_history(run_dir):
    return json.loads((run_dir / "last" / "state.json").read_text())["history"]


def test_extra_callbacks_run_in_every_cycle_and_summary_reports_the_cache(demo, tmp_path):
    class Count(keras.callbacks.Callback):
        ends, batches = 0, 0

        def on_train_batch_end(self, batch, logs=None):
            Count.batches += 1

        def on_train_end(self, logs=None):
            Count.ends += 1

    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train.train(demo["train_mat"], out_dir=tmp_path / "run", epochs=2, progress=False,
                              verbose=2, callbacks=[Count()], **TINY)
    assert Count.ends == 2 and Count.batches == summary["iterations"] == 10  # one fit per cycle
    # each cycle's dataset declares its 5 batches: Keras never runs out of data (issue 11)
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    assert summary["worker"] is None  # single process: no multi-worker group
    mining_stats = summary["last_mining"]
    assert mining_stats["cycle"] == 1 and mining_stats["num_tuples"] == 20
    assert mining_stats["extracted_db_images"] == 70 and mining_stats["extracted_query_images"] == 20


def test_matlab_refresh_schedule_trains_growing_cycles(tiny_demo, tmp_path):
    """`refresh_slowdown` (the paper recipe's default): a refresh at every pass end and cycles that
    double with each LR drop, so a cycle can be larger than `cache_refresh_queries`."""
    recipe = dict(TINY, cache_refresh_queries=10, negative_pool_size=20, lr_decay_every=1.0,
                  lr_decay_factor=0.5, checkpoint_every_steps=0)
    run = tmp_path / "run"
    summary = train.train(tiny_demo["train_mat"], out_dir=run, epochs=4, progress=False, verbose=0,
                             **recipe)
    count = summary["training_queries"]
    assert 20 < count <= 30 and summary["refresh_slowdown"] is True
    sizes = [10, 10, count - 20, 20]  # pass 0 in cycles of 10 and the rest; pass 1 in cycles of 20
    assert summary["iterations"] == sum(-(-s // 4) for s in sizes)  # batch 4
    rows = np.load(run / "last" / "mining.npz")["rows"]
    assert len(rows) == 20 and len(set(rows[:, 0].tolist())) == 20  # the last cycle: 20 queries
    lrs = [float(line.split(",")[2]) for line in (run / "logs" / "train.csv").read_text().splitlines()[1:]]
    assert lrs == pytest.approx([0.01, 0.01, 0.01, 0.005])


def test_refresh_share_lengthens_cycles_and_a_resume_compares_the_cycle_size(demo, tmp_path):
    """`refresh_share` on the tiny demo split (70 db images, no query is a database image, tuples of
    1 + 2 + 4 images): share 0.3 gives 3·7·0.3 − 0.7 = 5.6 per query and ceil(70·0.7 / 5.6) = 9
    queries per cycle instead of `cache_refresh_queries` = 4. A resume whose cycles would differ is
    refused, naming the flag; a checkpoint saved before the option (no cycle size, no share) resumes
    when its cycles are the same, and only then. The validation at each cycle's end counts with the
    refresh: with the demo's validation split (20 db images, 30 queries) ceil(120·0.7 / 5.6) = 15."""
    run = tmp_path / "run"
    recipe = dict(TINY, cache_refresh_queries=4)
    summary = train.train(demo["train_mat"], out_dir=run, epochs=1, refresh_share=0.3, progress=False,
                          verbose=0, **recipe)
    assert summary["queries_per_epoch"] == 9 and summary["iterations"] == 3  # ceil(9 / 4) steps
    state_file = run / "last" / "state.json"
    assert json.loads(state_file.read_text())["queries_per_cycle"] == 9
    with pytest.raises(ValueError, match=r"refresh cycle: checkpoint=9 queries, now=4 \(set by refresh_share.*--refresh-share 0.3"):
        train.train(demo["train_mat"], out_dir=run, epochs=2, resume=True, progress=False, verbose=0, **recipe)
    summary = train.train(demo["train_mat"], out_dir=run, epochs=2, resume=True, refresh_share=0.3,
                          progress=False, verbose=0, **recipe)
    assert summary["status"] == "completed" and summary["iterations"] == 6

    state = json.loads(state_file.read_text())  # as written before `refresh_share` existed
    del state["queries_per_cycle"], state["config"]["refresh_share"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"refresh cycle: checkpoint=4 queries, now=9 .*--refresh-share none"):
        train.train(demo["train_mat"], out_dir=run, epochs=3, resume=True, refresh_share=0.3,
                    progress=False, verbose=0, **recipe)
    summary = train.train(demo["train_mat"], out_dir=run, epochs=3, resume=True, progress=False, verbose=0,
                          **recipe)
    assert summary["status"] == "completed" and summary["iterations"] == 7  # + one cycle of 4

    summary = train.train(demo["train_mat"], demo["val_mat"], out_dir=tmp_path / "val", epochs=1,
                          refresh_share=0.3, progress=False, verbose=0, **recipe)
    assert summary["queries_per_epoch"] == 15 and summary["iterations"] == 4


def test_resume_treats_checkpoints_without_refresh_slowdown_as_the_fixed_schedule(tmp_path):
    from tf_netvlad.training.checkpointing import check_resume
    from tf_netvlad.training.config import config_json

    fixed = train.TrainConfig(**dict(TINY, refresh_slowdown=False))
    saved_config = config_json(fixed)
    del saved_config["refresh_slowdown"]  # a checkpoint written before the option existed
    fingerprint = {"train_split": "abc"}
    saved = {"config": saved_config, "train_split": "abc"}
    check_resume(saved, fixed, fingerprint, tmp_path)  # accepted
    with pytest.raises(ValueError, match="refresh_slowdown: checkpoint=False, now=True"):
        check_resume(saved, train.TrainConfig(**TINY), fingerprint, tmp_path)
