"""SavedModel / ONNX export: parity in a fresh process (TF1 loader and tf.saved_model.load),
signatures, op inventory, warmup, versioning, bad input."""

import io
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_netvlad.data.images import resize_image
from tf_netvlad.export import client, saved_model
from tf_netvlad.layers.whitening import fit_pca_whitening
from tf_netvlad.models.model import build_model, with_whitening

FIXED = (24, 32)  # serve_bytes size of the whitened export
MAX_SIDE = 40  # serve_bytes policy of the plain export
CROP = 6  # descriptor_dim of the whitened export (whitening has 8 dims)

# Runs in a fresh interpreter that never imports tf_netvlad: the path TF Serving's C++ loader takes
# (TF1 loader, session.run on the SignatureDef tensor names) and tf.saved_model.load.
FRESH_SCRIPT = textwrap.dedent(
    r"""
    import base64, json, sys
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    cfg = json.load(open(sys.argv[1]))
    assert "tf_netvlad" not in sys.modules
    inputs = np.load(cfg["inputs"], allow_pickle=True)
    out, info = {}, {}

    def first_line(err):
        return f"{type(err).__name__}: {' '.join(str(err).split())[:600]}"

    for name, d in cfg["exports"].items():
        jpegs = list(inputs[f"{name}_bytes"])
        with tf.Graph().as_default() as g, tf.compat.v1.Session(graph=g) as sess:
            meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], d)
            info[f"{name}/signatures"] = sorted(meta.signature_def)

            def run(sig, key, value):
                s = meta.signature_def[sig]
                return sess.run(s.outputs["descriptor"].name, {s.inputs[key].name: value})

            out[f"{name}/tf1/a"] = run("serving_default", "images", inputs["images_a"])
            out[f"{name}/tf1/b"] = run("serving_default", "images", inputs["images_b"])
            out[f"{name}/tf1/bytes"] = run("serve_bytes", "image_bytes", np.array(jpegs, dtype=object))
            # gRPC PredictRequests built by tf_netvlad.export.client, decoded as the server does
            for key in ("grpc_bytes", "grpc_images"):
                req = predict_pb2.PredictRequest.FromString(open(cfg[key], "rb").read())
                (k, proto), = req.inputs.items()
                out[f"{name}/{key}"] = run(req.model_spec.signature_name, k, tf.make_ndarray(proto))
                info[f"{name}/{key}/dtype"] = str(tf.make_ndarray(proto).dtype)
            # REST body built by tf_netvlad.export.client: {"b64": ...} instances -> DT_STRING
            body = json.load(open(cfg["rest_body"]))
            values = [base64.b64decode(i["b64"]) for i in body["instances"]]
            out[f"{name}/rest"] = run(body["signature_name"], "image_bytes", np.array(values, dtype=object))
            # warmup records replay through the same session
            shapes = []
            for record in tf.compat.v1.io.tf_record_iterator(d + "/assets.extra/tf_serving_warmup_requests"):
                log = prediction_log_pb2.PredictionLog.FromString(record)
                req = log.predict_log.request
                (k, proto), = req.inputs.items()
                y = run(req.model_spec.signature_name, k, tf.make_ndarray(proto))
                assert np.isfinite(y).all()
                shapes.append([req.model_spec.name, req.model_spec.signature_name, list(y.shape)])
            info[f"{name}/warmup"] = shapes
            # bad input through the C++-loader path; the session must stay usable
            errors = {}
            for label, sig, key, value in [
                ("rank3", "serving_default", "images", inputs["images_a"][0]),
                ("channels4", "serving_default", "images", np.zeros((1, 16, 16, 4), np.float32)),
                ("strings_to_float", "serving_default", "images", np.array([[b"x"]], dtype=object)),
                ("not_an_image", "serve_bytes", "image_bytes", np.array([jpegs[0], b"hello, not an image"], dtype=object)),
                ("rank2_bytes", "serve_bytes", "image_bytes", np.array([[jpegs[0]]], dtype=object)),
            ]:
                try:
                    run(sig, key, value)
                    errors[label] = None
                except Exception as err:  # noqa: BLE001  (record what the signature does)
                    errors[label] = first_line(err)
            info[f"{name}/tf1_errors"] = errors
            out[f"{name}/tf1/after_errors"] = run("serve_bytes", "image_bytes", np.array(jpegs, dtype=object))

        loaded = tf.saved_model.load(d)
        sigs = loaded.signatures
        out[f"{name}/tf2/a"] = sigs["serving_default"](images=tf.constant(inputs["images_a"]))["descriptor"].numpy()
        out[f"{name}/tf2/b"] = sigs["serving_default"](images=tf.constant(inputs["images_b"]))["descriptor"].numpy()
        y = sigs["serve_bytes"](image_bytes=tf.constant(jpegs))["descriptor"]
        info[f"{name}/tf2/bytes_dtype"] = y.dtype.name
        out[f"{name}/tf2/bytes"] = y.numpy()
        errors = {}
        for label, sig, kwargs in [
            ("int32", "serving_default", {"images": tf.zeros((1, 16, 16, 3), tf.int32)}),
            ("uint8", "serving_default", {"images": tf.zeros((1, 16, 16, 3), tf.uint8)}),
            ("rank3", "serving_default", {"images": tf.constant(inputs["images_a"][0])}),
            ("rank5", "serving_default", {"images": tf.constant(inputs["images_a"][None])}),
            ("channels4", "serving_default", {"images": tf.zeros((1, 16, 16, 4))}),
            ("rank2_bytes", "serve_bytes", {"image_bytes": tf.constant([jpegs[:1]])}),
            ("float_to_bytes", "serve_bytes", {"image_bytes": tf.zeros((1,), tf.float32)}),
            ("not_an_image", "serve_bytes", {"image_bytes": tf.constant([b"\x89PNG but truncated"])}),
            ("wrong_key", "serve_bytes", {"images": tf.constant(jpegs)}),
        ]:
            try:
                sigs[sig](**kwargs)
                errors[label] = None
            except Exception as err:  # noqa: BLE001
                errors[label] = first_line(err)
        info[f"{name}/tf2_errors"] = errors
        out[f"{name}/tf2/after_errors"] = sigs["serve_bytes"](image_bytes=tf.constant(jpegs))["descriptor"].numpy()

    assert "tf_netvlad" not in sys.modules
    info["tf_netvlad_imported"] = "tf_netvlad" in sys.modules
    np.savez(cfg["out"], **out)
    json.dump(info, open(cfg["info"], "w"))
    """
)


def _random_images(seed, shape):
    return (np.random.default_rng(seed).random(shape) * 255).astype("float32")


def _smooth_image(seed, height, width):
    rng = np.random.default_rng(seed)
    small = rng.random((max(2, height // 6), max(2, width // 6), 3)) * 255
    image = tf.image.resize(small[None].astype("float32"), (height, width), method="bicubic")[0]
    return np.clip(image.numpy(), 0, 255).astype("uint8")


def _encode(array, fmt, mode=None):
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _pil_reference(model, encoded, image_size, crop=None):
    """PIL decode (RGB) -> shared resize policy -> Keras model, image by image."""
    rows = []
    for item in encoded:
        pixels = np.asarray(Image.open(io.BytesIO(item)).convert("RGB"))
        image = resize_image(pixels, image_size).numpy()
        rows.append(model(image[None]).numpy()[0])
    return _crop(np.stack(rows), crop)


def _crop(desc, crop):
    if crop is None:
        return desc
    desc = desc[:, :crop]
    return desc / (np.linalg.norm(desc, axis=1, keepdims=True) + 1e-12)


@pytest.fixture(scope="module")
def models():
    model = build_model("tiny", num_clusters=4, variant="v2")
    train = _random_images(5, (12, 32, 40, 3))
    kernel, bias = fit_pca_whitening(model.predict(train, verbose=0), 8)
    return {"plain": model, "whitened": with_whitening(model, kernel, bias), "kernel": kernel, "bias": bias}


@pytest.fixture(scope="module")
def fresh(models, tmp_path_factory):
    """Exports two models, then checks them in ONE fresh process (plus saved_model_cli)."""
    root = tmp_path_factory.mktemp("export")
    exports = {
        "whitened": saved_model.export_saved_model(
            models["whitened"], root / "netvlad", image_size=FIXED, descriptor_dim=CROP
        ),
        "plain": saved_model.export_saved_model(models["plain"], root / "plain", image_size=MAX_SIDE),
    }
    smooth = [_smooth_image(i, h, w) for i, (h, w) in enumerate([(30, 50), (48, 36), (20, 16)])]
    encoded = [
        _encode(smooth[0], "JPEG"),
        _encode(smooth[1], "JPEG", mode="L"),  # grey JPEG -> replicated to RGB
        _encode(smooth[2], "PNG"),
        _encode(np.dstack([smooth[1], np.full(smooth[1].shape[:2], 200, "uint8")]), "PNG"),  # RGBA
    ]
    files = []
    for i, item in enumerate(encoded[:2]):
        files.append(root / f"img{i}.jpg")
        files[-1].write_bytes(item)
    inputs = {
        "images_a": _random_images(1, (2, 20, 28, 3)),
        "images_b": _random_images(2, (1, 33, 45, 3)),
        "whitened_bytes": np.array(encoded, dtype=object),
        "plain_bytes": np.array(encoded, dtype=object),
    }
    np.savez(root / "inputs.npz", **inputs)
    (root / "grpc_bytes.pb").write_bytes(
        client.grpc_request(files, "netvlad", "serve_bytes", version=1).SerializeToString()
    )
    (root / "grpc_images.pb").write_bytes(
        client.grpc_request(inputs["images_b"], "netvlad", "serving_default").SerializeToString()
    )
    (root / "rest.json").write_text(json.dumps(client.rest_request(files)))
    cfg = {
        "exports": {k: os.fspath(v) for k, v in exports.items()},
        "inputs": os.fspath(root / "inputs.npz"),
        "grpc_bytes": os.fspath(root / "grpc_bytes.pb"),
        "grpc_images": os.fspath(root / "grpc_images.pb"),
        "rest_body": os.fspath(root / "rest.json"),
        "out": os.fspath(root / "out.npz"),
        "info": os.fspath(root / "info.json"),
    }
    (root / "cfg.json").write_text(json.dumps(cfg))
    (root / "fresh.py").write_text(FRESH_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    cli = subprocess.Popen(
        ["saved_model_cli", "show", "--dir", os.fspath(exports["whitened"]), "--all"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    run = subprocess.run(
        [sys.executable, os.fspath(root / "fresh.py"), os.fspath(root / "cfg.json")],
        capture_output=True, text=True, env=env, cwd=os.fspath(root), timeout=300,
    )
    cli_out, cli_err = cli.communicate(timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert cli.returncode == 0, cli_err[-3000:]
    out = dict(np.load(cfg["out"]))
    info = json.loads((root / "info.json").read_text())
    return {"root": root, "exports": exports, "inputs": inputs, "files": files, "encoded": encoded,
            "out": out, "info": info, "cli": cli_out}


def _keras_reference(models, name, images):
    if name == "whitened":
        return _crop(models["whitened"](images).numpy(), CROP)
    return models["plain"](images).numpy()


@pytest.mark.parametrize("name", ["whitened", "plain"])
@pytest.mark.parametrize("loader", ["tf1", "tf2"])
def test_fresh_process_float_signature_equals_keras_on_two_sizes(fresh, models, name, loader):
    assert fresh["info"]["tf_netvlad_imported"] is False
    for key in ("a", "b"):
        want = _keras_reference(models, name, fresh["inputs"][f"images_{key}"])
        got = fresh["out"][f"{name}/{loader}/{key}"]
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name, image_size", [("whitened", FIXED), ("plain", MAX_SIDE)])
@pytest.mark.parametrize("loader", ["tf1", "tf2"])
def test_fresh_process_bytes_signature_equals_pil_decoded_keras(fresh, models, name, image_size, loader):
    model = models["whitened" if name == "whitened" else "plain"]
    want = _pil_reference(model, fresh["encoded"], image_size, CROP if name == "whitened" else None)
    got = fresh["out"][f"{name}/{loader}/bytes"]
    assert got.shape == (4, CROP if name == "whitened" else 256)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the descriptors differ between images, so equality above is not trivial
    assert np.abs(want[0] - want[1]).max() > 1e-2


def test_bytes_signature_differs_from_naive_decoding_reference(fresh, models):
    """The max-side policy really resizes (48x36 -> 40x30) and keeps small images (20x16)."""
    encoded = fresh["encoded"]
    pixels = np.asarray(Image.open(io.BytesIO(encoded[1])).convert("RGB")).astype("float32")
    unresized = models["plain"](pixels[None]).numpy()[0]
    assert np.abs(fresh["out"]["plain/tf1/bytes"][1] - unresized).max() > 1e-3
    small = np.asarray(Image.open(io.BytesIO(encoded[2])).convert("RGB")).astype("float32")
    np.testing.assert_allclose(fresh["out"]["plain/tf1/bytes"][2], models["plain"](small[None]).numpy()[0], atol=1e-5)


def test_crop_equals_a_model_whitened_to_fewer_dims(fresh, models):
    """descriptor_dim=6 of an 8-dim whitening == with_whitening(num_components=6) (cropToDim)."""
    small = with_whitening(models["plain"], models["kernel"], models["bias"], num_components=CROP)
    np.testing.assert_allclose(
        fresh["out"]["whitened/tf1/a"], small(fresh["inputs"]["images_a"]).numpy(), atol=1e-5
    )


def test_grpc_and_rest_requests_from_client_module_run_through_signatures(fresh, models):
    info, out = fresh["info"], fresh["out"]
    assert info["whitened/grpc_bytes/dtype"] == "object"
    assert info["whitened/grpc_images/dtype"] == "float32"
    want_bytes = _pil_reference(models["whitened"], fresh["encoded"][:2], FIXED, CROP)
    np.testing.assert_allclose(out["whitened/grpc_bytes"], want_bytes, atol=1e-5)
    np.testing.assert_allclose(out["whitened/rest"], want_bytes, atol=1e-5)
    want_images = _keras_reference(models, "whitened", fresh["inputs"]["images_b"])
    np.testing.assert_allclose(out["whitened/grpc_images"], want_images, atol=1e-5)


def test_warmup_file_parses_and_replays(fresh):
    for name, dim, shape in [("whitened", CROP, FIXED), ("plain", 256, (30, 40))]:
        records = fresh["info"][f"{name}/warmup"]
        expected_name = "netvlad" if name == "whitened" else "plain"
        assert [r[:2] for r in records] == [[expected_name, "serve_bytes"], [expected_name, "serving_default"]]
        assert [r[2] for r in records] == [[2, dim], [1, dim]]
    # the float warmup image has the serving size, so GPU autotuning happens at load time
    from tensorflow_serving.apis import prediction_log_pb2

    path = fresh["exports"]["whitened"] / "assets.extra" / "tf_serving_warmup_requests"
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(os.fspath(path))]
    image = tf.make_ndarray(logs[1].predict_log.request.inputs["images"])
    assert image.shape == (1, *FIXED, 3) and image.dtype == np.float32


def test_signature_errors_are_raised_not_garbage(fresh):
    for name in ("whitened", "plain"):
        tf1 = fresh["info"][f"{name}/tf1_errors"]
        assert "Cannot feed value of shape (20, 28, 3)" in tf1["rank3"]
        assert "Cannot feed value of shape (1, 16, 16, 4)" in tf1["channels4"]
        assert tf1["strings_to_float"] is not None
        assert tf1["rank2_bytes"] is not None and "shape" in tf1["rank2_bytes"]
        assert tf1["not_an_image"].startswith("InvalidArgumentError")
        assert "Unknown image file format" in tf1["not_an_image"]
        tf2 = fresh["info"][f"{name}/tf2_errors"]
        # dtype is checked by the runtime, with TF Serving's wording
        assert "expected to be a float tensor but is a int32 tensor" in tf2["int32"]
        assert "expected to be a float tensor but is a uint8 tensor" in tf2["uint8"]
        assert "expected to be a string tensor but is a float tensor" in tf2["float_to_bytes"]
        assert tf2["wrong_key"].startswith("TypeError") and "image_bytes" in tf2["wrong_key"]
        # loaded signatures do not check shapes against the placeholder (nor does TF Serving);
        # the in-graph EnsureShape does: a clean error instead of a process abort (rank 3) or
        # garbage (rank 5)
        for label in ("rank3", "rank5", "channels4", "rank2_bytes"):
            assert tf2[label] is not None and tf2[label].startswith("InvalidArgumentError"), tf2[label]
            assert "Shape of tensor" in tf2[label] and "is not compatible with expected shape" in tf2[label]
        assert "InvalidArgumentError" in tf2["not_an_image"]
        # the process survived and still serves the same descriptors
        np.testing.assert_array_equal(fresh["out"][f"{name}/tf1/after_errors"], fresh["out"][f"{name}/tf1/bytes"])
        np.testing.assert_array_equal(fresh["out"][f"{name}/tf2/after_errors"], fresh["out"][f"{name}/tf2/bytes"])
    assert fresh["info"]["whitened/tf2/bytes_dtype"] == "float32"


def test_saved_model_cli_lists_documented_signatures(fresh):
    text = fresh["cli"]
    assert set(fresh["info"]["whitened/signatures"]) == {"serving_default", "serve_bytes", "__saved_model_init_op"}
    blocks = {}
    for block in text.split("signature_def['")[1:]:
        blocks[block.split("']")[0]] = block
    assert set(blocks) >= {"serving_default", "serve_bytes"}
    default, by_bytes = blocks["serving_default"], blocks["serve_bytes"]
    assert "inputs['images'] tensor_info:" in default
    assert "dtype: DT_FLOAT" in default and "shape: (-1, -1, -1, 3)" in default
    assert "name: serving_default_images:0" in default
    assert "inputs['image_bytes'] tensor_info:" in by_bytes
    assert "dtype: DT_STRING" in by_bytes and "shape: (-1)" in by_bytes
    assert "name: serve_bytes_image_bytes:0" in by_bytes
    for block in (default, by_bytes):
        outputs = block.split("following output(s):")[1]
        assert "outputs['descriptor'] tensor_info:" in outputs
        assert "dtype: DT_FLOAT" in outputs and f"shape: (-1, {CROP})" in outputs
        assert "Method name is: tensorflow/serving/predict" in block


def test_op_inventory_has_only_core_ops(fresh):
    from tensorflow.python.framework import op_def_registry

    for path in fresh["exports"].values():
        inventory = saved_model.op_inventory(path)
        ops = inventory["ops"]
        assert {"Conv2D", "DecodeJpeg", "ResizeBilinear", "Softmax"} <= set(ops)
        assert [op for op in ops if op_def_registry.get(op) is None] == []
        assert not {"PyFunc", "PyFuncStateless", "EagerPyFunc"} & set(ops)
        assert not any(op.startswith("Xla") for op in ops)
        assert inventory["xla_must_compile"] is False
        # only the checkpoint save/restore functions tf.saved_model.save generates pin the CPU
        assert all("GPU" not in d and "CPU" in d for d in inventory["devices"]), inventory["devices"]


def test_metadata_and_serving_configs(fresh):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    meta = saved_model.read_metadata(fresh["exports"]["whitened"])
    assert meta["backbone"] == "tiny" and meta["num_clusters"] == 4
    assert (meta["local_feature_dim"], meta["netvlad_dim"], meta["whitening_dim"]) == (64, 256, 8)
    assert meta["descriptor_dim"] == CROP and meta["descriptor_cropped"] is True
    assert meta["image_size"] == "24x32" and meta["serve_bytes_mode"] == "batched"
    assert meta["preprocessing"]["mode"] == "tf" and meta["preprocessing"]["scale"] == pytest.approx(1 / 127.5)
    assert meta["tensorflow_version"] == tf.__version__ and meta["version"] == 1
    assert set(meta["signatures"]) == {"serving_default", "serve_bytes"}
    plain = saved_model.read_metadata(fresh["exports"]["plain"])
    assert plain["image_size"] == "40" and plain["serve_bytes_mode"] == "per_image"
    assert plain["descriptor_dim"] == 256 and plain["whitening_dim"] is None

    base = fresh["exports"]["whitened"].parent
    config = text_format.Parse((base / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    (entry,) = config.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == ("netvlad", "/models/netvlad", "tensorflow")
    batching = (base / "batching_parameters.txt").read_text()
    assert "serve_bytes" in batching
    values = dict(
        (line.split()[0], int(line.split()[-2] if "{" in line else line.split()[-1]))
        for line in batching.splitlines()
        if line and not line.startswith("#") and "allowed" not in line
    )
    allowed = [int(line.split()[-1]) for line in batching.splitlines() if line.startswith("allowed_batch_sizes")]
    assert allowed == sorted(allowed) and allowed[-1] == values["max_batch_size"]
    assert saved_model.existing_versions(base) == [1]


def test_onnx_matches_keras(models, tmp_path):
    import onnxruntime as ort

    path = saved_model.export_onnx(models["whitened"], tmp_path / "sub" / "netvlad.onnx", descriptor_dim=CROP)
    assert path.is_file() and sorted(os.listdir(path.parent)) == ["netvlad.onnx"]
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["descriptor"]
    for seed, shape in [(1, (2, 20, 28, 3)), (2, (1, 33, 45, 3))]:
        images = _random_images(seed, shape)
        (got,) = session.run(["descriptor"], {"images": images})
        np.testing.assert_allclose(got, _crop(models["whitened"](images).numpy(), CROP), atol=1e-4)
    with pytest.raises(ValueError, match="end with .onnx"):
        saved_model.export_onnx(models["plain"], tmp_path / "model.pb")


# --------------------------------------------------------------------------- versioning


def _marker(version_dir):
    return json.loads((version_dir / "assets.extra" / "tf_netvlad.json").read_text())["created"], (
        version_dir / "saved_model.pb"
    ).stat().st_mtime_ns


def _hidden_leftovers(base):
    return sorted(p.name for p in base.iterdir() if p.name.startswith("."))


def test_versions_next_free_refuse_and_overwrite(models, tmp_path):
    base = tmp_path / "netvlad"
    first = saved_model.export_saved_model(models["plain"], base, image_size=FIXED, warmup=False)
    second = saved_model.export_saved_model(models["plain"], base, image_size=FIXED, warmup=False)
    assert (first.name, second.name) == ("1", "2")
    (base / "7").mkdir()
    (base / "notes").mkdir()
    assert saved_model.existing_versions(base) == [1, 2, 7]
    (second / "keep_me").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        saved_model.export_saved_model(models["plain"], base, version=2, image_size=FIXED, warmup=False)
    assert (second / "keep_me").exists()
    replaced = saved_model.export_saved_model(models["plain"], base, version=2, overwrite=True, image_size=(16, 16),
                                         warmup=False)
    assert replaced == second and not (second / "keep_me").exists()
    assert saved_model.read_metadata(second)["image_size"] == "16x16"
    assert saved_model.export_saved_model(models["plain"], base, image_size=FIXED, warmup=False).name == "8"
    assert _hidden_leftovers(base) == []
    # example configs are written once and never clobbered
    (base / "models.config").write_text("# edited by hand\n")
    saved_model.export_saved_model(models["plain"], base, version=3, image_size=FIXED, warmup=False)
    assert (base / "models.config").read_text() == "# edited by hand\n"


def test_failed_export_leaves_no_version_and_no_temp_dir(models, tmp_path, monkeypatch):
    base = tmp_path / "netvlad"
    existing = saved_model.export_saved_model(models["plain"], base, image_size=FIXED, warmup=False)
    before = _marker(existing)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(saved_model, "write_warmup", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        saved_model.export_saved_model(models["plain"], base, image_size=FIXED)
    assert saved_model.existing_versions(base) == [1] and _hidden_leftovers(base) == []
    # a failed overwrite keeps the old version intact
    with pytest.raises(RuntimeError, match="simulated"):
        saved_model.export_saved_model(models["plain"], base, version=1, overwrite=True, image_size=FIXED)
    assert _marker(existing) == before and _hidden_leftovers(base) == []


def test_missing_serving_api_gives_install_hint(models, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_serving.apis.prediction_log_pb2", None)
    with pytest.raises(ImportError, match="--no-deps tensorflow-serving-api"):
        saved_model.export_saved_model(models["plain"], tmp_path / "m", image_size=FIXED)
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- bad arguments


def test_bad_model_files_say_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.keras"):
        saved_model.export_saved_model(tmp_path / "nope.keras", tmp_path / "out")
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    plain.save(tmp_path / "dense.keras")
    with pytest.raises(ValueError, match="not a tf_netvlad NetVLADModel"):
        saved_model.export_saved_model(tmp_path / "dense.keras", tmp_path / "out")
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.keras is not a loadable tf_netvlad model"):
        saved_model.export_onnx(tmp_path / "junk.keras", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="NetVLADModel or the path"):
        saved_model.export_saved_model(plain, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.onnx").exists()


def test_bad_export_arguments(models, tmp_path):
    with pytest.raises(ValueError, match="no whitening layer"):
        saved_model.export_saved_model(models["plain"], tmp_path / "a", descriptor_dim=16)
    with pytest.raises(ValueError, match=r"\[1, 8\].*descriptor_dim=9"):
        saved_model.export_saved_model(models["whitened"], tmp_path / "a", descriptor_dim=9)
    with pytest.raises(ValueError, match="version=0"):
        saved_model.export_saved_model(models["plain"], tmp_path / "a", version=0)
    with pytest.raises(ValueError, match="image_size"):
        saved_model.export_saved_model(models["plain"], tmp_path / "a", image_size="big")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file"):
        saved_model.export_saved_model(models["plain"], tmp_path / "file", warmup=False)
    assert not (tmp_path / "a").exists()


def test_mixed_precision_model_exports_float32(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model("tiny", num_clusters=4)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path = saved_model.export_saved_model(model, tmp_path / "mp", image_size=(16, 16), warmup=False)
    signatures = tf.saved_model.load(os.fspath(path)).signatures
    images = _random_images(3, (2, 24, 24, 3))
    for name, kwargs in [("serving_default", {"images": tf.constant(images)}),
                         ("serve_bytes", {"image_bytes": tf.constant([_encode(images[0].astype("uint8"), "PNG")])})]:
        assert signatures[name].structured_outputs["descriptor"].dtype == tf.float32
        out = signatures[name](**kwargs)["descriptor"]
        assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy().shape, (1, 256))
    np.testing.assert_allclose(
        signatures["serving_default"](images=tf.constant(images))["descriptor"].numpy(),
        model(images).numpy().astype("float32"), atol=1e-5,
    )


def test_weights_are_stored_once(models, fresh):
    reader = tf.train.load_checkpoint(os.fspath(fresh["exports"]["plain"] / "variables" / "variables"))
    shapes = reader.get_variable_to_shape_map()
    stored = sum(int(np.prod(s)) for k, s in shapes.items() if k != "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert stored == models["plain"].count_params()
