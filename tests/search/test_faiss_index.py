"""Tests for tf_netvlad.search.faiss_index: faiss ids against a NumPy brute force, chunking, k-means."""

import subprocess
import sys

import numpy as np
import pytest

from tf_netvlad.search import faiss_index


def numpy_search(db, queries, k, metric="ip"):
    """Independent brute-force reference (float64): best-first scores and ids."""
    db = db.astype(np.float64)
    queries = queries.astype(np.float64)
    if metric == "ip":
        scores = queries @ db.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    else:
        scores = ((queries[:, None, :] - db[None, :, :]) ** 2).sum(-1)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_faiss_ids_match_numpy_brute_force(rng, metric):
    db, queries = _unit(rng, 300, 32), _unit(rng, 50, 32)
    scores, ids = faiss_index.search(db, queries, 10, metric=metric)
    ref_scores, ref_ids = numpy_search(db, queries, 10, metric)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert scores.shape == ids.shape == (50, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_chunking_gives_identical_results(rng):
    db, queries = _unit(rng, 200, 16), _unit(rng, 37, 16)
    built = faiss_index.build_index(db, chunk_size=7)
    assert built.ntotal == 200
    whole = faiss_index.search(built, queries, 5, chunk_size=1000)
    chunked = faiss_index.search(built, queries, 5, chunk_size=4)
    np.testing.assert_array_equal(whole[1], chunked[1])
    np.testing.assert_array_equal(whole[0], chunked[0])


def test_k_is_clipped_to_database_size(rng):
    db, queries = _unit(rng, 4, 8), _unit(rng, 3, 8)
    scores, ids = faiss_index.search(db, queries, 100)
    assert ids.shape == (3, 4)
    np.testing.assert_array_equal(np.sort(ids, axis=1), np.tile(np.arange(4), (3, 1)))
    np.testing.assert_array_equal(ids, numpy_search(db, queries, 4)[1])


def test_float16_and_memmap_inputs(rng, tmp_path):
    db16 = _unit(rng, 120, 24).astype(np.float16)
    queries = _unit(rng, 10, 24)
    stored = np.memmap(tmp_path / "db.f16", dtype=np.float16, mode="w+", shape=db16.shape)
    stored[:] = db16
    scores, ids = faiss_index.search(faiss_index.build_index(stored, chunk_size=16), queries.astype(np.float16), 6)
    ref_scores, ref_ids = numpy_search(db16.astype(np.float32), queries.astype(np.float16).astype(np.float32), 6)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_ivf_with_all_cells_probed_is_exact(rng):
    db, queries = _unit(rng, 400, 16), _unit(rng, 20, 16)
    ivf = faiss_index.build_index(db, kind="IVF4,Flat", nprobe=4)
    np.testing.assert_array_equal(faiss_index.search(ivf, queries, 5)[1], numpy_search(db, queries, 5)[1])


def test_set_nprobe_changes_the_cells_searched(rng):
    db, queries = _unit(rng, 400, 16), _unit(rng, 20, 16)
    ivf = faiss_index.build_index(db, kind="IVF4,Flat", nprobe=1)
    import faiss

    quantizer = faiss.extract_index_ivf(ivf).quantizer
    _, cell_of_db = quantizer.search(db, 1)
    _, cell_of_query = quantizer.search(queries, 1)
    ids = faiss_index.search(ivf, queries, 5)[1]
    # nprobe=1: every hit lies in the query's own (nearest-centroid) cell.
    np.testing.assert_array_equal(cell_of_db[ids, 0], np.repeat(cell_of_query, 5, axis=1))
    assert faiss_index.set_nprobe(ivf, 4) is ivf
    assert faiss.extract_index_ivf(ivf).nprobe == 4
    np.testing.assert_array_equal(faiss_index.search(ivf, queries, 5)[1], numpy_search(db, queries, 5)[1])


def test_set_nprobe_errors(rng):
    flat = faiss_index.build_index(_unit(rng, 10, 8))
    with pytest.raises(ValueError, match="IVF indexes only; this index is a IndexFlatIP"):
        faiss_index.set_nprobe(flat, 4)
    ivf = faiss_index.build_index(_unit(rng, 100, 8), kind="IVF2,Flat")
    with pytest.raises(ValueError, match="nprobe"):
        faiss_index.set_nprobe(ivf, 0)


def test_search_errors_are_actionable(rng):
    db = _unit(rng, 10, 8)
    with pytest.raises(ValueError, match="dim 4 but the index holds dim 8"):
        faiss_index.search(db, _unit(rng, 2, 4), 3)
    bad = db.copy()
    bad[6, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf.*row 6"):
        faiss_index.build_index(bad)
    with pytest.raises(ValueError, match="k=0"):
        faiss_index.search(db, db, 0)
    with pytest.raises(ValueError, match="metric='cos'"):
        faiss_index.build_index(db, metric="cos")
    with pytest.raises(ValueError, match="kind='NoSuchIndex'"):
        faiss_index.build_index(db, kind="NoSuchIndex")
    with pytest.raises(TypeError, match="int64"):
        faiss_index.build_index(np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match=r"2-D array.*\(5,\)"):
        faiss_index.search(db, np.zeros(5, np.float32), 1)


def test_empty_query_set(rng):
    scores, ids = faiss_index.search(_unit(rng, 5, 4), np.zeros((0, 4), np.float32), 3)
    assert scores.shape == ids.shape == (0, 3)


def test_kmeans_returns_a_lloyd_fixed_point(rng):
    # faiss seeds with random points, so two seeds may share a blob; whatever the init, converged
    # k-means centroids are the means of the points assigned to them (checked in NumPy).
    centres = np.eye(6, 16, dtype=np.float32) * 10.0
    x = centres[np.repeat(np.arange(6), 50)] + 0.1 * rng.standard_normal((300, 16)).astype(np.float32)
    found = faiss_index.kmeans(x, 6, niter=50, seed=1)
    assert found.shape == (6, 16) and found.dtype == np.float32
    assign = ((x[:, None] - found[None]) ** 2).sum(-1).argmin(axis=1)
    for c in np.unique(assign):
        np.testing.assert_allclose(found[c], x[assign == c].mean(0), atol=1e-4)


def test_kmeans_uses_all_points_by_default(rng):
    # 2 clusters of 1000 points: faiss' default (256 points per centroid) would subsample to 512.
    x = np.concatenate([np.zeros((1000, 4)), np.ones((1000, 4))]).astype(np.float32)
    x += 0.01 * rng.standard_normal(x.shape).astype(np.float32)
    found = faiss_index.kmeans(x, 2, niter=20, seed=0)
    expected = np.stack([x[:1000].mean(0), x[1000:].mean(0)])
    order = np.argsort(found[:, 0])
    np.testing.assert_allclose(found[order], expected, atol=1e-5)


def test_kmeans_is_seeded_and_uses_float16(rng):
    x = rng.standard_normal((500, 8)).astype(np.float32)
    a = faiss_index.kmeans(x, 5, niter=10, seed=3)
    b = faiss_index.kmeans(x, 5, niter=10, seed=3)
    np.testing.assert_array_equal(a, b)
    c = faiss_index.kmeans(x.astype(np.float16), 5, niter=10, seed=3)
    assert c.dtype == np.float32 and c.shape == (5, 8)


def test_kmeans_errors():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="at least k=5 descriptors, got n=3"):
        faiss_index.kmeans(x, 5)
    with pytest.raises(ValueError, match="k=0"):
        faiss_index.kmeans(x, 0)
    with pytest.raises(ValueError, match=r"2-D array"):
        faiss_index.kmeans(np.zeros(4, np.float32), 1)


def test_pure_numpy_modules_do_not_import_tensorflow():
    code = (
        "import sys, numpy as np\n"
        "import tf_netvlad.search.faiss_index as i, tf_netvlad.evaluation.recall, tf_netvlad.evaluation.plots\n"
        "i.search(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), 1)\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
        "assert 'faiss' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
