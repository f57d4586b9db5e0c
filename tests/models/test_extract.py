"""Tests for tf_netvlad.models.extract: ordered float32 descriptors, memmap output, skip mode, sampling."""

import keras
import numpy as np
import pytest
from PIL import Image

from tests.helpers import mean_colour_reference as _reference
from tf_netvlad.data import pipelines
from tf_netvlad.models import extract


def _write_random(tmp_path, rng, sizes, fmt="png"):
    paths, pixels = [], []
    for i, size in enumerate(sizes):
        array = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        path = tmp_path / f"img{i:02d}.{fmt}"
        Image.fromarray(array).save(path)
        paths.append(str(path))
        pixels.append(array)
    return paths, pixels


def test_descriptors_match_reference_in_input_order(tmp_path, rng, mean_colour_model):
    model = mean_colour_model
    sizes = [(9, 11), (9, 11), (7, 5), (9, 11), (12, 8)]
    paths, pixels = _write_random(tmp_path, rng, sizes)
    out = extract.extract_descriptors(model, paths, batch_size=2, progress=False)
    assert out.dtype == np.float32 and out.shape == (5, 3)
    np.testing.assert_allclose(out, np.stack([_reference(p) for p in pixels]), atol=1e-6)


def test_batch_size_and_relative_paths_do_not_change_results(tmp_path, rng, mean_colour_model):
    model = mean_colour_model
    paths, _ = _write_random(tmp_path, rng, [(16, 20)] * 7)
    names = [p.split("/")[-1] for p in paths]
    one = extract.extract_descriptors(model, paths, image_size=(8, 10), batch_size=1, progress=False)
    three = extract.extract_descriptors(model, names, root=tmp_path, image_size=(8, 10), batch_size=3,
                                        progress=False)
    np.testing.assert_allclose(one, three, atol=1e-6)
    # The resize policy is applied: compare against the model on resized pixels.
    resized = np.stack([pipelines.load_image(p, (8, 10)).numpy() for p in paths])
    np.testing.assert_allclose(one, model.predict_on_batch(resized), atol=1e-6)


def test_recipe_descriptors_do_not_depend_on_the_cache_batch_size(tmp_path, rng):
    """The CPU recipe extracts its refreshes and validation `cache_batch_size` images at a time
    (64, for speed): its `tiny_s2` model normalises each image on its own at inference (GroupNorm,
    no batch statistics), so every image gets the descriptor it gets alone and mining does not
    change with the batch size."""
    import tf_netvlad

    keras.utils.set_random_seed(3)
    model = tf_netvlad.build_model("tiny_s2", weights=None, num_clusters=16)
    paths, _ = _write_random(tmp_path, rng, [(24, 32)] * 9)
    alone = extract.extract_descriptors(model, paths, image_size=(24, 32), batch_size=1, progress=False)
    batched = extract.extract_descriptors(model, paths, image_size=(24, 32), progress=False,
                                          batch_size=tf_netvlad.CPU_RECIPE["cache_batch_size"])
    assert tf_netvlad.CPU_RECIPE["cache_batch_size"] >= len(paths)  # one call holds all nine
    assert np.abs(alone).max() > 0.05  # L2-normalised 1,024-D rows, not all zeros
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_out_memmap_is_filled(tmp_path, rng, mean_colour_model):
    model = mean_colour_model
    paths, pixels = _write_random(tmp_path, rng, [(6, 6)] * 4)
    out = np.memmap(tmp_path / "desc.f32", dtype=np.float32, mode="w+", shape=(4, 3))
    result = extract.extract_descriptors(model, paths, batch_size=3, progress=False, out=out)
    assert result is out
    reread = np.memmap(tmp_path / "desc.f32", dtype=np.float32, mode="r", shape=(4, 3))
    np.testing.assert_allclose(reread, np.stack([_reference(p) for p in pixels]), atol=1e-6)


def test_out_with_wrong_shape_or_dtype_is_rejected(tmp_path, rng, mean_colour_model):
    model = mean_colour_model
    paths, _ = _write_random(tmp_path, rng, [(6, 6)] * 2)
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*out.shape=\(3, 3\)"):
        extract.extract_descriptors(model, paths, progress=False, out=np.zeros((3, 3), np.float32))
    with pytest.raises(TypeError, match="float64"):
        extract.extract_descriptors(model, paths, progress=False, out=np.zeros((2, 3)))


def test_skip_mode_marks_rows_nan_and_returns_indices(tmp_path, rng, mean_colour_model):
    model = mean_colour_model
    paths, pixels = _write_random(tmp_path, rng, [(6, 6)] * 3)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    paths = [paths[0], str(broken), paths[1], str(tmp_path / "gone.jpg"), paths[2]]
    desc, skipped = extract.extract_descriptors(model, paths, batch_size=2, progress=False, on_error="skip")
    np.testing.assert_array_equal(skipped, [1, 3])
    assert np.isnan(desc[[1, 3]]).all()
    np.testing.assert_allclose(desc[[0, 2, 4]], np.stack([_reference(p) for p in pixels]), atol=1e-6)
    with pytest.raises(pipelines.ImageReadError, match="broken.png"):
        extract.extract_descriptors(model, [paths[0], str(broken)], progress=False)


def _position_model(pool):
    """Local features = pool x pool average of the image: [B, H/pool, W/pool, 3]."""
    images = keras.Input(shape=(None, None, 3))
    return keras.Model(images, keras.layers.AveragePooling2D(pool)(images))


def _write_coded(tmp_path, count, size):
    """Image i has R = i and (G, B) = pixel position, so every feature row is identifiable."""
    paths = []
    for i in range(count):
        rows, cols = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
        array = np.stack([np.full(size, i), rows, cols], axis=-1).astype(np.uint8)
        path = tmp_path / f"c{i:02d}.png"
        Image.fromarray(array).save(path)
        paths.append(str(path))
    return paths


def test_sample_local_features_shapes_values_and_determinism(tmp_path):
    paths = _write_coded(tmp_path, 10, (8, 12))
    feature_model = _position_model(2)  # 4 x 6 = 24 locations per image
    kwargs = dict(num_images=4, per_image=5, seed=7, progress=False)
    a = extract.sample_local_features(feature_model, paths, batch_size=3, **kwargs)
    b = extract.sample_local_features(feature_model, paths, batch_size=1, **kwargs)
    assert a.dtype == np.float32 and a.shape == (20, 3)
    np.testing.assert_array_equal(a, b)  # independent of batch size
    image_ids = a[:, 0].reshape(4, 5)
    assert len(np.unique(image_ids[:, 0])) == 4 and (image_ids == image_ids[:, :1]).all()
    assert np.all(np.diff(image_ids[:, 0]) > 0)  # images visited in path order
    # Each row is a genuine pooled location: (G, B) = (2r + 0.5, 2c + 0.5), no location repeated.
    for rows in a.reshape(4, 5, 3):
        assert len({tuple(r) for r in rows}) == 5
        np.testing.assert_array_equal((rows[:, 1:] - 0.5) % 2, 0)
    c = extract.sample_local_features(feature_model, paths, batch_size=3, **dict(kwargs, seed=8))
    assert not np.array_equal(a, c)


def test_sample_local_features_takes_everything_when_short(tmp_path):
    paths = _write_coded(tmp_path, 3, (4, 4))
    out = extract.sample_local_features(_position_model(2), paths, num_images=10, per_image=50,
                                        progress=False)
    # 3 images (fewer than 10) x all 2 x 2 = 4 locations (fewer than 50).
    assert out.shape == (12, 3)
    np.testing.assert_array_equal(np.sort(np.unique(out[:, 0])), [0, 1, 2])
    expected = {(r, c) for r in (0.5, 2.5) for c in (0.5, 2.5)}
    assert {tuple(x) for x in out[out[:, 0] == 1][:, 1:]} == expected


def test_sample_local_features_validates(tmp_path):
    with pytest.raises(ValueError, match="per_image=0"):
        extract.sample_local_features(_position_model(2), ["a.png"], per_image=0)
    with pytest.raises(ValueError, match="empty"):
        extract.sample_local_features(_position_model(2), [])


def test_predict_fn_is_traced_once_per_model_and_policy():
    import keras

    from tf_netvlad.models.extract import make_predict_fn

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    first = make_predict_fn(model, (8, 8))
    assert make_predict_fn(model, (8, 8)) is first
    assert make_predict_fn(model, None) is not first
    images = np.ones((2, 8, 8, 3), np.float32)
    first(images)
    first(images * 2)
    assert first.experimental_get_tracing_count() == 1


# --------------------------------------------------------------------------- images below the minimum size


def _bilinear(array, out_h, out_w):
    """NumPy reference of `tf.image.resize(..., "bilinear", antialias=False)` (half-pixel centres)
    on an `(h, w, c)` array: each output index i samples (i + 0.5) * in / out - 0.5, clamped."""
    def axis(values, out, along):
        size = values.shape[along]
        src = np.clip((np.arange(out) + 0.5) * size / out - 0.5, 0, size - 1)
        low = np.floor(src).astype(int)
        high = np.minimum(low + 1, size - 1)
        weight = (src - low).reshape([-1 if a == along else 1 for a in range(values.ndim)])
        return np.take(values, low, along) * (1 - weight) + np.take(values, high, along) * weight

    return axis(axis(np.asarray(array, np.float64), out_h, 0), out_w, 1)


def _conv_pool_model():
    """Conv 5x3 'valid' then 2x2 max-pool: needs h - 4 >= 2 and w - 2 >= 2, i.e. at least 6 x 4."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(2, (5, 3), padding="valid")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def test_minimum_input_size_is_the_smallest_image_with_a_1x1_feature_map(tiny_model, mean_colour_model):
    assert extract.minimum_input_size(tiny_model) == (8, 8)  # three 2x2 max-pools: 2**3
    assert extract.minimum_input_size(tiny_model.local_features_model()) == (8, 8)
    assert extract.minimum_input_size(_conv_pool_model()) == (6, 4)  # per axis, hand-computed
    assert extract.minimum_input_size(mean_colour_model) is None  # a 1x1 image is fine
    fixed = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(2, 3),
                              keras.layers.GlobalAveragePooling2D()])
    assert extract.minimum_input_size(fixed) is None  # fixed input: nothing to adapt


def test_tiny_images_are_stretched_to_the_minimum_and_get_descriptors(tmp_path, tiny_model):
    """A 1x1, a 4x4 and a 3x40 px PNG abort a plain forward pass (MaxPool of an empty map); here
    each is stretched to at least 8x8 and matches the model on a NumPy-stretched image."""
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 256, size + (3,), dtype=np.uint8) for size in [(1, 1), (4, 4), (3, 40)]]
    paths = []
    for i, array in enumerate(pixels):
        paths.append(str(tmp_path / f"tiny{i}.png"))
        Image.fromarray(array).save(paths[-1])
    out = extract.extract_descriptors(tiny_model, paths, progress=False)
    stretched = [np.full((8, 8, 3), pixels[0][0, 0], np.float64),  # a 1x1 image: one colour
                 _bilinear(pixels[1], 8, 8), _bilinear(pixels[2], 8, 40)]
    expected = np.concatenate([tiny_model.predict_on_batch(s[None].astype(np.float32)) for s in stretched])
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # a max side above the minimum never shrinks them further, so the same descriptors come out
    np.testing.assert_allclose(extract.extract_descriptors(tiny_model, paths, image_size=640, progress=False),
                               out, atol=1e-6)
    local = extract.sample_local_features(tiny_model.local_features_model(), paths, per_image=1,
                                          progress=False)
    assert local.shape == (3, 64) and np.isfinite(local).all()


def test_a_policy_below_the_minimum_is_refused_before_reading_images(tiny_model):
    for size, text in [((4, 4), "'4x4'"), ((8, 6), "'8x6'"), (6, "'6'")]:
        with pytest.raises(ValueError, match=rf"`image_size` {text} is smaller than the minimum input.*8x8"):
            extract.extract_descriptors(tiny_model, ["does-not-exist.png"], image_size=size, progress=False)
    with pytest.raises(ValueError, match="8x8 px"):
        extract.sample_local_features(tiny_model.local_features_model(), ["nope.png"], image_size=(4, 4))
