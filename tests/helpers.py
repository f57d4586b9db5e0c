"""Small builders the tests share: images written to disk, a toy descriptor model, a toy split, and the
import of an optional dependency that CI requires. Fixtures built on them live in `tests/conftest.py`."""

import importlib
import os

import numpy as np
import pytest
from PIL import Image


def write_solid_image(path, value, size=(10, 12), **save_kwargs):
    """Writes an image whose pixels all equal `value` (a grey level or an RGB triple), `size` = (h, w).

    A distinct value per file shows which file a pipeline read, in which order; PNG keeps it exact.
    Returns the path as a string.
    """
    pixels = np.broadcast_to(np.asarray(value, np.uint8), tuple(size) + (3,))
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, **save_kwargs)
    return str(path)


def write_block_images(folder, count, seed, name="img{:02d}.png", size=(32, 40), blocks=(4, 5)):
    """Blocky random colour patterns (one distinct place each): `blocks` random colours scaled up to
    `size` = (h, w) by nearest neighbour. Returns the file names (relative to `folder`)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    names = []
    for i in range(count):
        pattern = rng.integers(0, 256, tuple(blocks) + (3,), dtype=np.uint8)
        names.append(name.format(i))
        Image.fromarray(pattern).resize((size[1], size[0]), Image.NEAREST).save(os.path.join(folder, names[-1]))
    return names


def mean_values(images):
    """The mean pixel value of each image of a `(..., h, w, 3)` batch (reads back `write_solid_image`)."""
    images = np.asarray(images)
    return images.reshape(images.shape[:-3] + (-1,)).mean(axis=-1)


def mean_colour_model(name="meancolour"):
    """A weightless descriptor model for any image size: the L2-normalised mean RGB colour."""
    import keras

    images = keras.Input(shape=(None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(images)
    return keras.Model(images, keras.layers.UnitNormalization()(x), name=name)


def mean_colour_reference(pixels):
    """NumPy reference of `mean_colour_model` on one `(h, w, 3)` image."""
    mean = np.asarray(pixels, np.float64).mean(axis=(0, 1))
    return mean / np.linalg.norm(mean)


def import_optional(module, require_env):
    """Imports an optional dependency: skips the test without it, unless the environment variable
    `require_env` is "1" (CI sets it after installing the dependency), where a missing module fails
    the test instead of hiding it behind a skip."""
    if os.environ.get(require_env) == "1":
        try:
            return importlib.import_module(module)
        except ImportError as err:
            pytest.fail(f"{require_env}=1 but `import {module}` failed: {err}")
    return pytest.importorskip(module)


def toy_split(rng, n_db=200, n_q=50, extent=300.0, timestamps=False, **kw):
    """A `PlaceSplit` "toy_test": `n_db` database images and `n_q` queries at random positions in an
    `extent` m square near Pittsburgh (UTM), with random time stamps 0..3 when `timestamps`."""
    from tf_netvlad.data.places import PlaceSplit

    db = rng.uniform(0, extent, size=(n_db, 2)) + [580000.0, 4470000.0]
    q = rng.uniform(0, extent, size=(n_q, 2)) + [580000.0, 4470000.0]
    ts = {}
    if timestamps:
        ts = dict(db_timestamps=rng.integers(0, 4, n_db), query_timestamps=rng.integers(0, 4, n_q))
    return PlaceSplit("toy_test", [f"db/{i:04d}.jpg" for i in range(n_db)], db,
                      [f"q/{i:04d}.jpg" for i in range(n_q)], q, **ts, **kw)


def interrupt_extraction_at_chunk(monkeypatch, chunk):
    """Makes `models.extract.extract_descriptors` raise KeyboardInterrupt on its `chunk`-th call (a
    crash mid-build); returns the list of chunk sizes it was called with."""
    from tf_netvlad.models import extract

    real, calls = extract.extract_descriptors, []

    def interrupted(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == chunk:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(extract, "extract_descriptors", interrupted)
    return calls
