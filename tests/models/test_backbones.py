"""Backbone registry and the MatConvNetLRN layer (the backbones' structure and weights are tested in
tests/models/test_model.py)."""

import numpy as np
import pytest

from tests.layer_checks import check_keras_class
from tf_netvlad import defaults
from tf_netvlad.models import backbones
from tf_netvlad.models.backbones import MatConvNetLRN


def test_backbone_names_default_lists_exactly_the_registered_builders():
    # defaults.py may not import TensorFlow, so it repeats the names; they must not drift apart.
    assert sorted(defaults.BACKBONE_NAMES) == sorted(backbones.BACKBONES)
    assert len(set(defaults.BACKBONE_NAMES)) == len(defaults.BACKBONE_NAMES)


def _numpy_lrn(x, depth, kappa, alpha, beta):
    """Channel loop of the MatConvNet formula: window [k - floor((N-1)/2), k + ceil((N-1)/2)]."""
    out = np.empty_like(x, dtype="float64")
    channels = x.shape[-1]
    for k in range(channels):
        lo, hi = max(0, k - (depth - 1) // 2), min(channels - 1, k + depth // 2)
        out[..., k] = x[..., k] * (kappa + alpha * (x[..., lo:hi + 1].astype("float64") ** 2).sum(-1)) ** -beta
    return out


@pytest.mark.parametrize("depth, kappa, alpha, beta", [(5, 1.0, 0.05, 0.75), (4, 2.0, 1e-2, 0.5)])
def test_matconvnet_lrn_passes_the_shared_keras_checks(tmp_path, depth, kappa, alpha, beta):
    """Config/JSON, serialize/deserialize, .keras round trip and mixed_float16 (float16 compute, as
    the conv layers around it in an AlexNet backbone)."""
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 7)).astype("float32") * 3
    out = check_keras_class(lambda: MatConvNetLRN(depth, kappa, alpha, beta, name="norm1"), x, tmp_path)
    np.testing.assert_allclose(out, _numpy_lrn(x, depth, kappa, alpha, beta), rtol=1e-5, atol=1e-6)
