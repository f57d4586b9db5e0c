"""Decoding and resizing one image with TensorFlow ops (graph-safe: reused in the serving signature).

The resize policy arrives parsed (`tf_netvlad.data.image_size`); what it does to the pixels is
described in `tf_netvlad.data.pipelines`.
"""

import os
import re

import tensorflow as tf

from tf_netvlad.data.image_size import check_image_size


def decode_image(encoded):
    """Decodes an encoded image (tf.string scalar) to uint8 RGB `[H, W, 3]`.

    JPEG uses `dct_method="INTEGER_ACCURATE"` (libjpeg's default, which PIL uses); PNG, GIF (first
    frame), BMP and WebP go through `tf.io.decode_image`. Grey images are replicated to 3 channels
    and an alpha channel is dropped (as PIL's `convert("RGB")`). Graph-safe without autograph
    (uses `tf.cond`). Extraction and the `serve_bytes` signature both run this function, so they
    always decode identically.

    Against PIL's `Image.open(f).convert("RGB")` (measured by `tests/data/test_pipelines.py`):

    * bit-exact for baseline, progressive and optimised JPEGs in YCbCr or grey (any chroma
      subsampling); 8-bit PNGs of every colour type (RGB, RGBA, grey, grey+alpha, palette, 1-bit);
      16-bit RGB/RGBA PNGs (both keep the high byte); GIF; BMP;
    * within 1 grey level for CMYK (Adobe) JPEGs: the CMYK -> RGB conversion rounds differently;
    * not comparable for 16-bit grey PNGs: TensorFlow scales the 16-bit value to 0..255 (its high
      byte), while PIL clips it at 255 (every value above 255 becomes white), so they differ by up
      to 255. TensorFlow's is the meaningful image; convert such files to 8 bits beforehand if
      PIL's behaviour matters.

    Neither applies an EXIF orientation tag.
    """
    encoded = tf.convert_to_tensor(encoded, dtype=tf.string)

    def jpeg():
        return tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")

    def other():
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
        return tf.ensure_shape(image, [None, None, 3])

    image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    return tf.ensure_shape(image, [None, None, 3])


def target_size(height, width, image_size):
    """Output `(H, W)` int32 tensors of the parsed resize policy for an input of `height` x `width`."""
    image_size = check_image_size(image_size)
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    if image_size is None:
        return height, width
    if isinstance(image_size, tuple):
        return tf.constant(image_size[0], tf.int32), tf.constant(image_size[1], tf.int32)
    longer = tf.maximum(height, width)
    scale = tf.minimum(tf.constant(1.0, tf.float64), image_size / tf.cast(longer, tf.float64))

    def scaled(side):
        out = tf.floor(tf.cast(side, tf.float64) * scale + 0.5)
        return tf.maximum(tf.cast(out, tf.int32), 1)

    return scaled(height), scaled(width)


def resize_image(image, image_size):
    """Applies the parsed resize policy to one image `[H, W, 3]` (any dtype); returns float32 0..255.

    Bilinear, `antialias=False`, half-pixel centres (`tf.image.resize`). No resampling happens when
    the target equals the input size, so "keep" and "max side" are exact for small images.
    """
    image_size = check_image_size(image_size)
    image = tf.convert_to_tensor(image)
    as_float = tf.cast(image, tf.float32)
    if image_size is None:
        return as_float
    shape = tf.shape(image)
    out_h, out_w = target_size(shape[0], shape[1], image_size)
    same = tf.logical_and(tf.equal(out_h, shape[0]), tf.equal(out_w, shape[1]))

    def resized():
        return tf.image.resize(
            as_float, tf.stack([out_h, out_w]), method="bilinear", antialias=False
        )

    out = tf.cond(same, lambda: as_float, resized)
    if isinstance(image_size, tuple):
        return tf.ensure_shape(out, [image_size[0], image_size[1], 3])
    return tf.ensure_shape(out, [None, None, 3])


def upscale_to_min_size(images, min_size):
    """Stretches images smaller than a model's minimum input size up to it; others pass unchanged.

    A backbone needs an input of at least `min_size = (min_h, min_w)` pixels to produce a 1x1
    feature map (`tf_netvlad.models.extract.minimum_input_size`: 8 for `tiny`, 16 for VGG16); a
    smaller image makes its pooling layers fail (an `AbortedError ... MaxPool` in a graph). So a
    valid but tiny image (e.g. a 1x1 or 4x4 px PNG) is treated as an image, not as an error: each
    side shorter than its minimum is resized to exactly the minimum, the other side is kept
    (bilinear, `antialias=False`, half-pixel centres, as `resize_image`). Only such degenerate
    images change aspect ratio; every image at least `min_size` is returned as is, without
    resampling. Extraction (`make_predict_fn`) and both serving signatures run this same function,
    so a tiny image gets the same descriptor everywhere.

    Args:
        images: float `[B, H, W, 3]` or `[H, W, 3]` (any numeric dtype; returned as float32).
        min_size: `(min_h, min_w)` ints, or None for no minimum (returned as float32 unchanged).

    Graph-safe without autograph (`tf.cond`); when the static H and W are known and large enough,
    no op is added at all.
    """
    images = tf.cast(tf.convert_to_tensor(images), tf.float32)
    if min_size is None:
        return images
    min_h, min_w = (int(v) for v in min_size)
    static_h, static_w = images.shape[-3], images.shape[-2]
    if static_h is not None and static_w is not None and static_h >= min_h and static_w >= min_w:
        return images
    shape = tf.shape(images)
    height, width = shape[-3], shape[-2]
    small = tf.logical_or(height < min_h, width < min_w)

    def stretched():
        size = tf.stack([tf.maximum(height, min_h), tf.maximum(width, min_w)])
        return tf.image.resize(images, size, method="bilinear", antialias=False)

    return tf.cond(small, stretched, lambda: images)


def decode_and_resize(encoded, image_size=None):
    """`decode_image` then `resize_image`: encoded bytes -> float32 `[H', W', 3]` in 0..255."""
    return resize_image(decode_image(encoded), image_size)


def load_image(path, image_size=None):
    """Reads, decodes and resizes one image file; returns float32 `[H, W, 3]` in 0..255."""
    return decode_and_resize(tf.io.read_file(path), image_size)


def diagnose_image(path):
    """Returns a human-readable reason why `path` cannot be loaded, or None if it loads fine."""
    if not os.path.exists(path):
        return "file does not exist"
    if not os.path.isfile(path):
        return "not a regular file"
    try:
        size = os.path.getsize(path)
        with open(path, "rb"):
            pass
    except OSError as error:
        return f"cannot be opened ({error})"
    if size == 0:
        return "file is empty (0 bytes)"
    try:
        decode_image(tf.io.read_file(path))
    except (tf.errors.OpError, ValueError) as error:
        message = getattr(error, "message", str(error)).strip().splitlines()[0]
        message = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:\w+\].*$", "", message)
        return f"cannot be decoded as JPEG/PNG/GIF/BMP ({message})"
    return None
