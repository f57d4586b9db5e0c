"""Batched extraction of global descriptors and sampling of local features for k-means.

This is the only place that turns images into NumPy arrays. It accepts any `keras.Model` that maps
float32 RGB images `[B, H, W, 3]` in 0..255 to descriptors `[B, D]` (or, for
`sample_local_features`, to local features `[B, h, w, D]`); preprocessing lives inside the model.
Images are read with `data.pipelines.ImageBatches` (parallel decode, prefetch, input order kept,
errors name the file). `extract_descriptors` and `sample_local_features` parse `image_size`
(`data.image_size.parse_image_size`); `make_predict_fn` takes the parsed policy. Outputs are
float32 and never go through float64.

Images smaller than the model's minimum input size (`minimum_input_size`: the smallest image that
gives a 1x1 feature map) are stretched up to it inside the predict function
(`data.images.upscale_to_min_size`), so a valid 1x1 or 4x4 px image gets a descriptor instead of
aborting the model; a resize policy that can never reach the minimum (a fixed size or a max side
below it) is refused before any image is read (`check_image_size_for_model`).
"""

import logging
import weakref

import numpy as np
import tensorflow as tf

from tf_netvlad.data import pipelines
from tf_netvlad.data.fileio import resolve_paths
from tf_netvlad.data.image_size import check_image_size, format_image_size, parse_image_size
from tf_netvlad.data.images import upscale_to_min_size
from tf_netvlad.defaults import EXTRACT_BATCH_SIZE, INIT_IMAGES, INIT_PER_IMAGE, SEED
from tf_netvlad.models import streams

logger = logging.getLogger(__name__)


def _single_output(outputs):
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ValueError(
                f"The model must return one tensor; received a dict with keys {sorted(outputs)}."
            )
        outputs = next(iter(outputs.values()))
    elif isinstance(outputs, (list, tuple)):
        if len(outputs) != 1:
            raise ValueError(f"The model must return one tensor; received {len(outputs)} outputs.")
        outputs = outputs[0]
    return outputs


# model -> {(H, W, streams): tf.function}; weak keys so cached functions do not keep models alive.
_PREDICT_FNS = weakref.WeakKeyDictionary()
# model -> (min_h, min_w) or None, see `minimum_input_size`.
_MIN_SIZES = weakref.WeakKeyDictionary()
# Largest side probed by `minimum_input_size`; a model that needs more is left alone.
MIN_SIZE_PROBE_LIMIT = 4096


def _fits(model, height, width):
    """Whether `model` accepts a `height` x `width` image (every feature map at least 1x1)."""
    try:
        model.compute_output_shape((1, height, width, 3))
    except ValueError:  # Keras: "Computed output size would be zero or negative"
        return False
    return True


def _smallest(fits, low, high):
    """The smallest n in [low, high] with fits(n), given fits(high) and monotonicity."""
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return high


def _probe_min_size(model):
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, list) and len(shape) == 1:
        shape = shape[0]
    if not (isinstance(shape, tuple) and len(shape) == 4 and shape[1] is None and shape[2] is None):
        return None  # a fixed-size or non-image input: nothing to adapt
    if _fits(model, 1, 1):
        return None
    side = 2
    while not _fits(model, side, side):
        if side >= MIN_SIZE_PROBE_LIMIT:
            logger.warning("%s accepts no square image up to %d px; images are not upscaled.",
                           model.name, MIN_SIZE_PROBE_LIMIT)
            return None
        side *= 2
    side = _smallest(lambda n: _fits(model, n, n), side // 2 + 1, side)
    height = _smallest(lambda n: _fits(model, n, side), 1, side)
    width = _smallest(lambda n: _fits(model, side, n), 1, side)
    return (height, width) if _fits(model, height, width) else (side, side)


def minimum_input_size(model):
    """The smallest image `(height, width)` the model accepts, or None if any size works.

    An image is too small when a pooling or strided layer of the backbone would produce an empty
    feature map (VGG16: 16 px, four 2x2 max-pools before conv5; AlexNet: 31; MobileNetV2: 31;
    `tiny`: 8; ResNet50 cut at conv4 accepts 1 px). Found once per model from the layers' own
    shape arithmetic (`model.compute_output_shape` on `(1, h, w, 3)`, a binary search over h and
    w; no image is run), then cached. None for a model with a fixed input size, for one that
    accepts 1x1 images, or when the probe fails (logged), in which case nothing is upscaled.
    """
    if model not in _MIN_SIZES:
        try:
            _MIN_SIZES[model] = _probe_min_size(model)
        except Exception as error:  # any model kind: never let the probe itself fail extraction
            logger.debug("Could not probe the minimum input size of %r: %s", model, error)
            _MIN_SIZES[model] = None
    return _MIN_SIZES[model]


def check_image_size_for_model(model, image_size):
    """Refuses a parsed policy that can never reach the model's minimum input size; returns it.

    A fixed `(H, W)` below the minimum, or a max side below its larger side, would upscale every
    image (the user asked for smaller ones), so it is an error raised before any image is read.
    "keep" is always accepted: only images that are themselves too small are stretched.
    Returns the minimum `(min_h, min_w)` or None (see `minimum_input_size`).
    """
    image_size = check_image_size(image_size)
    min_size = minimum_input_size(model)
    if min_size is None or image_size is None:
        return min_size
    min_h, min_w = min_size
    if isinstance(image_size, tuple):
        too_small = image_size[0] < min_h or image_size[1] < min_w
    else:
        too_small = image_size < max(min_h, min_w)
    if too_small:
        raise ValueError(
            f"`image_size` {format_image_size(image_size)!r} is smaller than the minimum input of "
            f"model {model.name!r}: {min_h}x{min_w} px (the smallest image that gives a 1x1 "
            "feature map). Use a larger size (CLI: --image-size) or 'keep'."
        )
    return min_size


def make_predict_fn(model, image_size=None):
    """Wraps `model(images, training=False)` in one `tf.function` traced once per policy.

    `image_size` is the parsed policy. The input signature is `[None, H, W, 3]` for a fixed
    `(H, W)` policy and `[None, None, None, 3]` otherwise, so "keep" does not retrace for every new
    image shape. The function is cached per model and policy, so repeated extractions (cache
    refreshes, per-epoch validation) reuse one trace. Images smaller than the model's
    `minimum_input_size` are stretched up to it first (`data.images.upscale_to_min_size`). The
    batch runs in `streams.stream_count()` parts (`streams.in_streams`; one unless the process
    was configured for more).
    """
    size = check_image_size(image_size)
    height, width = size if isinstance(size, tuple) else (None, None)
    cache = _PREDICT_FNS.setdefault(model, {})
    count = streams.stream_count()
    if (height, width, count) not in cache:
        model_ref = weakref.ref(model)
        spec = tf.TensorSpec([None, height, width, 3], tf.float32)
        min_size = minimum_input_size(model)

        @tf.function(input_signature=[spec])
        def predict(images):
            images = upscale_to_min_size(images, min_size)
            return streams.in_streams(lambda part: _single_output(model_ref()(part, training=False)),
                                      images, count)

        cache[(height, width, count)] = predict
    return cache[(height, width, count)]


def _tqdm(total, desc, progress):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True)


def _check_out(out, count, dim):
    if out.ndim != 2 or out.shape[0] != count or (dim is not None and out.shape[1] != dim):
        raise ValueError(
            f"`out` must have shape ({count}, {dim if dim is not None else 'D'}) for {count} images "
            f"and descriptor dim {dim}. Received: out.shape={out.shape}"
        )
    if out.dtype not in (np.float32, np.float16):
        raise TypeError(f"`out` must be float32 or float16. Received: out.dtype={out.dtype}")


def extract_descriptors(
    model,
    paths,
    root=None,
    image_size=None,
    batch_size=EXTRACT_BATCH_SIZE,
    progress=True,
    on_error="raise",
    out=None,
    images=None,
):
    """Computes one global descriptor per image, in the order of `paths`.

    Args:
        model: `keras.Model` mapping float32 images `[B, H, W, 3]` (0..255 RGB) to `[B, D]`.
        paths: sequence of image paths, relative to `root` unless absolute.
        root: optional directory joined onto relative paths.
        image_size: resize policy (`None`/"keep", max side int or "640", `(H, W)` or "480x640");
            see `tf_netvlad.data.pipelines`.
        batch_size: images per model call (consecutive equal-shaped images for "keep"/max side).
        progress: show a tqdm progress bar.
        on_error: "raise" raises `data.ImageReadError` naming the first file that cannot be loaded;
            "skip" leaves such rows as NaN, logs the files, and returns their indices too.
        out: optional preallocated float32 or float16 array (or `np.memmap`) of shape `(n, D)` to
            write into, keeping memory bounded for large databases.
        images: optional `data.decoded.DecodedImages` holding every file of `paths`, decoded at
            the fixed `image_size`: the pixels are read from memory instead of the files.

    An image smaller than the model's `minimum_input_size` (e.g. a valid 1x1 px PNG) is not an
    error: it is stretched up to that size and gets a descriptor. A fixed size or max side below
    the minimum is refused (`ValueError`) before any image is read.

    Returns:
        `np.ndarray (n, D)` float32 (or `out`). With `on_error="skip"`: a tuple
        `(descriptors, skipped)` where `skipped` is an int64 array of indices into `paths` whose rows
        are NaN.
    """
    image_size = parse_image_size(image_size)
    if images is None:
        batches = pipelines.ImageBatches(paths, root, image_size, batch_size, on_error)
    elif images.image_size != image_size:
        raise ValueError(f"The decoded images are {images.image_size}; extraction asked for "
                         f"image_size={image_size!r}.")
    else:
        batches = images.batches(paths, root, batch_size, on_error)
    check_image_size_for_model(model, image_size)
    count = len(batches)
    dim = static_output_dim(model)
    if out is not None:
        _check_out(out, count, dim)
    predict = make_predict_fn(model, image_size)
    result, skipped_seen = out, 0
    with _tqdm(count, "descriptors", progress) as bar:
        for indices, images in batches:
            descriptors = np.asarray(predict(tf.convert_to_tensor(images)))
            if descriptors.ndim != 2 or descriptors.shape[0] != len(indices):
                raise ValueError(
                    "The model must map images [B, H, W, 3] to descriptors [B, D]. Received output "
                    f"shape {descriptors.shape} for input shape {images.shape}."
                )
            if result is None:
                result = np.empty((count, descriptors.shape[1]), np.float32)
            elif result.shape[1] != descriptors.shape[1]:
                _check_out(result, count, descriptors.shape[1])
            if _contiguous(indices):
                result[indices[0] : indices[-1] + 1] = descriptors
            else:
                result[indices] = descriptors
            bar.update(len(indices) + len(batches.skipped) - skipped_seen)
            skipped_seen = len(batches.skipped)
    if result is None:
        if dim is None:
            raise ValueError(
                "No image could be loaded and the model's output dim is unknown, so no descriptor "
                f"array can be returned. Skipped {len(batches.skipped)} of {count} images."
            )
        result = np.empty((count, dim), np.float32)
    skipped = np.asarray(batches.skipped, np.int64)
    if on_error == "skip":
        if len(skipped):
            result[skipped] = np.nan
        return result, skipped
    return result


def _contiguous(indices):
    return indices[-1] - indices[0] + 1 == len(indices)


def static_output_dim(model):
    """The descriptor dim D of a model with a static `[B, D]` output, else None."""
    try:
        shape = model.output_shape
    except (AttributeError, ValueError):
        return None
    if isinstance(shape, list) and len(shape) == 1:
        shape = shape[0]
    if isinstance(shape, tuple) and len(shape) == 2 and isinstance(shape[1], int):
        return shape[1]
    return None


def sample_local_features(
    feature_model,
    paths,
    root=None,
    num_images=INIT_IMAGES,
    per_image=INIT_PER_IMAGE,
    image_size=None,
    seed=SEED,
    batch_size=EXTRACT_BATCH_SIZE,
    progress=True,
):
    """Samples local features for k-means initialisation of NetVLAD (MATLAB `getClusters.m` recipe).

    `num_images` images are drawn at random without replacement (all images if there are fewer),
    then `per_image` spatial locations are drawn at random without replacement from each image's
    feature map (all `h * w` locations when the map has fewer). Both draws use one
    `np.random.default_rng(seed)`: first the images, then the locations image by image in path
    order, so the result depends only on `seed` and the inputs, not on `batch_size`. Images are
    processed in path order (sorted sample) for disk locality.

    Args:
        feature_model: `keras.Model` mapping images `[B, H, W, 3]` (0..255) to local features
            `[B, h, w, D]`, already L2-normalised per location by the caller's model.
        paths, root, image_size, batch_size, progress: as in `extract_descriptors` (images
            smaller than the model's minimum input are stretched up to it).
        num_images: int >= 1, images to sample (MATLAB/pytorch-NetVlad: 500).
        per_image: int >= 1, locations per image (100).
        seed: int, RNG seed (MATLAB: 43).

    Returns:
        float32 array `(sum_i min(per_image, h_i * w_i), D)`, which is
        `(min(num_images, n) * per_image, D)` whenever every map has >= `per_image` locations.
    """
    pipelines.check_positive_int(num_images, "num_images")
    pipelines.check_positive_int(per_image, "per_image")
    image_size = parse_image_size(image_size)
    check_image_size_for_model(feature_model, image_size)
    full_paths = resolve_paths(paths, root)
    if not full_paths:
        raise ValueError("`paths` is empty: need at least one image to sample local features.")
    rng = np.random.default_rng(seed)
    count = min(int(num_images), len(full_paths))
    chosen = np.sort(rng.choice(len(full_paths), size=count, replace=False))
    batches = pipelines.ImageBatches([full_paths[i] for i in chosen], None, image_size, batch_size)
    predict = make_predict_fn(feature_model, image_size)
    result, filled = None, 0
    with _tqdm(count, "local features", progress) as bar:
        for indices, images in batches:
            features = _single_output(np.asarray(predict(tf.convert_to_tensor(images))))
            if features.ndim != 4 or features.shape[0] != len(indices):
                raise ValueError(
                    "`feature_model` must map images [B, H, W, 3] to local features [B, h, w, D]. "
                    f"Received output shape {features.shape} for input shape {images.shape}."
                )
            locations = features.shape[1] * features.shape[2]
            flat = features.reshape(len(indices), locations, features.shape[3])
            take = min(int(per_image), locations)
            if result is None:
                result = np.empty((count * int(per_image), features.shape[3]), np.float32)
            for row in flat:
                if take < locations:
                    row = row[rng.choice(locations, size=take, replace=False)]
                result[filled : filled + take] = row
                filled += take
            bar.update(len(indices))
    if filled < len(result):
        logger.warning(
            "Feature maps have fewer than per_image=%d locations; sampled %d descriptors "
            "instead of %d.",
            per_image, filled, len(result),
        )
    return result[:filled]
