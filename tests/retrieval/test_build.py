"""Tests for tf_netvlad.retrieval.build: streaming build, resume, float16, overwrite, skipped and bad
input, kinds."""

import json
import os

import numpy as np
import pytest

from tests.helpers import interrupt_extraction_at_chunk, write_block_images
from tf_netvlad.data import pipelines
from tf_netvlad.models import extract
from tf_netvlad.models.identity import model_fingerprint
from tf_netvlad.retrieval import build as rb
from tf_netvlad.retrieval import index as ri
from tf_netvlad.retrieval.storage import METADATA_FILE, PROGRESS_FILE
from tf_netvlad.search import faiss_index as faiss_lib
from tf_netvlad.search.index_kinds import apply_search_params, resolve_kind

SIZE = (32, 40)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("db")
    names = write_block_images(folder, 12, seed=0, size=SIZE)
    positions = np.stack([np.arange(12) * 100.0, np.full(12, 5000.0)], axis=1)
    return folder, names, positions


@pytest.fixture(scope="module")
def reference(tiny_model, images):
    """Descriptors computed independently: the model on the decoded images, one call."""
    folder, names, _ = images
    pixels = np.stack([pipelines.load_image(str(folder / n)).numpy() for n in names])
    return np.asarray(tiny_model.predict_on_batch(pixels), np.float32)


def _build(tiny_model, out, images, **kwargs):
    folder, names, positions = images
    kwargs.setdefault("chunk_size", 5)
    kwargs.setdefault("batch_size", 4)
    return rb.build_retrieval_index(tiny_model, out, names, positions=positions, root=folder,
                                    progress=False, **kwargs)


def test_round_trip_search_equals_brute_force_on_stored_memmap(tmp_path, tiny_model, images, reference):
    built = _build(tiny_model, tmp_path / "idx", images)
    index = ri.RetrievalIndex.load(tmp_path / "idx")
    assert index.count == 12 and index.dim == 256 == tiny_model.descriptor_dim
    assert isinstance(index.descriptors, np.memmap) and index.descriptors.dtype == np.float32
    assert os.path.getsize(tmp_path / "idx" / "descriptors.f32") == 12 * 256 * 4
    np.testing.assert_allclose(index.descriptors, reference, atol=1e-5)
    np.testing.assert_allclose(index.positions, images[2])
    assert index.paths == images[1] and index.full_path(3) == str(images[0] / "img03.png")
    assert not (tmp_path / "idx" / PROGRESS_FILE).exists()
    # Brute force on the stored memmap in NumPy (float64) vs the loaded faiss index.
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((4, 256)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores, ids = index.search(queries, k=5)
    brute = queries.astype(np.float64) @ np.asarray(index.descriptors, np.float64).T
    np.testing.assert_array_equal(ids, np.argsort(-brute, axis=1)[:, :5])
    np.testing.assert_allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :5], atol=1e-5)
    assert built.metadata == index.metadata
    meta = json.loads((tmp_path / "idx" / "metadata.json").read_text())
    assert meta["model"]["fingerprint"] == model_fingerprint(tiny_model)["fingerprint"]
    assert meta["image_size"] == "keep" and meta["kind"] == "flat" and meta["count"] == 12
    assert meta["index_file"] is None and meta["format_version"] == 3
    assert sorted(os.listdir(tmp_path / "idx")) == ["descriptors.f32", "metadata.json"]


def test_log_records_keep_the_name_of_the_index_module(tmp_path, tiny_model, images, caplog):
    """The CLI prints `%(name)s`: the build's records still come from `tf_netvlad.retrieval.index`."""
    with caplog.at_level("INFO", logger="tf_netvlad.retrieval.index"):
        _build(tiny_model, tmp_path / "idx", images)
    records = [r for r in caplog.records if r.name.startswith("tf_netvlad.retrieval")]
    assert [r.name for r in records] == ["tf_netvlad.retrieval.index"]
    assert records[0].getMessage().startswith("Indexed 12 of 12 images in ")


def test_float16_storage(tmp_path, tiny_model, images, reference):
    index = _build(tiny_model, tmp_path / "idx16", images, float16=True)
    assert index.descriptors.dtype == np.float16 and index.metadata["dtype"] == "float16"
    assert index.metadata["factory"] == "SQfp16"  # the faiss index stores float16 too
    assert os.path.getsize(tmp_path / "idx16" / "descriptors.f16") == 12 * 256 * 2
    np.testing.assert_allclose(index.descriptors.astype(np.float32), reference, atol=2e-3)
    scores, ids = index.search(reference, k=1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(12))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=3e-3)
    # Exact search over the stored float16 values.
    stored = np.asarray(index.descriptors, np.float64)
    scores, ids = index.search(reference[:3], k=4)
    brute = reference[:3].astype(np.float64) @ stored.T
    np.testing.assert_array_equal(ids, np.argsort(-brute, axis=1)[:, :4])
    np.testing.assert_allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :4], atol=1e-5)


def test_resume_after_interruption_matches_uninterrupted_build(tmp_path, tiny_model, images,
                                                               monkeypatch):
    full = _build(tiny_model, tmp_path / "full", images, chunk_size=3)
    calls = interrupt_extraction_at_chunk(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        _build(tiny_model, tmp_path / "part", images, chunk_size=3)
    state = json.loads((tmp_path / "part" / PROGRESS_FILE).read_text())
    assert state["images_done"] == 6 and state["rows_done"] == 6
    assert not (tmp_path / "part" / METADATA_FILE).exists()
    with pytest.raises(ValueError, match="unfinished index build.*6 of 12"):
        ri.RetrievalIndex.load(tmp_path / "part")
    # A torn write after the last marker: these bytes must be dropped on resume.
    with open(tmp_path / "part" / "descriptors.f32", "ab") as handle:
        handle.write(b"\x7f" * 1000)
    calls.clear()
    resumed = _build(tiny_model, tmp_path / "part", images, chunk_size=3)
    assert calls == [3, 3]  # only the two missing chunks were extracted
    assert (tmp_path / "part" / "descriptors.f32").read_bytes() == \
        (tmp_path / "full" / "descriptors.f32").read_bytes()
    assert resumed.paths == full.paths and resumed.count == 12
    np.testing.assert_array_equal(resumed.search(full.descriptors[:4], 3)[1],
                                  full.search(full.descriptors[:4], 3)[1])


def test_resume_refuses_other_inputs_and_resume_false_starts_over(tmp_path, tiny_model, images,
                                                                  monkeypatch):
    real = extract.extract_descriptors

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(extract, "extract_descriptors", crash)
    with pytest.raises(KeyboardInterrupt):
        _build(tiny_model, tmp_path / "idx", images)
    monkeypatch.setattr(extract, "extract_descriptors", real)
    folder, names, positions = images
    with pytest.raises(ValueError, match="interrupted build.*different `inputs_sha256`"):
        rb.build_retrieval_index(tiny_model, tmp_path / "idx", names[:5], positions=positions[:5],
                                 root=folder, progress=False)
    index = rb.build_retrieval_index(tiny_model, tmp_path / "idx", names[:5], positions=positions[:5],
                                     root=folder, progress=False, resume=False)
    assert index.count == 5 and index.paths == names[:5]


def test_existing_complete_index_is_not_overwritten_by_default(tmp_path, tiny_model, images):
    folder, names, positions = images
    rb.build_retrieval_index(tiny_model, tmp_path / "idx", names[:3], root=folder, progress=False)
    with pytest.raises(FileExistsError, match="already holds a complete retrieval index"):
        rb.build_retrieval_index(tiny_model, tmp_path / "idx", names[:4], root=folder, progress=False)
    index = rb.build_retrieval_index(tiny_model, tmp_path / "idx", names[:4], root=folder,
                                     progress=False, overwrite=True)
    assert index.count == 4 and np.isnan(index.positions).all()
    assert index.metadata["positions"] == [None] * 4


def test_corrupt_and_missing_images_are_skipped_and_reported(tmp_path, tiny_model, images, reference):
    folder, names, positions = images
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (bad / "empty.jpg").write_bytes(b"")
    paths = [str(folder / n) for n in names[:4]]
    paths = paths[:1] + [str(bad / "broken.png")] + paths[1:3] + [str(bad / "empty.jpg"),
                                                                  str(bad / "gone.png")] + paths[3:]
    pos = np.arange(len(paths) * 2, dtype=float).reshape(-1, 2)
    index = rb.build_retrieval_index(tiny_model, tmp_path / "idx", paths, positions=pos,
                                     progress=False, chunk_size=3)
    assert index.count == 4 and index.paths == [str(folder / n) for n in names[:4]]
    np.testing.assert_allclose(index.positions, pos[[0, 2, 3, 6]])
    np.testing.assert_allclose(index.descriptors, reference[:4], atol=1e-5)
    skipped = {os.path.basename(s["path"]): s["reason"] for s in index.metadata["skipped"]}
    assert set(skipped) == {"broken.png", "empty.jpg", "gone.png"}
    assert "cannot be decoded" in skipped["broken.png"]
    assert "empty" in skipped["empty.jpg"] and "does not exist" in skipped["gone.png"]


def test_on_error_raise_names_the_file_and_writes_nothing(tmp_path, tiny_model, images):
    folder, names, _ = images
    with pytest.raises(pipelines.ImageReadError, match="gone.png"):
        rb.build_retrieval_index(tiny_model, tmp_path / "idx", [str(folder / names[0]),
                                                           str(tmp_path / "gone.png")],
                                 on_error="raise", progress=False)
    assert not (tmp_path / "idx").exists()


def test_bad_arguments_are_refused_before_writing(tmp_path, tiny_model, images):
    folder, names, positions = images
    out = tmp_path / "idx"
    with pytest.raises(ValueError, match=r"`positions` must have shape \(12, 2\).*\(3, 2\)"):
        rb.build_retrieval_index(tiny_model, out, names, positions=positions[:3], root=folder)
    with pytest.raises(ValueError, match="`kind`.*Received: kind='IVF-nonsense'"):
        rb.build_retrieval_index(tiny_model, out, names, root=folder, kind="IVF-nonsense")
    with pytest.raises(ValueError, match="`images` is empty"):
        rb.build_retrieval_index(tiny_model, out, [], root=folder)
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        rb.build_retrieval_index(tiny_model, out, tmp_path / "no-such-dir")
    with pytest.raises(ValueError, match="chunk_size"):
        rb.build_retrieval_index(tiny_model, out, names, root=folder, chunk_size=0)
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="not a tf_netvlad retrieval index"):
        ri.RetrievalIndex.load(tmp_path)


def test_folder_input_reads_positions_from_utm_names(tmp_path, tiny_model):
    folder = tmp_path / "imgs"
    write_block_images(folder / "sub", 2, seed=0, size=SIZE)
    for i, name in enumerate(sorted(os.listdir(folder / "sub"))):
        os.rename(folder / "sub" / name, folder / "sub" / f"@{500 + i}.5@{4000 + i}@17@T@.png")
    index = rb.build_retrieval_index(tiny_model, tmp_path / "idx", folder, progress=False)
    assert index.root == str(folder) and index.paths[0].startswith("sub" + os.sep)
    np.testing.assert_allclose(index.positions, [[500.5, 4000], [501.5, 4001]])


@pytest.mark.parametrize("kind", ["hnsw", "IVF2,Flat"])
def test_approximate_kinds_build_end_to_end(tmp_path, tiny_model, images, reference, kind):
    index = _build(tiny_model, tmp_path / "idx", images, kind=kind)
    reloaded = ri.RetrievalIndex.load(tmp_path / "idx")
    assert reloaded.metadata["kind"] == kind and reloaded.faiss_index.ntotal == 12
    assert reloaded.metadata["index_file"] == "index-0.faiss"  # trained kinds are stored
    assert (tmp_path / "idx" / "index-0.faiss").exists()
    _, ids = reloaded.search(reference, k=1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(12))
    assert index.search(reference, 1)[1].tolist() == ids.tolist()
    # the whole ranking of the reloaded index equals the one built in memory
    queries = np.random.default_rng(2).standard_normal((6, 256)).astype(np.float32)
    for got, want in zip(reloaded.search(queries, k=8), index.search(queries, k=8)):
        np.testing.assert_array_equal(got, want)
    graph_only = kind == "hnsw"  # HNSW: the file holds the graph, the vectors are the descriptors
    assert reloaded.metadata["vectors_in_index_file"] is (not graph_only)
    assert ri.RetrievalIndex.load(tmp_path / "idx").search(queries, k=8)[1].tolist() == \
        index.search(queries, k=8)[1].tolist()  # loads twice: the vectors stay attached
    index_bytes = os.path.getsize(tmp_path / "idx" / "index-0.faiss")
    assert (index_bytes < 12 * 256 * 4) is graph_only


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_approximate_kinds_recall_vs_exact_on_neardup_queries(kind):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 64))
    db = centres[rng.integers(0, 20, 2000)] + 0.7 * rng.standard_normal((2000, 64))
    db = (db / np.linalg.norm(db, axis=1, keepdims=True)).astype(np.float32)
    truth = rng.choice(2000, 200, replace=False)
    queries = db[truth] + 0.05 * rng.standard_normal((200, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    factory, params = resolve_kind(kind, len(db), 64)
    approx = faiss_lib.build_index(db, kind=factory, train_size=len(db))
    apply_search_params(approx, params)
    exact_ids = faiss_lib.search(db, queries, 1)[1][:, 0]
    approx_ids = faiss_lib.search(approx, queries, 1)[1][:, 0]
    assert (exact_ids == truth).mean() == 1.0
    assert (approx_ids == exact_ids).mean() >= 0.9


def test_resolve_kind_sizes():
    assert resolve_kind("flat", 10, 256) == ("flat", {})
    assert resolve_kind("flat", 10, 256, float16=True) == ("SQfp16", {})
    assert resolve_kind("ivfpq", 100_000, 4096) == ("IVF1265,PQ256x8", {"nprobe": 32})
    assert resolve_kind("ivfpq", 100_000, 1024)[0] == "IVF1265,PQ64x8"
    assert resolve_kind("ivfpq", 100_000, 32768)[0] == "IVF1265,PQ256x8"
    assert resolve_kind("ivfpq", 2000, 256) == ("IVF51,PQ64x5", {"nprobe": 32})
    assert resolve_kind("hnsw", 5, 256) == ("HNSW32", {"efSearch": 128})
    assert resolve_kind("IVF64,PQ16", 5, 256) == ("IVF64,PQ16", {})
    with pytest.raises(ValueError, match="Received: kind=3"):
        resolve_kind(3, 5, 256)


def test_index_and_export_warn_when_a_model_is_used_at_another_size_than_its_training_size(
        tmp_path, images, caplog):
    """A model records the size `train` trained it at; building an index or a SavedModel at another
    size says so in one line (a CPU-recipe model read at the files' size lost recall, see
    tests/evaluation/test_recall.py), and at its own size says nothing."""
    import logging

    from tf_netvlad.export import saved_model
    from tf_netvlad.models.model import NetVLADModel, build_model

    plain = build_model("tiny", num_clusters=4)
    model = NetVLADModel.from_config(dict(plain.get_config(), training_image_size="32x40"))
    with caplog.at_level(logging.WARNING, logger="tf_netvlad"):
        _build(model, tmp_path / "keep", images)  # the policy is compared, not the files' size
        _build(model, tmp_path / "small", images, image_size=(16, 20))
        saved_model.export_saved_model(model, tmp_path / "serving", image_size=(32, 40), warmup=False)
        saved_model.export_saved_model(model, tmp_path / "serving", image_size=64, warmup=False)
    notes = [r.getMessage() for r in caplog.records if "was trained on" in r.getMessage()]
    name = model.name
    assert notes == [
        f"{name} was trained on 32x40 images and indexes the images with image_size keep; pass "
        "--image-size 32x40 (image_size='32x40') to use it at its training size.",
        f"{name} was trained on 32x40 images and indexes the images with image_size 16x20; pass "
        "--image-size 32x40 (image_size='32x40') to use it at its training size.",
        f"{name} was trained on 32x40 images and is exported with image_size 64; pass "
        "--image-size 32x40 (image_size='32x40') to use it at its training size.",
    ]
