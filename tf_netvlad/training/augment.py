"""Training-time augmentation of the tuple images (`--augment`: on in the CPU recipe, see `TrainConfig`).

The query image of each tuple (`TuplePipeline`; with `--augment-all-slots` also each positive and
negative) gets its own small change, so the descriptor learns what a place looks like under light
and framing it was not photographed in:

* geometric: a random crop of `min_crop`..1 of each side at a random offset, resized back to the
  image size (bilinear; a small zoom and shift, like a camera a few metres off or turned a few
  degrees);
* photometric: brightness (± `brightness` of the full range), contrast (distances to the image's
  mean per channel scaled by a factor in [1 - c, 1 + c]), saturation (each pixel blended with its
  luma: factor in [1 - s, 1 + s], 0 would be grey) and hue (the chroma plane of YIQ rotated by
  ± `hue` of a full turn; grey pixels stay grey).

The colour changes are linear maps per image, so they run on a whole stack of images at once, in one
XLA-compiled pass over its pixels (`_colour`): a batch of the CPU recipe (4 tuples of 8 images at
96×128) takes 6.8 ms, crop included, against 16.7 ms one image at a time through `tf.image`
(benchmarks/RESULTS.md, "Augmentation per batch").

The draws are stateless: a function of the 2-int seed a caller derives from (run seed, refresh cycle,
tuple row) (`tuple_seed`); image k of a stack takes row k of the draws, so a resumed run repeats the
augmentations of an uninterrupted one and the parallel tf.data map is deterministic. Images are
float32 RGB in 0..255, shape `(n, H, W, 3)` (`augment_images`) or `(H, W, 3)` (`augment_image`).
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

# RGB -> YIQ (NTSC); Y is the luma the saturation blends towards, (I, Q) the chroma plane hue turns.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.595716, -0.274453, -0.321263],
                        [0.211456, -0.522591, 0.311135]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
_LUMA = _RGB_TO_YIQ[0].astype(np.float32)
# Columns of the draws: crop side h, side w, top, left (in [0, 1)), then brightness, contrast,
# saturation, hue (in [-1, 1) times the strength).
_NUM_DRAWS = 8


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Strengths of the augmentation; 0 switches a part off (`Augmentation.none()` is the identity)."""

    min_crop: float = 0.85
    brightness: float = 0.15
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.03

    def __post_init__(self):
        if not 0 < self.min_crop <= 1:
            raise ValueError(f"`min_crop` must be in (0, 1]. Received: {self.min_crop!r}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be in [0, 1). Received: {getattr(self, name)!r}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"`hue` must be in [0, 0.5]. Received: {self.hue!r}")

    @classmethod
    def none(cls):
        return cls(min_crop=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)

    @property
    def is_identity(self):
        return self == Augmentation.none()

    @property
    def changes_colour(self):
        return any(getattr(self, name) > 0 for name in ("brightness", "contrast", "saturation", "hue"))


def _crop(images, draws, min_crop):
    """Image k cropped to sides `s_h`, `s_w` in [min_crop, 1] at a uniform offset, resized back."""
    size = tf.shape(images)[1:3]
    side_h = min_crop + (1.0 - min_crop) * draws[:, 0]
    side_w = min_crop + (1.0 - min_crop) * draws[:, 1]
    top = draws[:, 2] * (1.0 - side_h)
    left = draws[:, 3] * (1.0 - side_w)
    boxes = tf.stack([top, left, top + side_h, left + side_w], axis=1)
    return tf.image.crop_and_resize(images, boxes, tf.range(tf.shape(images)[0]), size)


def _hue_matrices(turns):
    """`(n, 3, 3)` RGB -> RGB maps rotating the YIQ chroma plane by `turns` of a full circle."""
    angle = 2.0 * math.pi * tf.cast(turns, tf.float64)
    cos, sin = tf.cos(angle), tf.sin(angle)
    one, zero = tf.ones_like(angle), tf.zeros_like(angle)
    rotation = tf.stack([tf.stack([one, zero, zero], 1),
                         tf.stack([zero, cos, -sin], 1),
                         tf.stack([zero, sin, cos], 1)], 1)
    return tf.cast(tf.einsum("ij,njk,kl->nil", _YIQ_TO_RGB, rotation, _RGB_TO_YIQ), tf.float32)


def _per_image(values):
    return values[:, None, None, None]


@tf.function(jit_compile=True)
def _colour(images, brightness, contrast, saturation, hue_maps):
    """The photometric changes of a stack in one fused pass; `None` parts are off (traced away)."""
    unit = images / 255.0
    if brightness is not None:
        unit = unit + _per_image(brightness)
    if contrast is not None:
        mean = tf.reduce_mean(unit, axis=[1, 2], keepdims=True)
        unit = mean + (unit - mean) * _per_image(contrast)
    unit = tf.clip_by_value(unit, 0.0, 1.0)
    if saturation is not None:
        luma = tf.reduce_sum(unit * _LUMA, axis=-1, keepdims=True)
        unit = tf.clip_by_value(luma + (unit - luma) * _per_image(saturation), 0.0, 1.0)
    if hue_maps is not None:  # out[c] = sum_d M[c, d] in[d], per image
        unit = tf.clip_by_value(tf.einsum("nhwd,ncd->nhwc", unit, hue_maps), 0.0, 1.0)
    return unit * 255.0


def augment_images(images, seed, augmentation):
    """A stack `(n, H, W, 3)`, image k changed by row k of the stateless draws of `seed` (`(2,)`)."""
    images = tf.convert_to_tensor(images, tf.float32)
    if augmentation.is_identity:
        return images
    return augment_with_draws(images, draws_of(seed, tf.shape(images)[0]), augmentation)


def draws_of(seed, n):
    """The `(n, 8)` stateless draws of `seed` (`(2,)`) for `n` images; row k is image k's."""
    return tf.random.stateless_uniform([n, _NUM_DRAWS], tf.cast(seed, tf.int64))


def augment_with_draws(images, draws, augmentation):
    """A stack `(n, H, W, 3)`, image k changed by row k of `draws` (`(n, 8)` from `draws_of`): a
    stack gathered from several tuples, each image with the draw its own tuple's seed gives it."""
    images = tf.convert_to_tensor(images, tf.float32)
    if augmentation.is_identity:
        return images
    if augmentation.min_crop < 1:
        images = _crop(images, draws, augmentation.min_crop)
    if not augmentation.changes_colour:
        return images

    def around(centre, column, strength):  # uniform in centre ± strength, or None when off
        return None if strength == 0 else centre + strength * (2.0 * draws[:, column] - 1.0)

    hue = around(0.0, 7, augmentation.hue)
    return _colour(images, around(0.0, 4, augmentation.brightness), around(1.0, 5, augmentation.contrast),
                   around(1.0, 6, augmentation.saturation), None if hue is None else _hue_matrices(hue))


def augment_image(image, seed, augmentation):
    """One image `(H, W, 3)`, changed by the stateless draws of `seed` (int32/int64 `(2,)`)."""
    return augment_images(tf.convert_to_tensor(image, tf.float32)[None], seed, augmentation)[0]


def tuple_seed(base_seed, cycle, row):
    """The `(2,)` int64 seed of the images of tuple `row` in refresh cycle `cycle` of a run."""
    seed = tf.stack([tf.cast(base_seed, tf.int64), tf.cast(cycle, tf.int64)])
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(row, tf.int64))
