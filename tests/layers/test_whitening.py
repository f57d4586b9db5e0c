"""PCA-whitening fit against a direct NumPy eigen-decomposition, and the layer against NumPy."""

import json

import numpy as np
import pytest

from tests.layer_checks import check_keras_class
from tf_netvlad.layers.whitening import PCAWhitening, fit_pca_whitening


def _data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * np.linspace(3, 0.1, d)
    return (rng.normal(size=(n, d)) @ mix.T + rng.normal(size=d)).astype("float32")


@pytest.mark.parametrize("n, d", [(400, 20), (15, 40)])  # primal and dual (n < D) forms
def test_whitened_training_data_has_identity_covariance(n, d):
    x = _data(n, d)
    p = min(8, n - 2)
    kernel, bias = fit_pca_whitening(x, p)
    y = x.astype("float64") @ kernel + bias
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(p), atol=2e-3)


def test_matches_reference_formula():
    x = _data(60, 10, seed=1).astype("float64")
    mu = x.mean(0)
    cov = (x - mu).T @ (x - mu) / (len(x) - 1)
    lam, u = np.linalg.eigh(cov)
    lam, u = lam[::-1][:4], u[:, ::-1][:, :4]
    w = u / np.sqrt(lam + 1e-9)
    kernel, bias = fit_pca_whitening(x, 4)
    signs = np.sign((kernel * w).sum(0))  # eigenvectors are defined up to sign
    np.testing.assert_allclose(kernel, w * signs, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(bias, -(mu @ w) * signs, rtol=1e-3, atol=1e-4)


def test_dual_form_equals_primal_projection():
    x = _data(12, 30, seed=2)
    kernel_dual, bias_dual = fit_pca_whitening(x, 5)
    xd = x.astype("float64")
    mu = xd.mean(0)
    lam, u = np.linalg.eigh((xd - mu).T @ (xd - mu) / 11)
    w = u[:, ::-1][:, :5] / np.sqrt(lam[::-1][:5] + 1e-9)
    signs = np.sign((kernel_dual * w).sum(0))
    np.testing.assert_allclose(kernel_dual, w * signs, rtol=2e-3, atol=1e-4)


def test_layer_equals_numpy_and_crop_reduces_dimension():
    x = _data(100, 16)
    kernel, bias = fit_pca_whitening(x, 8)
    layer = PCAWhitening(8)
    layer.build((None, 16))
    layer.set_whitening(kernel, bias)
    y = x @ kernel + bias
    expected = y / (np.linalg.norm(y, axis=1, keepdims=True) + 1e-12)
    np.testing.assert_allclose(layer(x).numpy(), expected, atol=1e-5)
    cropped = PCAWhitening(3)
    cropped.build((None, 16))
    cropped.set_whitening(kernel, bias)
    y3 = y[:, :3]
    np.testing.assert_allclose(cropped(x).numpy(), y3 / np.linalg.norm(y3, axis=1, keepdims=True), atol=1e-5)
    assert json.loads(json.dumps(cropped.get_config()))["num_components"] == 3


def test_bad_inputs():
    x = _data(10, 6)
    with pytest.raises(ValueError, match="num_components"):
        fit_pca_whitening(x, 10)
    with pytest.raises(ValueError, match="2-D"):
        fit_pca_whitening(x[0], 2)
    with pytest.raises(ValueError, match="num_components"):
        PCAWhitening(0)


@pytest.mark.parametrize("num_components, epsilon", [(3, 1e-12), (8, 1e-6)])
def test_pca_whitening_passes_the_shared_keras_checks(tmp_path, num_components, epsilon):
    """Config/JSON, serialize/deserialize, .keras round trip and mixed_float16 (the layer follows the
    global policy on its own; `NetVLADModel` pins it to float32)."""
    out = check_keras_class(lambda: PCAWhitening(num_components, epsilon=epsilon, name="wpca"),
                            _data(4, 16), tmp_path)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
