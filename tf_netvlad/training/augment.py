"""Training-time augmentation of the tuple images (the CPU recipe's; MATLAB's `trainWeakly.m` has none).

Every image of a tuple (the query, each positive, each negative) gets its own small change, so the
descriptor learns what a place looks like under light and framing it was not photographed in:

* geometric: a random crop of `min_crop`..1 of each side at a random offset, resized back to the
  image size (a small zoom and shift, like a camera a few metres off or turned a few degrees);
* photometric: brightness (± `brightness` of the full range), contrast and saturation (factors in
  [1 - c, 1 + c]) and hue (± `hue` of the colour circle).

The draws are stateless: a function of the 2-int seed a caller derives from (run seed, refresh cycle,
tuple row, image slot), so a resumed run repeats the augmentations of an uninterrupted one, and the
parallel tf.data map is deterministic. Images are float32 RGB in 0..255, shape `(H, W, 3)`.
"""

import dataclasses

import tensorflow as tf


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


def _uniform(seed, low, high):
    return tf.random.stateless_uniform([], seed, minval=low, maxval=high, dtype=tf.float32)


def _random_crop(image, seed, min_crop):
    """A crop of `s_h`, `s_w` in [min_crop, 1] of each side at a uniform offset, resized back."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    side_h = _uniform(seeds[0], min_crop, 1.0)
    side_w = _uniform(seeds[1], min_crop, 1.0)
    top = _uniform(seeds[2], 0.0, 1.0) * (1.0 - side_h)
    left = _uniform(seeds[3], 0.0, 1.0) * (1.0 - side_w)
    box = tf.stack([top, left, top + side_h, left + side_w])[None]
    return tf.image.crop_and_resize(image[None], box, [0], tf.stack([height, width]))[0]


def augment_image(image, seed, augmentation):
    """One image, changed by the stateless draws of `seed` (int32/int64 `(2,)`); same shape, 0..255."""
    if augmentation.is_identity:
        return image
    image = tf.convert_to_tensor(image, tf.float32)
    seed = tf.cast(seed, tf.int64)
    seeds = tf.random.experimental.stateless_split(seed, num=5)
    if augmentation.min_crop < 1:
        image = _random_crop(image, seeds[0], augmentation.min_crop)
    unit = image / 255.0
    if augmentation.brightness > 0:
        unit = unit + _uniform(seeds[1], -augmentation.brightness, augmentation.brightness)
    if augmentation.contrast > 0:
        factor = _uniform(seeds[2], 1 - augmentation.contrast, 1 + augmentation.contrast)
        mean = tf.reduce_mean(unit, axis=[0, 1], keepdims=True)
        unit = mean + (unit - mean) * factor
    unit = tf.clip_by_value(unit, 0.0, 1.0)
    if augmentation.saturation > 0:
        factor = _uniform(seeds[3], 1 - augmentation.saturation, 1 + augmentation.saturation)
        unit = tf.clip_by_value(tf.image.adjust_saturation(unit, factor), 0.0, 1.0)
    if augmentation.hue > 0:
        unit = tf.image.adjust_hue(unit, _uniform(seeds[4], -augmentation.hue, augmentation.hue))
    return tf.clip_by_value(unit, 0.0, 1.0) * 255.0


def image_seed(base_seed, cycle, row, slot):
    """The `(2,)` int64 seed of image `slot` of tuple `row` in refresh cycle `cycle` of a run."""
    seed = tf.stack([tf.cast(base_seed, tf.int64), tf.cast(cycle, tf.int64)])
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(row, tf.int64))
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(slot, tf.int64))
