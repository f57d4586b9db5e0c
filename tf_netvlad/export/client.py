"""A small TensorFlow Serving client for exported tf_netvlad models (REST and gRPC).

Builds request bodies from image files or encoded bytes and parses responses into float32
NumPy arrays `[B, D]`. The REST helpers are pure Python (json + base64 + urllib); the gRPC helpers
import `tensorflow-serving-api` and `grpcio` lazily (`pip install --no-deps tensorflow-serving-api`).

Example (a server started as in docs/serving.md):
>>> body = rest_request(["query.jpg"])            # serve_bytes, {"b64": ...} instances
>>> descriptors = predict_rest("http://localhost:8501/v1/models/netvlad:predict", ["query.jpg"])
>>> descriptors = predict_grpc("localhost:8500", ["query.jpg"], model_name="netvlad")
"""

import base64
import json
import os
import urllib.error
import urllib.request

import numpy as np

OUTPUT_KEY = "descriptor"
BYTES_KEY = "image_bytes"
IMAGES_KEY = "images"
_SIGNATURE_INPUTS = {"serve_bytes": BYTES_KEY, "serving_default": IMAGES_KEY}
_DT_FLOAT, _DT_STRING = 1, 7  # tensorflow.DataType enum values
_GRPC_HINT = "gRPC requests need `pip install --no-deps tensorflow-serving-api` and grpcio."


def _encoded(item):
    """Bytes as they are, a path read from disk."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Image file not found: {path}")
        with open(path, "rb") as f:
            return f.read()
    raise TypeError(f"Expected an image path or encoded image bytes. Received: {type(item).__name__}")


def _input_key(signature):
    if signature not in _SIGNATURE_INPUTS:
        raise ValueError(f"`signature` must be one of {sorted(_SIGNATURE_INPUTS)}. Received: {signature!r}")
    return _SIGNATURE_INPUTS[signature]


def _as_items(paths_or_bytes):
    if isinstance(paths_or_bytes, (str, os.PathLike, bytes, bytearray)):
        return [paths_or_bytes]
    items = list(paths_or_bytes)
    if not items:
        raise ValueError("Need at least one image. Received an empty sequence.")
    return items


def _as_images(images):
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"`serving_default` takes float32 RGB images [B, H, W, 3] in 0..255. Received shape {images.shape}"
        )
    return images


def rest_request(paths_or_bytes, signature="serve_bytes"):
    """JSON body (a dict) for `POST /v1/models/<name>:predict`.

    For `serve_bytes`, `paths_or_bytes` is one or more image paths or encoded bytes, sent as
    `{"b64": ...}` instances. For `serving_default` it is a float array `[B, H, W, 3]` (or one
    `[H, W, 3]` image) in 0..255, sent as nested lists (about 10x larger than JPEG bytes).
    """
    _input_key(signature)
    if signature == "serve_bytes":
        instances = [{"b64": base64.b64encode(_encoded(i)).decode("ascii")} for i in _as_items(paths_or_bytes)]
    else:
        instances = _as_images(paths_or_bytes).tolist()
    return {"signature_name": signature, "instances": instances}


def parse_rest_response(response, output=OUTPUT_KEY):
    """float32 `[B, D]` from a REST predict response (dict, JSON str or bytes).

    Handles the row (`predictions`) and columnar (`outputs`) formats; an `{"error": ...}` body
    raises `RuntimeError` with the server's message.
    """
    if isinstance(response, (bytes, bytearray, str)):
        response = json.loads(response)
    if not isinstance(response, dict):
        raise TypeError(f"Expected a JSON object. Received: {type(response).__name__}")
    if "error" in response:
        raise RuntimeError(f"TF Serving returned an error: {response['error']}")
    for key in ("predictions", "outputs"):
        if key in response:
            value = response[key]
            if isinstance(value, dict):
                value = value[output]
            elif value and isinstance(value[0], dict):  # several outputs, row format
                value = [row[output] for row in value]
            return np.asarray(value, dtype=np.float32).reshape(len(value), -1)
    raise ValueError(f"Not a predict response: expected 'predictions' or 'outputs'. Received keys {sorted(response)}")


def _tensor_proto(value):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    proto = tensor_pb2.TensorProto()
    if isinstance(value, list):  # encoded images
        proto.dtype = _DT_STRING
        proto.string_val.extend(value)
        shape = [len(value)]
    else:
        proto.dtype = _DT_FLOAT
        proto.tensor_content = np.ascontiguousarray(value, dtype="<f4").tobytes()
        shape = value.shape
    proto.tensor_shape.CopyFrom(
        tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(s)) for s in shape])
    )
    return proto


def grpc_request(paths_or_bytes, model_name, signature="serve_bytes", version=None):
    """A `tensorflow_serving.apis.predict_pb2.PredictRequest` for `Predict`.

    Inputs as in `rest_request`. `version` (int) pins a model version; None lets the server pick.
    """
    try:
        from tensorflow_serving.apis import predict_pb2
    except ImportError as err:
        raise ImportError(_GRPC_HINT) from err
    key = _input_key(signature)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = str(model_name)
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    if signature == "serve_bytes":
        value = [_encoded(i) for i in _as_items(paths_or_bytes)]
    else:
        value = _as_images(paths_or_bytes)
    request.inputs[key].CopyFrom(_tensor_proto(value))
    return request


def parse_grpc_response(response, output=OUTPUT_KEY):
    """float32 `[B, D]` from a `PredictResponse` (or its serialized bytes)."""
    if isinstance(response, (bytes, bytearray)):
        from tensorflow_serving.apis import predict_pb2

        response = predict_pb2.PredictResponse.FromString(bytes(response))
    if output not in response.outputs:
        raise KeyError(f"Response has no output {output!r}. Outputs: {sorted(response.outputs)}")
    tensor = response.outputs[output]
    if tensor.dtype != _DT_FLOAT:
        raise TypeError(f"Output {output!r} must be DT_FLOAT (1). Received dtype enum {tensor.dtype}")
    shape = [d.size for d in tensor.tensor_shape.dim]
    if tensor.tensor_content:
        values = np.frombuffer(tensor.tensor_content, dtype="<f4")
    else:
        values = np.asarray(tensor.float_val, dtype=np.float32)
        if values.size == 1 and int(np.prod(shape)) > 1:  # proto-compressed constant tensor
            values = np.full(int(np.prod(shape)), values[0], np.float32)
    return values.astype(np.float32).reshape(shape)


def rest_url(host="localhost:8501", model_name="netvlad", version=None):
    """`http://<host>/v1/models/<name>[/versions/<v>]:predict`."""
    base = host if host.startswith(("http://", "https://")) else f"http://{host}"
    path = f"/v1/models/{model_name}" + (f"/versions/{int(version)}" if version is not None else "")
    return f"{base.rstrip('/')}{path}:predict"


def predict_rest(url, paths_or_bytes, signature="serve_bytes", timeout=30.0):
    """POSTs `rest_request(...)` to `url` (see `rest_url`) and returns float32 `[B, D]`."""
    body = json.dumps(rest_request(paths_or_bytes, signature)).encode("utf-8")
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return parse_rest_response(reply.read())
    except urllib.error.HTTPError as err:  # TF Serving puts {"error": ...} in 4xx bodies
        text = err.read().decode("utf-8", "replace")
        raise RuntimeError(f"TF Serving REST {err.code} from {url}: {text}") from err


def predict_grpc(target, paths_or_bytes, model_name="netvlad", signature="serve_bytes", version=None,
                 timeout=30.0, max_message_mb=64):
    """Calls `PredictionService.Predict` on `target` ("host:8500"); returns float32 `[B, D]`."""
    try:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc
    except ImportError as err:
        raise ImportError(_GRPC_HINT) from err
    limit = int(max_message_mb) << 20
    options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = grpc_request(paths_or_bytes, model_name, signature, version)
        return parse_grpc_response(stub.Predict(request, timeout=timeout))
