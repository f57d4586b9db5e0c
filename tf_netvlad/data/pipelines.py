"""Image input pipeline: order-preserving tf.data batches of decoded, resized images.

Images are read, decoded and resized with TensorFlow ops only (`tf_netvlad.data.images`: `tf.io`,
`tf.image`), the same graph-safe functions the SavedModel serving signature runs, so extraction
and serving give identical pixels.

Resize policy (`image_size`), shared by extraction, evaluation and serving:

* `None` ("keep"): full resolution, like the MATLAB NetVLAD code. Images of different sizes cannot
  be stacked, so batches hold consecutive images of equal shape (see `ImageBatches`).
* `int` S ("max side"): images whose longer side exceeds S are scaled down, keeping the aspect
  ratio, so that the longer side equals S; the shorter side is `floor(side * S / longer + 0.5)`
  (at least 1). Smaller images are **never upscaled** (like hloc's `resize_max`), so the cost per
  image is bounded and small images keep their native pixels.
* `(H, W)`: every image is resized to exactly H x W (aspect ratio not kept).

Images smaller than the model can take (its minimum input size, the smallest image that gives a
1x1 feature map: 16 px for VGG16, 8 for `tiny`) are valid images, not errors: the model's predict
function stretches each too-short side up to the minimum (`data.images.upscale_to_min_size`,
applied by `tf_netvlad.models.extract.make_predict_fn` and by the serving signatures), so a 1x1
px PNG gets a descriptor in every command. The pipeline itself does not know the model and
yields such images as they are.

Resizing is bilinear with `antialias=False` (`tf.image.resize`, half-pixel centres), the same op the
serving signature runs, so extraction and serving give identical pixels. Without antialiasing, strong
downscaling (more than about 2x) aliases; pre-shrink such images offline if that matters.
Pixel values stay float32 in 0..255 RGB; normalisation lives inside the model.

The functions here take the policy already parsed (`tf_netvlad.data.image_size.parse_image_size`,
called by the public functions that read images, such as `extract_descriptors`).
"""

import logging
import os

import numpy as np
import tensorflow as tf

from tf_netvlad.data import layouts
from tf_netvlad.data.fileio import resolve_paths
from tf_netvlad.data.image_size import check_image_size, is_fixed_size
from tf_netvlad.data.images import diagnose_image, load_image
from tf_netvlad.defaults import EXTRACT_BATCH_SIZE, ON_ERROR_CHOICES

# Batches prepared ahead of their consumer, and images decoded at once (one per core).
PREFETCH_BATCHES = 2
DECODE_CALLS = max(2, os.cpu_count() or 2)

logger = logging.getLogger(__name__)


class ImageReadError(ValueError):
    """An image file is missing, unreadable or cannot be decoded. `path` names the file."""

    def __init__(self, message, path=None, index=None):
        super().__init__(message)
        self.path = path
        self.index = index


def check_positive_int(value, name):
    """Raises `ValueError` naming `name` unless `value` is an int (not a bool) >= 1."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer))
            or value < 1):
        raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")


def check_batch_size(batch_size):
    check_positive_int(batch_size, "batch_size")


# --------------------------------------------------------------------------- datasets


def check_on_error(on_error):
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(
            f"`on_error` must be one of {ON_ERROR_CHOICES}. Received: on_error={on_error!r}"
        )


def check_files_exist(paths, max_listed=5):
    """Raises `ImageReadError` naming the first missing files (`layouts.missing_files`: one
    directory listing per folder)."""
    missing = layouts.missing_files(paths)
    if missing:
        listed = ", ".join(repr(p) for p in missing[:max_listed])
        more = f" and {len(missing) - max_listed} more" if len(missing) > max_listed else ""
        raise ImageReadError(
            f"{len(missing)} of {len(paths)} image files do not exist: {listed}{more}. "
            "Check the dataset root and the image lists.",
            path=missing[0],
            index=list(paths).index(missing[0]),
        )


def _batch_shape(image_size):
    return [image_size[0], image_size[1], 3] if isinstance(image_size, tuple) else [None, None, 3]


def image_dataset(
    paths, root=None, image_size=None, batch_size=EXTRACT_BATCH_SIZE, on_error="raise",
    with_indices=False
):
    """Builds an order-preserving tf.data pipeline of float32 image batches (0..255 RGB).

    Decoding runs in parallel (`DECODE_CALLS` images at once, deterministic order) and batches are
    prefetched (`PREFETCH_BATCHES`; tf.data's autotuning off: `without_autotune`). With a fixed
    `(H, W)` policy, batches hold `batch_size` images; with "keep" or a max side, shapes may
    differ, so every batch holds one image (`ImageBatches` regroups
    consecutive equal shapes into larger batches).

    Args:
        paths: sequence of image paths, relative to `root` unless absolute.
        root: optional directory the relative paths are joined onto.
        image_size: the parsed resize policy (`data.image_size.parse_image_size`), see the
            module docstring.
        batch_size: int >= 1, images per batch for the fixed-size policy.
        on_error: "raise" stops with an error naming the file that could not be read or decoded
            (missing files are reported before any decoding starts); "skip" drops such images
            silently, so pass `with_indices=True` to find out which ones were dropped.
        with_indices: if True, elements are `(indices int64 [b], images [b, H, W, 3])` where
            `indices` are positions in `paths`.

    Returns:
        `tf.data.Dataset` of `images` or `(indices, images)`.
    """
    check_on_error(on_error)
    check_batch_size(batch_size)
    check_image_size(image_size)
    full_paths = resolve_paths(paths, root)
    if on_error == "raise":
        check_files_exist(full_paths)
    count = len(full_paths)
    paths_t = tf.constant(full_paths if count else [""], dtype=tf.string)
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.range(count, dtype=tf.int64), tf.constant(full_paths, dtype=tf.string, shape=[count]))
    )
    ds = ds.map(
        lambda i, p: (i, load_image(p, image_size)),
        num_parallel_calls=DECODE_CALLS,
        deterministic=True,
    )
    # A failing element is dropped here; in "raise" mode the index gap is turned into an error
    # that names the file (tf's own decode errors do not say which file failed).
    ds = ds.ignore_errors()
    if on_error == "raise":
        ds = _assert_no_gaps(ds, paths_t, count, image_size)
    ds = ds.batch(int(batch_size) if is_fixed_size(image_size) else 1)
    if not with_indices:
        ds = ds.map(lambda i, x: x)
    return without_autotune(ds.prefetch(PREFETCH_BATCHES))


def without_autotune(ds):
    """`ds` with tf.data's autotuning off; the package's pipelines set their parallelism instead.

    With autotuning on, deleting an iterator waits for the autotuning thread: a `model.fit` call
    on the training tuples ended up to 2.3 s after its last step in 3 of 6 calls, a loop over 2,000
    images to extract in 1 of 6 by 1.1 s (benchmarks/RESULTS.md, "A step inside `fit`")."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def _assert_no_gaps(ds, paths_t, count, image_size):
    """Checks in-graph that indices arrive as 0, 1, 2, ...; a gap fails with the file's path."""
    shape = [d if d is not None else 1 for d in _batch_shape(image_size)]
    sentinel = tf.data.Dataset.from_tensors(
        (tf.constant(count, tf.int64), tf.zeros(shape, tf.float32))
    )
    ds = ds.concatenate(sentinel)

    def check(expected, element):
        index, image = element
        missing_path = tf.gather(paths_t, tf.minimum(expected, max(count - 1, 0)))
        message = tf.strings.join(
            [
                "Could not read or decode image file '",
                missing_path,
                "' (index ",
                tf.strings.as_string(expected),
                "): missing, unreadable, or not a valid JPEG/PNG/GIF/BMP image. "
                "Fix or remove the file, or use on_error='skip'.",
            ]
        )
        assertion = tf.debugging.Assert(tf.equal(index, expected), [message])
        with tf.control_dependencies([assertion]):
            index = tf.identity(index)
        return index + 1, (index, image)

    ds = ds.scan(tf.constant(0, tf.int64), check)
    return ds.filter(lambda i, x: i < count)


class ImageBatches:
    """Iterates over images as NumPy batches `(indices, images)` in input order, naming bad files.

    Wraps `image_dataset` (parallel decode, prefetch) and regroups consecutive images of equal
    shape into batches of up to `batch_size` when the resize policy lets shapes differ, so order
    is preserved and memory stays bounded (at most one batch is held).

    Args:
        paths, root, image_size, batch_size: as in `image_dataset` (`image_size` parsed).
        on_error: "raise" raises `ImageReadError` naming the file and the reason (missing files are
            reported before any decoding); "skip" logs a warning per file and leaves its index out.

    Attributes:
        skipped: list of indices (into `paths`) that were skipped; complete after iteration.
        paths: the resolved paths.

    Example:
    >>> batches = ImageBatches(["a.jpg", "b.png"], root="/data", image_size=640)
    >>> for indices, images in batches: ...
    """

    def __init__(self, paths, root=None, image_size=None, batch_size=EXTRACT_BATCH_SIZE,
                 on_error="raise"):
        check_on_error(on_error)
        check_batch_size(batch_size)
        self.paths = resolve_paths(paths, root)
        self.image_size = check_image_size(image_size)
        self.batch_size = int(batch_size)
        self.on_error = on_error
        self.skipped = []

    def __len__(self):
        return len(self.paths)

    def _gap(self, start, stop):
        for index in range(start, stop):
            path = self.paths[index]
            reason = diagnose_image(path) or "failed to load in the input pipeline"
            if self.on_error == "raise":
                raise ImageReadError(
                    f"Could not load image file '{path}' (index {index}): {reason}. "
                    "Fix or remove the file, or use on_error='skip'.",
                    path=path,
                    index=index,
                )
            logger.warning("Skipping image '%s' (index %d): %s", path, index, reason)
            self.skipped.append(index)

    def __iter__(self):
        self.skipped = []
        if self.on_error == "raise":
            check_files_exist(self.paths)
        ds = image_dataset(
            self.paths, None, self.image_size, self.batch_size, on_error="skip", with_indices=True
        )
        expected = 0
        pending_idx, pending_img = [], []
        for indices, images in ds.as_numpy_iterator():
            for index, image in zip(indices, images):
                index = int(index)
                if index > expected:
                    self._gap(expected, index)
                expected = index + 1
                if pending_img and (
                    image.shape != pending_img[0].shape or len(pending_img) == self.batch_size
                ):
                    yield np.asarray(pending_idx, np.int64), np.stack(pending_img)
                    pending_idx, pending_img = [], []
                pending_idx.append(index)
                pending_img.append(image)
        if pending_img:
            yield np.asarray(pending_idx, np.int64), np.stack(pending_img)
        if expected < len(self.paths):
            self._gap(expected, len(self.paths))
        if self.skipped:
            logger.warning(
                "Skipped %d of %d images that could not be loaded.", len(self.skipped), len(self)
            )
