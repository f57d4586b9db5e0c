"""ImagePreprocessing through the shared Keras checks (its presets are compared with
keras.applications in tests/models/test_model.py)."""

import numpy as np
import pytest

from tests.layer_checks import check_keras_class
from tf_netvlad.layers.preprocessing import ImagePreprocessing


@pytest.mark.parametrize("make", [
    lambda: ImagePreprocessing.from_preset("caffe", name="pre"),  # BGR flip
    lambda: ImagePreprocessing.from_preset("torch", name="pre"),  # scale, mean and std
    lambda: ImagePreprocessing(mode="matconvnet", mean=(122.6, 116.6, 104.0), name="pre"),
], ids=["caffe", "torch", "matconvnet"])
def test_image_preprocessing_passes_the_shared_keras_checks(tmp_path, make):
    """Config/JSON, serialize/deserialize, .keras round trip and mixed_float16 (float16 output, as
    the backbone after it computes in float16)."""
    images = (np.random.default_rng(0).random((2, 6, 7, 3)) * 255).astype("float32")
    layer = make()
    # float16 rounds the 0..255 input (spacing 0.125 above 128) before the mean is subtracted
    out = check_keras_class(make, images, tmp_path, mixed_atol=0.15)
    order = [2, 1, 0] if layer.channel_order == "bgr" else [0, 1, 2]
    want = (images * layer.scale)[..., order] - np.array(layer.mean)
    np.testing.assert_allclose(out, want / np.array(layer.std), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("preset", ["tf", "raw", "torch", "caffe"])
def test_presets_compute_exactly_the_float32_arithmetic_of_their_definition(preset):
    """((x * scale)[order] - mean) / std in float32, element for element: equal means and stds are
    applied as scalars ("tf", "raw"), which must not change a single bit."""
    images = (np.random.default_rng(1).random((2, 5, 4, 3)) * 255).astype("float32")
    layer = ImagePreprocessing.from_preset(preset)
    order = [2, 1, 0] if layer.channel_order == "bgr" else [0, 1, 2]
    want = (images * np.float32(layer.scale))[..., order] - np.array(layer.mean, "float32")
    if layer.std != (1.0, 1.0, 1.0):
        want = want / np.array(layer.std, "float32")
    np.testing.assert_array_equal(np.asarray(layer(images)), want)
