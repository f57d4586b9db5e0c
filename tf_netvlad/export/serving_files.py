"""The files written beside an exported SavedModel: signature names and keys, warmup requests,
metadata, and the example TF Serving configs (`models.config`, `batching_parameters.txt`).

Every function here takes the parsed resize policy (`tf_netvlad.data.image_size`) that
`export_saved_model` parsed.
"""

import datetime
import os
import uuid

import keras
import numpy as np
import tensorflow as tf

from tf_netvlad.data.image_size import format_image_size
from tf_netvlad.defaults import PAPER_IMAGE_SIZE

OUTPUT_KEY = "descriptor"
IMAGES_KEY = "images"
BYTES_KEY = "image_bytes"
SIGNATURES = ("serving_default", "serve_bytes")
METADATA_FILE = "tf_netvlad.json"
WARMUP_FILE = "tf_serving_warmup_requests"

SERVING_API_HINT = (
    "Writing the TF Serving warmup file needs the protos of `tensorflow-serving-api`. Install it "
    "with `pip install --no-deps tensorflow-serving-api` (without --no-deps pip also installs the "
    "full `tensorflow` wheel over tensorflow-cpu), or export with warmup=False."
)


def _warmup_shape(image_size):
    """(H, W) of the warmup images: the fixed size, a 4:3 image of the max side, or for "keep"
    a Pittsburgh-sized one."""
    if isinstance(image_size, tuple):
        return image_size
    if isinstance(image_size, int):
        return (max(1, (image_size * 3) // 4), image_size)
    return PAPER_IMAGE_SIZE


def _synthetic_image(height, width, seed):
    """A smooth deterministic RGB uint8 image (JPEG-friendly), for warmup requests."""
    yy, xx = np.mgrid[0:height, 0:width].astype("float32")
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    channels = [127.5 + 100 * np.sin(xx / (7 + 3 * c) + yy / (11 + 2 * c) + phase[c]) for c in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype("uint8")


def write_warmup(path, model_name, image_size):
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError as err:
        raise ImportError(SERVING_API_HINT) from err
    height, width = _warmup_shape(image_size)
    jpegs = [
        tf.io.encode_jpeg(_synthetic_image(h, w, seed), quality=90).numpy()
        for seed, (h, w) in enumerate([(height, width), (max(8, height // 2), max(8, width // 2 + 3))])
    ]
    image = _synthetic_image(height, width, 7).astype("float32")[None]
    requests = [("serve_bytes", BYTES_KEY, np.array(jpegs, dtype=object)), ("serving_default", IMAGES_KEY, image)]
    with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        for signature, key, value in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
            )
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


def metadata(model, image_size, descriptor_dim, source, version):
    from tf_netvlad.version import __version__

    netvlad_dim = int(model.netvlad.output.shape[-1])
    return {
        "format": "tf_netvlad.saved_model/1",
        "tf_netvlad_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source_model": source,
        "model_name": model.name,
        "version": version,
        "backbone": model.backbone_name,
        "num_clusters": model.num_clusters,
        "local_feature_dim": netvlad_dim // model.num_clusters,
        "netvlad_dim": netvlad_dim,
        "variant": model.variant,
        "whitening_dim": model.whitening_dim,
        "descriptor_dim": descriptor_dim or model.descriptor_dim,
        "descriptor_cropped": descriptor_dim is not None,
        "preprocessing": keras.layers.serialize(model.preprocessing)["config"],
        "input": "float32 RGB 0..255; preprocessing is inside the graph",
        "image_size": format_image_size(image_size),
        "serve_bytes_mode": "batched" if isinstance(image_size, tuple) else "per_image",
        "signatures": {
            "serving_default": {
                "inputs": {IMAGES_KEY: {"dtype": "float32", "shape": [-1, -1, -1, 3]}},
                "outputs": {OUTPUT_KEY: {"dtype": "float32", "shape": [-1, descriptor_dim or model.descriptor_dim]}},
            },
            "serve_bytes": {
                "inputs": {BYTES_KEY: {"dtype": "string", "shape": [-1]}},
                "outputs": {OUTPUT_KEY: {"dtype": "float32", "shape": [-1, descriptor_dim or model.descriptor_dim]}},
            },
        },
    }


MODELS_CONFIG = """\
# Example TF Serving model config, written by tf_netvlad. base_path is the path INSIDE the server
# (container): mount this directory at {base_path} and pass
#   --model_config_file={base_path}/models.config
model_config_list {{
  config {{
    name: "{name}"
    base_path: "{base_path}"
    model_platform: "tensorflow"
    model_version_policy {{ latest {{ num_versions: 1 }} }}
    # model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    # version_labels {{ key: "stable" value: 1 }}   # then /v1/models/{name}/labels/stable:predict
  }}
}}
"""

BATCHING_PARAMETERS = """\
# Example --batching_parameters_file for `--enable_batching`, written by tf_netvlad.
# Server-side batching concatenates requests that hit the same signature. It is only safe for
# `serve_bytes` (string [B]) or when every `serving_default` client sends the SAME image size:
# float images of different H, W in one batch fail the whole batch with FailedPrecondition
# ("... different shapes and padding is turned off"). Never enable padding for images: zero
# padding changes the descriptors.
max_batch_size { value: 16 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 64 }
num_batch_threads { value: 4 }
allowed_batch_sizes: 4
allowed_batch_sizes: 8
allowed_batch_sizes: 16
"""


def write_if_absent(path, text):
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
