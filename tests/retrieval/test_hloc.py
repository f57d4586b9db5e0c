"""Tests for tf_netvlad.retrieval.hloc: `export_hloc`'s files, read back the way hloc reads them.

The readers are those of `tests/retrieval/test_hloc_files.py`, written there from hloc's own code
(cvg/Hierarchical-Localization): `hloc/utils/io.py` `list_h5_names`,
`hloc/pairs_from_retrieval.py` `get_descriptors` and `main` / `pairs_from_score_matrix`,
`hloc/utils/parsers.py` `parse_retrieval`.
"""

import json
import os
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

from tests.helpers import mean_colour_reference, write_block_images
from tests.retrieval.test_hloc_files import grouped, hloc_descriptors, hloc_names, hloc_pairs, parse_retrieval
from tf_netvlad.data import pipelines
from tf_netvlad.retrieval import hloc
from tf_netvlad.retrieval.build import build_retrieval_index

# --------------------------------------------------------------------------- from a model or an index


@pytest.fixture
def tree(tmp_path):
    """root/db/a (3), root/db/b (2) and root/queries/night (3): 32x40 block-colour PNGs."""
    root = tmp_path / "root"
    db = [f"db/a/{n}" for n in write_block_images(root / "db" / "a", 3, seed=1)]
    db += [f"db/b/{n}" for n in write_block_images(root / "db" / "b", 2, seed=2)]
    queries = [f"queries/night/{n}" for n in write_block_images(root / "queries" / "night", 3, seed=3)]
    return root, db, queries


def reference(root, names):
    return np.stack([mean_colour_reference(np.asarray(Image.open(root / n).convert("RGB")))
                     for n in names]).astype(np.float32)


def test_export_from_a_model_and_a_split_reads_back_in_hloc(tmp_path, tree, mean_colour_model):
    from tf_netvlad.data.places import PlaceSplit

    root, db, queries = tree
    split = PlaceSplit("tree", db, np.zeros((5, 2)), queries, np.zeros((3, 2)), root=str(root))
    features, pairs = tmp_path / "out" / "feats.h5", tmp_path / "out" / "pairs.txt"
    summary = hloc.export_hloc(features, pairs, model=mean_colour_model, images=split,
                               num_matched=3, as_half=False, progress=False)
    assert summary["num_db"] == 5 and summary["num_queries"] == 3 and not summary["self_retrieval"]
    assert summary["image_dir"] == str(root) and summary["dtype"] == "float32"
    assert hloc_names(features) == set(db + queries)
    db_desc, query_desc = hloc_descriptors(db, features), hloc_descriptors(queries, features)
    np.testing.assert_allclose(db_desc, reference(root, db), atol=1e-6)
    np.testing.assert_allclose(query_desc, reference(root, queries), atol=1e-6)
    with h5py.File(features, "r") as handle:
        assert handle["db/a/img00.png/image_size"][()].tolist() == [40, 32]  # (width, height)
    expected = hloc_pairs(query_desc, db_desc, queries, db, 3)
    assert parse_retrieval(pairs) == grouped(expected) and summary["num_pairs"] == 9 == len(expected)


def test_export_from_an_index_extracts_nothing(tmp_path, tree, mean_colour_model):
    root, db, queries = tree
    index = build_retrieval_index(mean_colour_model, tmp_path / "index", root / "db", progress=False)
    gone = root / "db" / "b" / "img01.png"
    moved = tmp_path / "img01.png"
    shutil.move(gone, moved)  # the stored descriptors are used, the image is not needed
    features, pairs = tmp_path / "feats.h5", tmp_path / "pairs.txt"
    summary = hloc.export_hloc(features, pairs, index=tmp_path / "index", num_matched=100)
    names = [p.replace(os.sep, "/") for p in index.paths]  # relative to the index root
    assert names[0] == "a/img00.png" and summary["self_retrieval"] and summary["skipped"] == []
    assert hloc_names(features) == set(names)
    stored = hloc_descriptors(names, features)
    np.testing.assert_array_equal(stored, np.asarray(index.descriptors).astype(np.float16).astype(np.float32))
    with h5py.File(features, "r") as handle:
        assert "image_size" not in handle["b/img01.png"] and "image_size" in handle["b/img00.png"]
        assert json.loads(handle.attrs["tf_netvlad_model"])["fingerprint"] == \
            index.metadata["model"]["fingerprint"]
    # self-retrieval: every other database image, never the query itself (k > database)
    expected = hloc_pairs(index.descriptors, index.descriptors, names, names, 100)
    assert parse_retrieval(pairs) == grouped(expected) and len(expected) == 5 * 4
    shutil.move(moved, gone)
    # queries of an index need its model; names then relative to the common folder
    with pytest.raises(ValueError, match="need the index's model"):
        hloc.export_hloc(pairs=tmp_path / "p2.txt", index=index, queries=root / "queries", num_matched=2)
    summary = hloc.export_hloc(tmp_path / "f2.h5", tmp_path / "p2.txt", index=index,
                               model=mean_colour_model, queries=root / "queries", num_matched=2,
                               progress=False)
    assert summary["image_dir"] == str(root) and summary["num_queries"] == 3
    db_names = ["db/" + n for n in names]
    assert hloc_names(tmp_path / "f2.h5") == set(db_names + queries)
    expected = hloc_pairs(reference(root, queries), index.descriptors, queries, db_names, 2)
    assert parse_retrieval(tmp_path / "p2.txt") == grouped(expected)


def test_bad_input_is_refused_before_a_model_is_loaded_and_nothing_is_written(tmp_path, tree,
                                                                              mean_colour_model):
    root, db, queries = tree
    missing_model = str(tmp_path / "missing.keras")  # any error below comes before loading it
    out = tmp_path / "out"
    kwargs = dict(model=missing_model, images=root / "db", num_matched=2)
    cases = [
        (dict(), "Nothing to write"),
        (dict(pairs=out / "p.txt", num_matched=None), "num_matched"),
        (dict(pairs=out / "p.txt", index=tmp_path / "ix"), "exactly one source"),
        (dict(pairs=out / "p.txt", model=None), "needs `model`"),
        (dict(pairs=out / "p.txt", image_dir=root / "db" / "a"), r"img00.png' is not inside.*--image-dir"),
        (dict(pairs=out / "p.txt", images=[root / "db" / "a" / "img00.png"] * 2), "listed twice"),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError, match=message):
            hloc.export_hloc(**dict(kwargs, **extra))
    shutil.copy(root / "db" / "a" / "img00.png", root / "db" / "a" / "my photo.png")
    with pytest.raises(ValueError, match="'a/my photo.png' contains whitespace"):
        hloc.export_hloc(out / "f.h5", **kwargs)
    os.remove(root / "db" / "a" / "my photo.png")
    with pytest.raises(pipelines.ImageReadError, match="img09.png"):
        hloc.export_hloc(out / "f.h5", model=missing_model, images=[root / "db" / "a" / "img09.png"],
                         on_error="raise")
    assert not out.exists()
    (tmp_path / "p.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        hloc.export_hloc(pairs=tmp_path / "p.txt", **kwargs)
    assert (tmp_path / "p.txt").read_text() == "keep me"
    # an unreadable image is left out of both files and listed
    (root / "db" / "b" / "img01.png").write_bytes(b"not a png")
    summary = hloc.export_hloc(out / "f.h5", out / "p.txt", model=mean_colour_model,
                               images=root / "db", num_matched=10, progress=False)
    assert [s["path"] for s in summary["skipped"]] == [str(root / "db" / "b" / "img01.png")]
    assert hloc_names(out / "f.h5") == {"a/img00.png", "a/img01.png", "a/img02.png", "b/img00.png"}
    assert "b/img01.png" not in open(out / "p.txt").read() and summary["num_pairs"] == 4 * 3


def test_export_warns_when_images_are_read_at_another_size_than_the_training_size(tmp_path, tree,
                                                                                  caplog):
    """Descriptors extracted for hloc at another size than the model records it was trained at get
    the same one-line warning as `evaluate`, `index` and `export`; descriptors taken from an index
    extract nothing and say nothing (the index's build warned)."""
    import logging

    from tf_netvlad.models.model import NetVLADModel, build_model

    root, db, _ = tree
    model = NetVLADModel.from_config(dict(build_model("tiny", num_clusters=4).get_config(),
                                          training_image_size="32x40"))
    index = build_retrieval_index(model, tmp_path / "index", root / "db", image_size=(32, 40),
                                  progress=False)
    with caplog.at_level(logging.WARNING, logger="tf_netvlad"):
        hloc.export_hloc(pairs=tmp_path / "a.txt", model=model, images=root / "db", num_matched=2,
                         image_size=(32, 40), progress=False)
        hloc.export_hloc(pairs=tmp_path / "b.txt", model=model, images=root / "db", num_matched=2,
                         progress=False)  # the files' own size
        hloc.export_hloc(pairs=tmp_path / "c.txt", index=index, num_matched=2)
    notes = [r.getMessage() for r in caplog.records if "was trained on" in r.getMessage()]
    assert notes == [f"{model.name} was trained on 32x40 images and extracts the hloc descriptors "
                     "with image_size keep; pass --image-size 32x40 (image_size='32x40') to use it "
                     "at its training size."]
