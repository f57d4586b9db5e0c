"""A split's images decoded once and held in memory, for the many passes training makes over them.

Training reads the same images again and again: every step loads 32 tuple images, every refresh
cycle extracts the whole training database and the validation split, and on a CPU the decoding
runs on the cores the training step needs (on the "small" configuration, 180×240 JPEGs: a refresh
cycle took 29.3 s from the files and 23.3 s from memory, docs/recipes.md). `DecodedImages.load`
decodes and resizes each image once (the extraction pipeline, in parallel, in order) and keeps the
pixels as one float32 `tf.Variable` `(n, H, W, 3)`: 144 KiB per image at 96×128, 3.5 MiB at
480×640. The training loop uses it when it fits its memory budget (`TrainConfig.image_cache_mb`,
`train --image-cache-mb`).

The pixels are exactly the ones `data.images.load_image` returns, so training, validation and a
later `tf_netvlad evaluate` from the files see the same images and report the same recalls. A
resized image has fractional pixels (rounded to uint8, they moved the validation recall@1 of a
k-means init by one query in 30 against the files'), so they are held as float32. Files already at
the training size decode to whole numbers 0..255: when float32 would not fit the budget but uint8
would (a quarter of the memory: 36 KiB per image at 96×128), `decode_splits` holds them as uint8,
which is exact, checking every batch; a split whose files are not all at that size is then read
from its files. Readers get float32 either way (`DecodedImages.gather`). Images that fail to decode
are kept as failed rows (`ok` False): readers skip them or raise `ImageReadError` naming the file,
as `pipelines.ImageBatches` does.
"""

import logging

import numpy as np
import tensorflow as tf

from tf_netvlad.data.fileio import resolve_paths
from tf_netvlad.data.image_size import check_image_size
from tf_netvlad.data.images import diagnose_image
from tf_netvlad.data.pipelines import ImageBatches, ImageReadError, check_batch_size, check_on_error
from tf_netvlad.defaults import EXTRACT_BATCH_SIZE

logger = logging.getLogger(__name__)


def cache_nbytes(num_images, image_size, dtype="float32"):
    """Bytes `DecodedImages` needs for `num_images` RGB images of the fixed size `(H, W)` held as
    `dtype` (float32, or uint8 for files already at that size)."""
    height, width = image_size
    return int(num_images) * int(height) * int(width) * 3 * np.dtype(dtype).itemsize


class NotWholePixels(ValueError):
    """An image decoded to fractional pixels (it was resized), so it cannot be held as uint8."""


def decode_splits(splits, image_size, budget_mib, batch_size=EXTRACT_BATCH_SIZE, progress=False):
    """Every image of `splits` (`(split, root)` pairs, e.g. training and validation) decoded once
    into one `DecodedImages`, or None when `budget_mib` is 0 or they need more (logged: the files
    are read instead). A split's root defaults to `split.root`; an image listed twice is held once.
    """
    if budget_mib == 0:
        return None
    paths = []
    for split, root in splits:
        paths += resolve_paths(list(split.db_paths) + list(split.query_paths),
                               split.root if root is None else root)
    paths = list(dict.fromkeys(paths))
    needed = cache_nbytes(len(paths), image_size)
    if needed <= budget_mib * 2**20:
        logger.info("Decoding the %d training and validation images into memory (%.0f MiB).",
                    len(paths), needed / 2**20)
        return DecodedImages.load(paths, None, image_size, batch_size, progress=progress)
    compact = cache_nbytes(len(paths), image_size, "uint8")
    if compact > budget_mib * 2**20:
        logger.info("Reading the training images from their files: decoded they need %.0f MiB (%.0f as "
                    "uint8), more than image_cache_mb=%d (--image-cache-mb).", needed / 2**20,
                    compact / 2**20, budget_mib)
        return None
    logger.info("Decoding the %d training and validation images into memory as uint8 (%.1f MiB; float32 "
                "would need %.1f MiB, more than image_cache_mb=%d): exact for files already at %dx%d.",
                len(paths), compact / 2**20, needed / 2**20, budget_mib, *image_size)
    try:
        return DecodedImages.load(paths, None, image_size, batch_size, progress=progress, dtype="uint8")
    except NotWholePixels as error:
        logger.info("Reading the training images from their files: %s Resize the files to %dx%d once "
                    "to hold them in memory as uint8, or raise --image-cache-mb to %.0f for float32.",
                    error, *image_size, np.ceil(needed / 2**20))
        return None


class DecodedImages:
    """Decoded, resized images of a list of files, addressed by path.

    Attributes:
        paths: the resolved paths, one per row (without duplicates).
        image_size: the fixed `(H, W)` every image was resized to.
        pixels: `tf.Variable` `(n, H, W, 3)`, 0..255, float32 (or uint8, exact, for files already
            at `image_size`); rows of failed images are zeros. Read them with `gather`.
        ok: bool NumPy `(n,)`, False where the file could not be read or decoded.

    Example:
    >>> images = DecodedImages.load(split.db_paths + split.query_paths, root, (96, 128))
    >>> for indices, batch in images.batches(split.db_paths, root): ...   # float32 0..255
    """

    def __init__(self, paths, pixels, ok):
        """`pixels`: the `tf.Variable` `load` fills (one row per path)."""
        self.paths = list(paths)
        self.ok = np.asarray(ok, bool)
        self.pixels = pixels
        self.image_size = tuple(int(v) for v in self.pixels.shape[1:3])
        self._row = {path: i for i, path in enumerate(self.paths)}

    @classmethod
    def load(cls, paths, root=None, image_size=None, batch_size=EXTRACT_BATCH_SIZE, progress=False,
             dtype="float32"):
        """Decodes every (distinct) file of `paths` at the fixed `image_size` `(H, W)`.

        `dtype` "uint8" holds them in a quarter of the memory; it is exact only for files already at
        `image_size`, and raises `NotWholePixels` naming the first file that is not.
        """
        size = check_image_size(image_size)
        if not isinstance(size, tuple):
            raise ValueError(f"Decoded images need a fixed image size (H, W). Received: {image_size!r}")
        if dtype not in ("float32", "uint8"):
            raise ValueError(f"Decoded images are float32 or uint8. Received: dtype={dtype!r}")
        unique = list(dict.fromkeys(resolve_paths(paths, root)))
        with tf.init_scope():  # filled batch by batch: no second copy of the whole array
            pixels = tf.Variable(tf.zeros((len(unique),) + size + (3,), dtype), trainable=False,
                                 name="decoded_images")
        ok = np.zeros(len(unique), bool)
        from tqdm.auto import tqdm

        batches = ImageBatches(unique, None, size, batch_size, on_error="skip")  # logs failed files
        with tqdm(total=len(unique), desc="decoding images", unit="img", disable=not progress,
                  dynamic_ncols=True) as bar:
            for indices, images in batches:
                if dtype == "uint8":
                    images = _whole_pixels(images, indices, unique, size)
                pixels.scatter_nd_update(indices[:, None], images)
                ok[indices] = True
                bar.update(len(indices))
        return cls(unique, pixels, ok)

    def __len__(self):
        return len(self.paths)

    @property
    def nbytes(self):
        return cache_nbytes(len(self), self.image_size, self.pixels.dtype.name)

    def gather(self, rows):
        """float32 images `(len(rows), H, W, 3)`, 0..255, of int `rows` (a tensor; usable in graphs)."""
        return tf.cast(tf.gather(self.pixels, rows), tf.float32)

    def rows(self, paths, root=None):
        """int64 rows of `paths` (resolved against `root`); `ValueError` naming a path not held."""
        rows = np.empty(len(paths), np.int64)
        for i, path in enumerate(resolve_paths(paths, root)):
            if path not in self._row:
                raise ValueError(f"'{path}' is not among the {len(self)} decoded images.")
            rows[i] = self._row[path]
        return rows

    def batches(self, paths, root=None, batch_size=EXTRACT_BATCH_SIZE, on_error="raise"):
        """`(indices, float32 images)` batches of `paths` in order, like `pipelines.ImageBatches`."""
        return _MemoryBatches(self, paths, root, batch_size, on_error)


def _whole_pixels(images, indices, paths, size):
    """`images` (float32, 0..255) as uint8, or `NotWholePixels` naming the first that is resized."""
    fractional = np.any(images != np.round(images), axis=(1, 2, 3))
    if fractional.any():
        path = paths[int(indices[np.argmax(fractional)])]
        raise NotWholePixels(f"'{path}' is not {size[0]}x{size[1]} (its resized pixels are not whole "
                             "numbers).")
    return images.astype(np.uint8)


class _MemoryBatches:
    """`ImageBatches`' interface over `DecodedImages`: `len`, iteration, `skipped`, `paths`."""

    def __init__(self, images, paths, root, batch_size, on_error):
        check_on_error(on_error)
        check_batch_size(batch_size)
        self.images = images
        self.paths = resolve_paths(paths, root)
        self.rows = images.rows(self.paths)
        self.batch_size = int(batch_size)
        self.on_error = on_error
        self.skipped = []

    def __len__(self):
        return len(self.paths)

    def __iter__(self):
        failed = np.flatnonzero(~self.images.ok[self.rows])
        if len(failed) and self.on_error == "raise":  # before any batch, as missing files are
            index = int(failed[0])
            path = self.paths[index]
            reason = diagnose_image(path) or "failed to load in the input pipeline"
            raise ImageReadError(f"Could not load image file '{path}' (index {index}): {reason}. "
                                 "Fix or remove the file, or use on_error='skip'.", path=path, index=index)
        self.skipped = [int(i) for i in failed]
        for index in self.skipped:
            logger.warning("Skipping image '%s' (index %d): it could not be loaded.", self.paths[index], index)
        good = np.flatnonzero(self.images.ok[self.rows])
        for start in range(0, len(good), self.batch_size):
            indices = good[start : start + self.batch_size]
            rows = tf.constant(self.rows[indices])
            yield indices.astype(np.int64), self.images.gather(rows).numpy()
