"""Export a NetVLADModel as a versioned SavedModel for TensorFlow Serving, or as ONNX.

Layout written by `export_saved_model(model, "saved_models/netvlad")`::

    saved_models/netvlad/
      models.config               example TF Serving model config (written once, never clobbered)
      batching_parameters.txt     example --batching_parameters_file (written once)
      1/                          the SavedModel, renamed into place only when complete
        saved_model.pb  variables/  fingerprint.pb
        assets.extra/tf_serving_warmup_requests   PredictionLog records replayed at load time
        assets.extra/tf_netvlad.json              metadata (backbone, K, dims, preprocessing, ...)

Signatures (all `method_name: tensorflow/serving/predict`, all returning
`{"descriptor": float32 [B, D]}` with unit L2 norm):

* `serving_default(images: float32 [B, H, W, 3])`: RGB 0..255, any H and W (one size per request).
* `serve_bytes(image_bytes: string [B])`: encoded JPEG/PNG/GIF/BMP; decoded in the graph by
  `tf_netvlad.data.images.decode_image`, the decoder extraction uses (so always identical to
  extraction; bit-exact with PIL for 8-bit PNGs and YCbCr/grey JPEGs, within 1 for CMYK JPEGs, and
  different for 16-bit grey PNGs: see `decode_image`) and resized with the same policy as
  extraction (`tf_netvlad.data.images.resize_image`). A fixed `(H, W)` size decodes the whole request
  and runs one batched forward pass; "keep" or a max side run the model once per image (images of
  different shapes cannot be stacked), which is exact but slower on GPU.

Both signatures stretch an image smaller than the model's minimum input size up to it
(`tf_netvlad.data.images.upscale_to_min_size`, as extraction does), so a tiny but valid image gets
a descriptor instead of failing the request; a fixed size below the minimum is refused at export.

The graph holds only core TensorFlow ops: no `py_function`, no `jit_compile`, no device pins.
"""

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tf_netvlad.data.image_size import check_image_size, parse_image_size
from tf_netvlad.data.images import decode_and_resize, upscale_to_min_size
from tf_netvlad.data.locking import holds_writer_lock
from tf_netvlad.data.scratch import remove_orphans
from tf_netvlad.defaults import PAPER_IMAGE_SIZE
from tf_netvlad.export.serving_files import (
    BATCHING_PARAMETERS,
    BYTES_KEY,
    IMAGES_KEY,
    METADATA_FILE,
    MODELS_CONFIG,
    OUTPUT_KEY,
    SERVING_API_HINT,
    SIGNATURES,
    WARMUP_FILE,
    metadata,
    write_if_absent,
    write_warmup,
)
from tf_netvlad.layers.netvlad import L2_EPSILON
from tf_netvlad.models import identity
from tf_netvlad.models.extract import check_image_size_for_model
from tf_netvlad.models.model_files import resolve_model

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- inputs


def _check_descriptor_dim(model, descriptor_dim):
    """Validates a requested crop of the whitened output; returns None (no crop) or the dim."""
    if descriptor_dim is None:
        return None
    available = model.descriptor_dim
    if isinstance(descriptor_dim, bool) or not isinstance(descriptor_dim, (int, np.integer)):
        raise ValueError(f"`descriptor_dim` must be a positive int or None. Received: {descriptor_dim!r}")
    if model.whitening is None:
        raise ValueError(
            "`descriptor_dim` crops the PCA-whitened descriptor, but this model has no whitening "
            f"layer (its descriptor has {available} dims). Add one with `with_whitening`. "
            f"Received: descriptor_dim={descriptor_dim}"
        )
    if not 1 <= descriptor_dim <= available:
        raise ValueError(
            f"`descriptor_dim` must be in [1, {available}] (the whitened output size). "
            f"Received: descriptor_dim={descriptor_dim}"
        )
    return None if descriptor_dim == available else int(descriptor_dim)


# --------------------------------------------------------------------------- serving functions


def serving_functions(model, image_size, descriptor_dim=None):
    """The signature functions and input specs: `{name: (fn, [tf.TensorSpec])}`.

    Each fn takes one tensor and returns `{"descriptor": float32 [B, D]}`; they are graph-safe
    without autograph (what `ExportArchive.add_endpoint` traces). `image_size` is the parsed
    resize policy of `serve_bytes`. `descriptor_dim` keeps the first dims of the whitened output
    and L2-normalises again (MATLAB `cropToDim`). Images smaller than the model's minimum input
    are stretched up to it, as in extraction; a fixed `image_size` below it is refused.
    """
    check_image_size(image_size)
    min_size = check_image_size_for_model(model, image_size)
    crop = _check_descriptor_dim(model, descriptor_dim)
    dim = crop or model.descriptor_dim

    def describe(images):
        images = upscale_to_min_size(images, min_size)
        out = tf.cast(model(images, training=False), tf.float32)
        if crop is not None:
            out = out[:, :crop]
            out = out / (tf.sqrt(tf.reduce_sum(tf.square(out), axis=-1, keepdims=True)) + L2_EPSILON)
        return out

    # Loaded signatures (and TF Serving) do not check feeds against the placeholder shape: a
    # rank-3 tensor would reach Conv2D and abort the whole process (oneDNN CHECK failure), a
    # rank-5 one would return garbage. EnsureShape turns both into a clean InvalidArgumentError.
    def serve_images(images):
        return {OUTPUT_KEY: describe(tf.ensure_shape(images, [None, None, None, 3]))}

    if isinstance(image_size, tuple):

        def serve_bytes(image_bytes):
            image_bytes = tf.ensure_shape(image_bytes, [None])
            images = tf.map_fn(
                lambda encoded: decode_and_resize(encoded, image_size),
                image_bytes,
                fn_output_signature=tf.TensorSpec([image_size[0], image_size[1], 3], tf.float32),
            )
            return {OUTPUT_KEY: describe(images)}

    else:

        def serve_bytes(image_bytes):
            # Shapes differ per image under "keep" / max side: one forward pass per image.
            image_bytes = tf.ensure_shape(image_bytes, [None])
            return {
                OUTPUT_KEY: tf.map_fn(
                    lambda encoded: describe(decode_and_resize(encoded, image_size)[None])[0],
                    image_bytes,
                    fn_output_signature=tf.TensorSpec([dim], tf.float32),
                )
            }

    return {
        "serving_default": (serve_images, [tf.TensorSpec([None, None, None, 3], tf.float32, name=IMAGES_KEY)]),
        "serve_bytes": (serve_bytes, [tf.TensorSpec([None], tf.string, name=BYTES_KEY)]),
    }


def _write_archive(model, functions, path):
    # No `archive.track(model)`: add_endpoint already tracks the variables the endpoints use, and
    # tracking the model as well stores every weight twice (2x the SavedModel size).
    archive = keras.export.ExportArchive()
    for name in SIGNATURES:  # serving_default first, so it is not aliased twice
        fn, spec = functions[name]
        archive.add_endpoint(name, fn, input_signature=spec)
    archive.write_out(os.fspath(path), verbose=False)


# --------------------------------------------------------------------------- versions


def existing_versions(base_dir):
    """Sorted integer version directories under `base_dir` (what TF Serving would load)."""
    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        return []
    return sorted(int(p.name) for p in base_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _target_version(base_dir, version, overwrite):
    if version is None:
        versions = existing_versions(base_dir)
        return (versions[-1] + 1) if versions else 1
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
        raise ValueError(f"`version` must be a positive int or None (next free). Received: version={version!r}")
    target = base_dir / str(int(version))
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"Version {version} already exists at {target}. Pass overwrite=True (CLI: --overwrite) "
            "to replace it, or omit the version to use the next free one."
        )
    return int(version)


def _move_into_place(tmp, target, overwrite):
    """Renames `tmp` to `target`; an existing `target` is swapped out first and then deleted."""
    old = None
    if target.exists():
        if not overwrite:  # another export took this version meanwhile
            raise FileExistsError(f"Version directory appeared during the export: {target}")
        old = target.with_name(f".old-{target.name}-{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(base_dir):
    """Cleans up after an export that was killed (the caller holds the base's writer lock): its
    temp directory is removed; a version swapped out by an interrupted overwrite (`.old-N-*`) is
    put back if version N is missing, else removed."""
    for old in sorted(base_dir.glob(".old-*")):
        name = old.name.split("-")[1] if old.name.count("-") >= 2 else ""
        if name.isdigit() and not (base_dir / name).exists() and not old.is_symlink():
            os.rename(old, base_dir / name)
            logger.warning("Restored version %s of %s, left aside by an interrupted export.", name, base_dir)
    remove_orphans(base_dir, [".tmp-export-*", ".old-*"])


# --------------------------------------------------------------------------- public API


@holds_writer_lock("base_dir", "SavedModel export base")
def export_saved_model(model_or_path, base_dir, version=None, overwrite=False,
                       image_size=PAPER_IMAGE_SIZE, descriptor_dim=None, model_name=None,
                       warmup=True):
    """Writes a TF Serving SavedModel to `base_dir/<version>/` and returns that path.

    Args:
        model_or_path: a `NetVLADModel` or the path of its `.keras` file.
        base_dir: the model's base path (TF Serving `--model_base_path`), e.g.
            `saved_models/netvlad`. Created if needed.
        version: positive int, or None for the next free integer version (1 for a new base_dir).
        overwrite: replace an existing `version`. Without it an existing version is an error.
        image_size: resize policy of `serve_bytes`, as in
            `tf_netvlad.data.image_size.parse_image_size`: `(H, W)` or "HxW" (default
            `(480, 640)`: one batched forward pass per request), an int max side, or None
            ("keep", full resolution). Use the policy the database descriptors
            were extracted with, or query and database descriptors will not match.
        descriptor_dim: None, or keep the first `descriptor_dim` dims of the whitened output and
            L2-normalise again. Needs a model with whitening; at most its whitened size.
        model_name: the name used in `models.config` and the warmup requests (default: the name
            of `base_dir`).
        warmup: write `assets.extra/tf_serving_warmup_requests` (needs tensorflow-serving-api).

    Returns:
        `pathlib.Path` of the version directory.

    The SavedModel is written to a hidden temporary directory inside `base_dir` and renamed into
    place only when it is complete, so TF Serving never sees a half-written version and a failed
    export leaves nothing behind. The export holds `base_dir`'s writer lock
    (`tf_netvlad.data.locking`): a second export into the same base is refused at once, and the
    next export removes the temp directory of a killed one.
    """
    image_size = parse_image_size(image_size)
    model, source = resolve_model(model_or_path)
    identity.warn_if_not_training_size(model, image_size, "is exported")
    functions = serving_functions(model, image_size, descriptor_dim)
    crop = _check_descriptor_dim(model, descriptor_dim)
    base_dir = Path(base_dir)
    if base_dir.exists() and not base_dir.is_dir():
        raise NotADirectoryError(f"`base_dir` must be a directory. Received a file: {base_dir}")
    model_name = model_name or base_dir.resolve().name
    if base_dir.is_dir():  # before a version is chosen: an interrupted overwrite is put back
        _remove_leftovers(base_dir)
    version = _target_version(base_dir, version, overwrite)
    if warmup:
        try:
            import tensorflow_serving.apis.prediction_log_pb2  # noqa: F401
        except ImportError as err:
            raise ImportError(SERVING_API_HINT) from err
    base_dir.mkdir(parents=True, exist_ok=True)
    target = base_dir / str(version)
    tmp = base_dir / f".tmp-export-{version}-{uuid.uuid4().hex[:8]}"
    try:
        _write_archive(model, functions, tmp)
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        meta = metadata(model, image_size, crop, source, version)
        (extra / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if warmup:
            write_warmup(extra / WARMUP_FILE, model_name, image_size)
        _move_into_place(tmp, target, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    write_if_absent(base_dir / "models.config",
                    MODELS_CONFIG.format(name=model_name, base_path=f"/models/{model_name}"))
    write_if_absent(base_dir / "batching_parameters.txt", BATCHING_PARAMETERS)
    logger.info("Exported %s (descriptor dim %d) to %s", model.name, meta["descriptor_dim"], target)
    return target


def read_metadata(version_dir):
    """The `assets.extra/tf_netvlad.json` metadata of an exported version directory."""
    path = Path(version_dir) / "assets.extra" / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No tf_netvlad export metadata at {path}; is {version_dir} a tf_netvlad export?")
    return json.loads(path.read_text())


def op_inventory(saved_model_dir):
    """What a SavedModel's graph uses: top-level graph plus every library function body.

    Returns a dict: `ops` (sorted op type names, calls of library functions removed),
    `xla_must_compile` (any node with `_XlaMustCompile=True`) and `devices` (sorted non-empty
    device strings pinned on nodes).
    """
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    ops, devices, must_compile = set(), set(), False
    for graph in (meta.graph_def for meta in saved.meta_graphs):
        functions = {f.signature.name for f in graph.library.function}
        nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
        for node in nodes:
            if node.op not in functions:
                ops.add(node.op)
            if node.device:
                devices.add(node.device)
            attr = node.attr.get("_XlaMustCompile")
            must_compile |= bool(attr is not None and attr.b)
    return {"ops": sorted(ops), "xla_must_compile": must_compile, "devices": sorted(devices)}


def export_onnx(model_or_path, path, opset=17, descriptor_dim=None):
    """Converts the float-image signature to ONNX with tf2onnx; returns the path.

    The ONNX graph has input `images` float32 `[B, H, W, 3]` (RGB 0..255, dynamic H and W) and
    output `descriptor` float32 `[B, D]`. The bytes signature cannot be converted (tf2onnx has no
    image decoders): decode on the client. The file is written to a temporary name and renamed.
    """
    try:
        import tf2onnx
    except ImportError as err:
        raise ImportError("ONNX export needs tf2onnx: `pip install tf2onnx onnx`.") from err
    model, _ = resolve_model(model_or_path)
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"ONNX output `path` must end with .onnx. Received: {path}")
    fn, spec = serving_functions(model, None, descriptor_dim)["serving_default"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tf2onnx.convert.from_function(
            tf.function(fn, input_signature=spec, autograph=False),
            input_signature=spec,
            opset=opset,
            output_path=os.fspath(tmp),
        )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
