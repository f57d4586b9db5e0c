"""`models.streams`: a batch run as independent parts side by side, and the process setting.

The parts' sizes are checked against hand-computed splits; the model's descriptors and its step's
gradients in two streams against one stream; the thread pools in fresh processes (they are fixed
when TensorFlow's runtime starts) and the `tf_netvlad --cpu-streams` flag through the console script.
"""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_netvlad.models import extract, streams
from tf_netvlad.models.model import NetVLADModel, build_model


@pytest.mark.parametrize("value, expected", [("auto", "auto"), (" AUTO ", "auto"), ("2", 2), (1, 1), (3.0, 3)])
def test_parse_streams_accepts_auto_and_whole_numbers(value, expected):
    assert streams.parse_streams(value) == expected


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "two", None, 0])
def test_parse_streams_refuses_anything_else(value):
    with pytest.raises(ValueError, match=r"cpu streams must be 'auto' or a whole number of at least 1"):
        streams.parse_streams(value)


# (images, streams) -> the parts' sizes: floor((i + 1) n / streams) - floor(i n / streams); a part
# that would be empty (fewer images than streams) runs on one image, its output dropped
@pytest.mark.parametrize("n, count, sizes", [(5, 2, [2, 3]), (6, 2, [3, 3]), (5, 3, [1, 2, 2]),
                                             (4, 3, [1, 1, 2]), (1, 2, [1, 1]), (2, 3, [1, 1, 1]),
                                             (32, 2, [16, 16]), (3, 1, [3])])
def test_in_streams_parts_hand_computed(n, count, sizes):
    seen = []

    def fn(part):  # a per-image function: each row's own sum and its square
        seen.append(int(part.shape[0]))
        total = tf.reduce_sum(part, axis=1, keepdims=True)
        return tf.concat([total, total ** 2], axis=1)

    images = tf.constant(np.arange(n * 3, dtype="float32").reshape(n, 3))
    out = streams.in_streams(fn, images, count).numpy()
    assert seen == sizes
    rows = np.arange(n * 3, dtype="float32").reshape(n, 3).sum(1)
    np.testing.assert_allclose(out, np.stack([rows, rows ** 2], 1), rtol=1e-6)


def test_in_streams_inside_a_function_of_unknown_batch_size():
    fn = tf.function(lambda x: streams.in_streams(lambda part: part * 2.0, x, 2),
                     input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    for n in (1, 2, 7):
        x = np.arange(2 * n, dtype="float32").reshape(n, 2)
        np.testing.assert_array_equal(fn(tf.constant(x)).numpy(), 2 * x)


def test_stream_count_defaults_to_one():
    assert streams.stream_count() == 1  # this process never configured streams (conftest)


@pytest.fixture
def two_streams(monkeypatch):
    """The model and extraction split batches in two, as after `configure_streams(2)` (the split
    does not need the thread pools; only its speed does)."""
    monkeypatch.setitem(streams._state, "streams", 2)


def _tuple_batch(seed=0, size=(48, 64)):
    rng = np.random.default_rng(seed)
    return {"query": tf.constant((rng.random((4,) + size + (3,)) * 255).astype("float32")),
            "positives": tf.constant((rng.random((4, 2) + size + (3,)) * 255).astype("float32")),
            "positive_mask": tf.constant([[1, 0], [1, 1], [0, 1], [1, 1]], tf.float32),
            "negatives": tf.constant((rng.random((4, 3) + size + (3,)) * 255).astype("float32"))}


def test_descriptors_and_gradients_in_two_streams_equal_one(two_streams):
    keras.utils.set_random_seed(2)
    model = build_model("tiny_s2", num_clusters=4, margin=1e3)  # every negative violates: all train
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    images = np.random.default_rng(1).random((5, 48, 64, 3)).astype("float32") * 255
    batch = _tuple_batch()
    two = {"predict": extract.make_predict_fn(model, (48, 64))(tf.constant(images)).numpy()}
    two["full"], _, two["loss"], _ = model._gradients(batch, sparse=False)
    two["sparse"], _, _, _ = model._gradients(batch, sparse=True)
    streams._state["streams"] = 1
    one = {"predict": model(images).numpy()}
    one["full"], _, one["loss"], _ = model._gradients(batch, sparse=False)
    np.testing.assert_allclose(two["predict"], one["predict"], atol=1e-6)
    np.testing.assert_allclose(float(two["loss"]), float(one["loss"]), rtol=1e-5)
    assert float(one["loss"]) > 0
    for key in ("full", "sparse"):
        for variable, a, b in zip(model.trainable_variables, one["full"], two[key]):
            scale = np.abs(a.numpy()).max()
            assert scale > 0, variable.name
            np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-4 * scale, err_msg=f"{key} {variable.name}")


def test_a_training_batch_normalisation_keeps_one_stream(two_streams):
    """Its training-mode statistics are the batch's: two halves would normalise differently."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    model = NetVLADModel(keras.Model(inputs, x), num_clusters=4)
    images = tf.constant(np.random.default_rng(0).random((6, 16, 16, 3)).astype("float32") * 255)
    whole = model(images, training=True).numpy()
    halves = streams.in_streams(lambda part: model(part, training=True), images, 2).numpy()
    assert np.abs(halves - whole).max() > 1e-3  # the split would change the descriptors
    np.testing.assert_allclose(model._descriptors_in_streams(images, training=True).numpy(), whole, atol=1e-6)
    model.backbone.get_layer("bn1").trainable = False  # frozen: moving statistics, image by image
    frozen = model(images, training=True).numpy()
    np.testing.assert_allclose(model._descriptors_in_streams(images, training=True).numpy(), frozen, atol=1e-6)


_PROBE = """
import json, logging, sys
logging.basicConfig(level=logging.WARNING)
from tf_netvlad.models import streams
import tensorflow as tf
first = streams.configure_streams(sys.argv[1])
pools = [tf.config.threading.get_intra_op_parallelism_threads(),
         tf.config.threading.get_inter_op_parallelism_threads()]
tf.constant(1.0) + 1.0  # the runtime starts with those pools
late = streams.configure_streams(sys.argv[2])
print(json.dumps({"first": first, "pools": pools, "late": late, "count": streams.stream_count(),
                  "cores": streams.available_cores()}))
"""


def _probe(first, late):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", _PROBE, first, late], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_configure_streams_sets_the_pools_in_a_fresh_process():
    result, err = _probe("2", "2")
    cores = result["cores"]
    assert result["first"] == 2 and result["late"] == 2 and result["count"] == 2
    assert result["pools"] == [max(1, cores // 2), max(2, cores)]
    assert "already running" not in err  # the same value again is accepted


def test_auto_and_a_late_change_in_a_fresh_process():
    result, err = _probe("auto", "1")
    expected = 2 if result["cores"] >= 2 else 1
    assert result["first"] == expected
    # one stream would need TensorFlow's default pools back: too late, the streams stay
    assert result["late"] == expected and result["count"] == expected
    if expected == 2:
        assert "cannot be split into 1 stream(s) of images; keeping 2" in err
        assert "Call configure_streams() before any TensorFlow work" in err


def test_one_stream_leaves_tensorflows_pools():
    result, _ = _probe("1", "1")
    assert result["first"] == 1 and result["pools"] == [0, 0]


def _console_script():
    script = shutil.which("tf_netvlad")  # as tests/cli/test_main.py finds it
    assert script is not None, "the tf_netvlad console script is not installed (pip install -e .)"
    return script


def test_cli_evaluate_in_two_streams_gives_the_recalls_of_one(tiny_demo, tiny_model, tmp_path):
    """The installed console script: `--cpu-streams 2` and the default `auto` (the suite sets
    TF_NETVLAD_CPU_STREAMS=1; these processes do not) against `--cpu-streams 1`."""
    from tf_netvlad.models.model_files import save_model

    model = tmp_path / "tiny.keras"
    save_model(tiny_model, model)
    results = {}
    for name, flags in (("one", ["--cpu-streams", "1"]), ("two", ["--cpu-streams", "2"]), ("auto", [])):
        env = {k: v for k, v in os.environ.items() if k != "TF_NETVLAD_CPU_STREAMS"}
        out = tmp_path / f"{name}.json"
        run = subprocess.run([_console_script(), "-v", *flags, "evaluate", "--dataset", str(tiny_demo["test_mat"]),
                              "--model", str(model), "--json", str(out)],
                             env=env, check=True, capture_output=True, text=True, timeout=300)
        results[name] = json.loads(out.read_text())
        split = "2 streams of images, " in run.stderr
        assert split == (name == "two" or (name == "auto" and streams.available_cores() >= 2)), run.stderr
    recalls = {name: {k: v for k, v in r.items() if k.startswith("recall@")} for name, r in results.items()}
    assert recalls["one"] and recalls["two"] == recalls["one"] == recalls["auto"]


@pytest.mark.parametrize("value", ["0", "x"])
def test_cli_refuses_a_bad_stream_count(value, capsys):
    from tf_netvlad.cli import main

    with pytest.raises(SystemExit) as exc:
        main.main(["--cpu-streams", value, "evaluate", "--dataset", "d.mat", "--backbone", "tiny"])
    assert exc.value.code == 2
    assert "argument --cpu-streams: cpu streams must be 'auto' or a whole number of at least 1" in capsys.readouterr().err


def test_cli_names_the_variable_when_its_default_is_bad(monkeypatch, capsys):
    from tf_netvlad.cli import main

    monkeypatch.setenv("TF_NETVLAD_CPU_STREAMS", "two")
    with pytest.raises(SystemExit) as exc:
        main.main(["evaluate", "--dataset", "d.mat", "--backbone", "tiny"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("Received: 'two' (given by --cpu-streams or TF_NETVLAD_CPU_STREAMS)")


def test_cli_train_records_its_streams_and_trains_as_one_stream(tiny_demo, tmp_path):
    """`tf_netvlad train` through the console script with the default (`auto`) and with one stream:
    the summary names the streams, and two short cycles give the same losses to rounding."""
    env = {k: v for k, v in os.environ.items() if k != "TF_NETVLAD_CPU_STREAMS"}
    summaries = {}
    for name, flags in (("auto", []), ("one", ["--cpu-streams", "1"])):
        out = tmp_path / name
        subprocess.run([_console_script(), *flags, "train", "--dataset", str(tiny_demo["train_mat"]),
                        "--val", str(tiny_demo["val_mat"]), "--out", str(out), "--backbone", "tiny",
                        "--num-clusters", "4", "--image-size", "32x40", "--init-images", "8",
                        "--cache-refresh-queries", "8", "--epochs", "2", "--time-limit-s", "none",
                        "--no-augment", "--seed", "3"],
                       env=env, check=True, capture_output=True, text=True, timeout=600)
        summaries[name] = json.loads((out / "summary.json").read_text())
    assert summaries["one"]["cpu_streams"] == 1
    assert summaries["auto"]["cpu_streams"] == (2 if streams.available_cores() >= 2 else 1)
    assert summaries["auto"]["iterations"] == summaries["one"]["iterations"] >= 4  # 2 cycles
    np.testing.assert_allclose(summaries["auto"]["final"]["loss"], summaries["one"]["final"]["loss"], rtol=1e-3)
    assert summaries["one"]["final"]["loss"] > 0
