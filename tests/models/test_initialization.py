"""k-means initialisation through the real image pipeline: α rule and assignment ratio ≈ 100."""

import numpy as np
import pytest
from PIL import Image

from tf_netvlad.models.initialization import initialize_netvlad
from tf_netvlad.models.model import build_model


@pytest.fixture
def image_paths(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        pixels = (rng.random((48, 64, 3)) * 255).astype("uint8")
        name = f"img{i:02d}.png"
        Image.fromarray(pixels).save(tmp_path / name)
        paths.append(name)
    return tmp_path, paths


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_init_sets_centroids_and_ratio_100(image_paths, variant):
    root, paths = image_paths
    model = build_model("tiny", num_clusters=8, variant=variant)
    stats = initialize_netvlad(model, paths, root=root, num_images=10, per_image=20, niter=20,
                               seed=1, progress=False)
    assert stats["num_descriptors"] == 10 * 20
    assert stats["assignment_ratio"] == pytest.approx(100.0, rel=1e-3)
    layer = model.netvlad
    centroids = layer.centroids.numpy()
    kernel = layer.assignment_kernel.numpy()
    if variant == "v1":  # w_k = alpha * c_hat_k
        unit = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        np.testing.assert_allclose(kernel, stats["alpha"] * unit.T, rtol=1e-5)
    else:  # w_k = 2 alpha c_k, b_k = -alpha |c_k|^2
        np.testing.assert_allclose(kernel, 2 * stats["alpha"] * centroids.T, rtol=1e-5)
        np.testing.assert_allclose(layer.assignment_bias.numpy(),
                                   -stats["alpha"] * (centroids**2).sum(1), rtol=1e-4)
    # centroids of preL2 descriptors live near the unit sphere's inside
    assert np.all(np.linalg.norm(centroids, axis=1) <= 1.0 + 1e-5)


def test_deterministic_for_a_seed(image_paths):
    root, paths = image_paths
    runs = [build_model("tiny", num_clusters=4) for _ in range(2)]
    runs[1].backbone.set_weights(runs[0].backbone.get_weights())
    stats = [initialize_netvlad(m, paths, root=root, num_images=6, per_image=10, niter=10, seed=3,
                                progress=False) for m in runs]
    assert stats[0]["alpha"] == stats[1]["alpha"]
    np.testing.assert_array_equal(runs[0].netvlad.centroids.numpy(), runs[1].netvlad.centroids.numpy())


def test_fewer_descriptors_than_clusters_is_a_clear_error(image_paths):
    root, paths = image_paths
    model = build_model("tiny", num_clusters=64)
    with pytest.raises(ValueError, match="at least num_clusters=64"):
        initialize_netvlad(model, paths[:2], root=root, num_images=2, per_image=10, progress=False)
