"""Tests for tf_netvlad.retrieval.index: loading (older formats, damaged files), search, add (resume,
duplicates, another model)."""

import json
import os

import numpy as np
import pytest

from tests.helpers import interrupt_extraction_at_chunk, write_block_images
from tests.retrieval import test_build as build_tests
from tests.retrieval.test_build import SIZE, _build
from tf_netvlad.models.identity import ModelMismatchError, model_fingerprint
from tf_netvlad.models.model import build_model
from tf_netvlad.models.model_files import load_model
from tf_netvlad.retrieval import build as rb
from tf_netvlad.retrieval import index as ri
from tf_netvlad.search import faiss_index as faiss_lib

# The database images and their descriptors computed independently, as in the build tests.
images, reference = build_tests.images, build_tests.reference


def test_format_1_index_with_a_stored_flat_file_still_loads(tmp_path, tiny_model, images, reference):
    """Indexes written before format 2 kept an `index-0.faiss` beside the descriptors."""
    from tf_netvlad.retrieval.storage import write_faiss

    built = _build(tiny_model, tmp_path / "idx", images)
    stored = faiss_lib.build_index(reference[::-1].copy())  # distinguishable from a rebuild
    write_faiss(stored, tmp_path / "idx" / "index-0.faiss")
    meta = dict(built.metadata, format_version=1, index_file="index-0.faiss")
    (tmp_path / "idx" / "metadata.json").write_text(json.dumps(meta))
    old = ri.RetrievalIndex.load(tmp_path / "idx")
    assert old.search(reference[:1], k=1)[1][0, 0] == 11  # the stored file was read
    extra = tmp_path / "extra"
    extra_names = write_block_images(extra, 1, seed=3, size=SIZE)
    old.add(tiny_model, [str(extra / extra_names[0])], progress=False)  # rewrites as format 2
    assert sorted(os.listdir(tmp_path / "idx")) == ["descriptors.f32", "metadata.json"]
    assert ri.RetrievalIndex.load(tmp_path / "idx").metadata["format_version"] == 3


def test_add_appends_and_search_finds_new_images(tmp_path, tiny_model, images, reference):
    folder, names, positions = images
    index = rb.build_retrieval_index(tiny_model, tmp_path / "idx", names[:8], positions=positions[:8],
                                     root=folder, progress=False, chunk_size=3)
    extra = tmp_path / "extra"
    extra_names = write_block_images(extra, 2, seed=7, size=SIZE)
    index.add(tiny_model, names[8:], positions=positions[8:], root=folder, progress=False)
    index.add(tiny_model, [str(extra / n) for n in extra_names], progress=False)  # no positions
    assert index.count == 14 and index.faiss_index.ntotal == 14
    reloaded = ri.RetrievalIndex.load(tmp_path / "idx")
    assert reloaded.paths[:12] == names and reloaded.paths[12] == str(extra / extra_names[0])
    np.testing.assert_allclose(reloaded.positions[:12], positions)
    assert np.isnan(reloaded.positions[12:]).all()
    np.testing.assert_allclose(reloaded.descriptors[:12], reference, atol=1e-5)
    scores, ids = reloaded.search(reloaded.descriptors[8:], k=1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(8, 14))
    # Exact kinds store the descriptors once: no faiss file next to them.
    assert sorted(os.listdir(tmp_path / "idx")) == ["descriptors.f32", "metadata.json"]


def test_duplicate_images_are_refused_before_any_extraction(tmp_path, tiny_model, images):
    folder, names, positions = images
    with pytest.raises(ValueError, match=rf"1 image\(s\) are listed more than once \(first: .*{names[2]}\)"):
        rb.build_retrieval_index(tiny_model, tmp_path / "dup", names[:4] + names[2:3], root=folder,
                                 progress=False)
    index = rb.build_retrieval_index(tiny_model, tmp_path / "idx", names[:4], root=folder, progress=False)
    # the same file named through another path is the same image
    again = [str(folder / names[1]), os.path.join(str(folder), ".", names[3]), str(folder / names[5])]
    with pytest.raises(ValueError, match=r"2 of the images to add are already in the index .*idx"):
        index.add(tiny_model, again, progress=False)
    reloaded = ri.RetrievalIndex.load(tmp_path / "idx")
    assert reloaded.count == 4 and sorted(os.listdir(tmp_path / "idx")) == ["descriptors.f32",
                                                                           "metadata.json"]


def test_interrupted_add_keeps_the_index_usable_and_resumes(tmp_path, tiny_model, images, reference,
                                                          monkeypatch):
    folder, names, positions = images
    index = rb.build_retrieval_index(tiny_model, tmp_path / "idx", names[:4], positions=positions[:4],
                                     root=folder, progress=False)
    calls = interrupt_extraction_at_chunk(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        index.add(tiny_model, names[4:10], positions=positions[4:10], root=folder, chunk_size=3,
                  progress=False)
    during = ri.RetrievalIndex.load(tmp_path / "idx")  # still the old, consistent index
    assert during.count == 4 and during.search(reference[:4], 1)[1][:, 0].tolist() == [0, 1, 2, 3]
    calls.clear()
    during.add(tiny_model, names[4:10], positions=positions[4:10], root=folder, chunk_size=3,
               progress=False)
    assert calls == [3]  # the first chunk of the add was kept
    after = ri.RetrievalIndex.load(tmp_path / "idx")
    assert after.count == 10 and after.paths == names[:10]
    np.testing.assert_allclose(after.descriptors, reference[:10], atol=1e-5)
    assert os.path.getsize(tmp_path / "idx" / "descriptors.f32") == 10 * 256 * 4


@pytest.mark.parametrize("kind, message", [
    ("flat", r"Descriptor file .* has 3072 bytes but the metadata needs 4096 .*damaged"),
    ("IVF1,Flat", "faiss index holds 3 vectors.*says 4.*damaged"),
])
def test_damaged_index_is_reported(tmp_path, tiny_model, images, kind, message):
    folder, names, _ = images
    rb.build_retrieval_index(tiny_model, tmp_path / "idx", names[:3], root=folder, progress=False,
                             kind=kind)
    meta = json.loads((tmp_path / "idx" / "metadata.json").read_text())
    meta["count"] = 4
    (tmp_path / "idx" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message):
        ri.RetrievalIndex.load(tmp_path / "idx")


def test_other_model_or_dimension_is_refused(tmp_path, tiny_model, images):
    folder, names, _ = images
    index = rb.build_retrieval_index(tiny_model, tmp_path / "idx", names[:3], root=folder,
                                     progress=False)
    smaller = build_model("tiny", num_clusters=2)
    with pytest.raises(ModelMismatchError, match=r"idx'.*256-D descriptors.*128-D"):
        index.add(smaller, names[3:5], root=folder, progress=False)
    retrained = build_model("tiny", num_clusters=4)  # same architecture, other weights
    with pytest.raises(ModelMismatchError, match="same architecture but different weights"):
        index.add(retrained, names[3:5], root=folder, progress=False)
    assert ri.RetrievalIndex.load(tmp_path / "idx").count == 3
    # The same model saved and reloaded (another object) has the same fingerprint.
    path = tmp_path / "m.keras"
    tiny_model.save(path)
    index.add(path, names[3:5], root=folder, progress=False)
    assert index.count == 5
    assert index.metadata["model"]["weights_sha256"] == \
        model_fingerprint(load_model(path, compile=False))["weights_sha256"]


def test_hnsw_graph_only_file_add_and_format_2_file(tmp_path, tiny_model, images, reference):
    from tf_netvlad.retrieval.storage import write_faiss

    folder, names, positions = images
    built = rb.build_retrieval_index(tiny_model, tmp_path / "idx", names[:8], positions=positions[:8],
                                     root=folder, progress=False, kind="hnsw")
    built.add(tiny_model, names[8:], positions=positions[8:], root=folder, progress=False)
    reloaded = ri.RetrievalIndex.load(tmp_path / "idx")
    assert reloaded.count == 12 and reloaded.metadata["index_file"] == "index-1.faiss"
    assert sorted(os.listdir(tmp_path / "idx")) == ["descriptors.f32", "index-1.faiss", "metadata.json"]
    for got, want in zip(reloaded.search(reference, k=4), built.search(reference, k=4)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(reloaded.search(reference, k=1)[1][:, 0], np.arange(12))
    # format 2 kept the vectors inside the HNSW file: such a directory still loads
    write_faiss(built.faiss_index, tmp_path / "idx" / "index-1.faiss")
    meta = dict(built.metadata, format_version=2)
    del meta["vectors_in_index_file"]
    (tmp_path / "idx" / "metadata.json").write_text(json.dumps(meta))
    old = ri.RetrievalIndex.load(tmp_path / "idx")
    for got, want in zip(old.search(reference, k=4), built.search(reference, k=4)):
        np.testing.assert_array_equal(got, want)
    # float16 descriptors: the graph was built on their float32 values, re-attached identically
    half = rb.build_retrieval_index(tiny_model, tmp_path / "half", names, root=folder, progress=False,
                                    kind="hnsw", float16=True)
    half_loaded = ri.RetrievalIndex.load(tmp_path / "half")
    assert half_loaded.descriptors.dtype == np.float16
    for got, want in zip(half_loaded.search(reference, k=4), half.search(reference, k=4)):
        np.testing.assert_array_equal(got, want)
    # a graph-only file with a descriptor file of another shape is refused
    with pytest.raises(ValueError, match="not an HNSW graph of 5 vectors"):
        faiss_lib.read_index(tmp_path / "idx" / "index-1.faiss", db=reference[:5])
