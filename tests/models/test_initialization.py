"""k-means initialisation through the real image pipeline: α rule and assignment ratio ≈ 100
(checked with an independent NumPy soft-assignment on the descriptors k-means clustered)."""

import numpy as np
import pytest
from PIL import Image

from tf_netvlad.data import pipelines
from tf_netvlad.models.initialization import initialize_netvlad
from tf_netvlad.models.model import build_model
from tf_netvlad.search import faiss_index


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


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _top2_ratio(assignments):
    """Geometric mean over descriptors of the largest soft-assignment / the second largest."""
    top = np.sort(assignments, axis=1)
    return float(np.exp(np.mean(np.log(top[:, -1] / top[:, -2]))))


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_init_sets_centroids_and_ratio_100(image_paths, variant, monkeypatch):
    root, paths = image_paths
    model = build_model("tiny", num_clusters=8, variant=variant)
    clustered = []  # the descriptors k-means saw: the sample the ratio is defined on
    kmeans = faiss_index.kmeans

    def spy(x, *args, **kwargs):
        clustered.append(np.array(x))
        return kmeans(x, *args, **kwargs)

    monkeypatch.setattr(faiss_index, "kmeans", spy)
    stats = initialize_netvlad(model, paths, root=root, num_images=10, per_image=20, niter=20,
                               seed=1, progress=False)
    assert stats["num_descriptors"] == 10 * 20
    (x,) = clustered
    x = x.astype("float64")
    assert x.shape == (200, 64)
    # They are genuine preL2 local features of the images: unit rows, each one of the 6 x 8 = 48
    # locations of the tiny backbone's feature map of one of the images.
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    images = np.stack([pipelines.load_image(str(root / name)).numpy() for name in paths])
    local = model.local_features_model().predict(images, verbose=0).reshape(-1, 64).astype("float64")
    local /= np.linalg.norm(local, axis=1, keepdims=True)
    assert np.all((x @ local.T).max(axis=1) > 1 - 1e-5)
    # Independent soft-assignment of the initialised layer on that sample, in NumPy: the conv form
    # with the layer's own weights (v1: no bias), and for v2 also softmax(-alpha |x - c_k|^2).
    layer = model.netvlad
    logits = x @ layer.assignment_kernel.numpy().astype("float64")
    if variant == "v2":
        logits += layer.assignment_bias.numpy()
        d2 = ((x[:, None, :] - layer.centroids.numpy()[None].astype("float64")) ** 2).sum(-1)
        np.testing.assert_allclose(_softmax(logits), _softmax(-stats["alpha"] * d2), atol=1e-4)
    ratio = _top2_ratio(_softmax(logits))
    assert ratio == pytest.approx(100.0, rel=2e-3)  # the reference's rule: a1 / a2 = 100 on average
    assert stats["assignment_ratio"] == pytest.approx(ratio, rel=2e-3)
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
