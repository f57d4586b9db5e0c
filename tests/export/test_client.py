"""TF Serving client helpers: request bodies and response parsing (no network).

Running the requests through an exported SavedModel is tested in test_export.py.
"""

import base64
import json

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tf_netvlad.export import client


@pytest.fixture
def jpeg_files(tmp_path):
    files = []
    for i, shape in enumerate([(12, 16, 3), (9, 7, 3)]):
        pixels = (np.arange(np.prod(shape)).reshape(shape) * (i + 3) % 256).astype("uint8")
        path = tmp_path / f"img{i}.jpg"
        path.write_bytes(tf.io.encode_jpeg(pixels).numpy())
        files.append(path)
    return files


def test_rest_request_bytes_b64_round_trip(jpeg_files):
    raw = jpeg_files[1].read_bytes()
    body = client.rest_request([jpeg_files[0], str(jpeg_files[1]), raw])
    assert body["signature_name"] == "serve_bytes"
    decoded = [base64.b64decode(item["b64"]) for item in body["instances"]]
    assert decoded == [jpeg_files[0].read_bytes(), raw, raw]
    json.dumps(body)  # serialisable as is
    single = client.rest_request(raw)  # one image, not a sequence
    assert len(single["instances"]) == 1 and base64.b64decode(single["instances"][0]["b64"]) == raw


def test_rest_request_float_images():
    images = np.arange(2 * 2 * 3 * 3, dtype="float32").reshape(2, 2, 3, 3)
    body = client.rest_request(images, signature="serving_default")
    assert body["signature_name"] == "serving_default"
    np.testing.assert_array_equal(np.asarray(body["instances"], dtype="float32"), images)
    one = client.rest_request(images[0], signature="serving_default")
    assert np.asarray(one["instances"]).shape == (1, 2, 3, 3)


def test_request_bad_input(tmp_path):
    with pytest.raises(ValueError, match="serve_bytes.*serving_default.*Received: 'serve'"):
        client.rest_request([b"x"], signature="serve")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        client.rest_request([tmp_path / "missing.jpg"])
    with pytest.raises(ValueError, match="empty"):
        client.grpc_request([], "netvlad")
    with pytest.raises(TypeError, match="int"):
        client.rest_request([3])
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\].*\(2, 5, 5, 4\)"):
        client.grpc_request(np.zeros((2, 5, 5, 4)), "netvlad", signature="serving_default")


def test_grpc_request_fields_decode_with_make_ndarray(jpeg_files):
    request = client.grpc_request(jpeg_files, "netvlad", version=3)
    assert isinstance(request, predict_pb2.PredictRequest)
    assert (request.model_spec.name, request.model_spec.signature_name) == ("netvlad", "serve_bytes")
    assert request.model_spec.version.value == 3
    assert list(request.inputs) == ["image_bytes"]
    values = tf.make_ndarray(request.inputs["image_bytes"])
    assert values.shape == (2,) and list(values) == [p.read_bytes() for p in jpeg_files]
    # same proto as TF's own converter
    assert request.inputs["image_bytes"] == tf.make_tensor_proto([p.read_bytes() for p in jpeg_files])

    images = np.random.default_rng(0).random((2, 5, 6, 3)).astype("float32") * 255
    request = client.grpc_request(images, "m", signature="serving_default")
    assert not request.model_spec.HasField("version")
    decoded = tf.make_ndarray(request.inputs["images"])
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, images)
    # survives serialisation
    again = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    np.testing.assert_array_equal(tf.make_ndarray(again.inputs["images"]), images)


def test_parse_rest_response_formats():
    desc = np.array([[0.6, 0.8], [1.0, 0.0]], dtype="float32")
    rows = {"predictions": desc.tolist()}
    for response in (rows, json.dumps(rows), json.dumps(rows).encode()):
        out = client.parse_rest_response(response)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, desc)
    np.testing.assert_array_equal(client.parse_rest_response({"outputs": desc.tolist()}), desc)
    np.testing.assert_array_equal(client.parse_rest_response({"outputs": {"descriptor": desc.tolist()}}), desc)
    multi = {"predictions": [{"descriptor": row, "other": 1} for row in desc.tolist()]}
    np.testing.assert_array_equal(client.parse_rest_response(multi), desc)
    with pytest.raises(RuntimeError, match="Expects arg\\[0\\] to be float"):
        client.parse_rest_response({"error": "Expects arg[0] to be float but int32 is provided"})
    with pytest.raises(ValueError, match="predictions"):
        client.parse_rest_response({"result": []})


def test_parse_grpc_response_tensor_content_and_float_val():
    desc = np.random.default_rng(1).random((3, 5)).astype("float32")
    response = predict_pb2.PredictResponse()
    response.outputs["descriptor"].CopyFrom(tf.make_tensor_proto(desc))
    assert response.outputs["descriptor"].tensor_content  # the packed form servers send
    np.testing.assert_array_equal(client.parse_grpc_response(response), desc)
    np.testing.assert_array_equal(client.parse_grpc_response(response.SerializeToString()), desc)
    unpacked = predict_pb2.PredictResponse()
    proto = unpacked.outputs["descriptor"]
    proto.dtype = 1
    proto.float_val.extend(desc.ravel().tolist())
    for size in desc.shape:
        proto.tensor_shape.dim.add(size=size)
    np.testing.assert_array_equal(client.parse_grpc_response(unpacked), desc)
    with pytest.raises(KeyError, match="embedding"):
        client.parse_grpc_response(response, output="embedding")
    half = predict_pb2.PredictResponse()
    half.outputs["descriptor"].CopyFrom(tf.make_tensor_proto(desc.astype("float16")))
    with pytest.raises(TypeError, match="DT_FLOAT"):
        client.parse_grpc_response(half)


def test_rest_url():
    assert client.rest_url() == "http://localhost:8501/v1/models/netvlad:predict"
    assert client.rest_url("https://gpu-box:8501/", "pitts", version=2) == (
        "https://gpu-box:8501/v1/models/pitts/versions/2:predict"
    )


def test_predict_rest_and_grpc_wiring_without_network(jpeg_files, monkeypatch):
    """The thin network calls send the built request and parse the reply (transport faked)."""
    import io
    import urllib.error

    from tensorflow_serving.apis import prediction_service_pb2_grpc

    desc = np.array([[0.6, 0.8], [0.0, 1.0]], dtype="float32")
    sent = {}

    class Reply(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def fake_urlopen(request, timeout):
        sent["url"], sent["body"], sent["timeout"] = request.full_url, json.loads(request.data), timeout
        return Reply(json.dumps({"predictions": desc.tolist()}).encode())

    monkeypatch.setattr(client.urllib.request, "urlopen", fake_urlopen)
    out = client.predict_rest(client.rest_url(), jpeg_files, timeout=5)
    np.testing.assert_array_equal(out, desc)
    assert sent["url"].endswith("/v1/models/netvlad:predict") and sent["timeout"] == 5
    assert base64.b64decode(sent["body"]["instances"][1]["b64"]) == jpeg_files[1].read_bytes()

    def http_error(request, timeout):
        raise urllib.error.HTTPError(request.full_url, 400, "Bad Request", {},
                                     io.BytesIO(b'{"error": "Unknown image file format"}'))

    monkeypatch.setattr(client.urllib.request, "urlopen", http_error)
    with pytest.raises(RuntimeError, match="400.*Unknown image file format"):
        client.predict_rest(client.rest_url(), jpeg_files)

    class FakeStub:
        def __init__(self, channel):
            pass

        def Predict(self, request, timeout):
            sent["grpc"] = request
            response = predict_pb2.PredictResponse()
            response.outputs["descriptor"].CopyFrom(tf.make_tensor_proto(desc))
            return response

    monkeypatch.setattr(prediction_service_pb2_grpc, "PredictionServiceStub", FakeStub)
    out = client.predict_grpc("localhost:1", jpeg_files, model_name="pitts", version=4)
    np.testing.assert_array_equal(out, desc)
    assert sent["grpc"].model_spec.name == "pitts" and sent["grpc"].model_spec.version.value == 4
