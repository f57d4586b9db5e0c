"""Tests for tf_netvlad.retrieval.hloc_files: what tf_netvlad writes, read back the way hloc reads it.

The readers below follow hloc's own code (cvg/Hierarchical-Localization), written here from it:
`hloc/utils/io.py` `list_h5_names` (every dataset's parent group is an image name),
`hloc/pairs_from_retrieval.py` `get_descriptors` (`fd[name]["global_descriptor"]` as float32) and
`main` / `pairs_from_score_matrix` (inner products, same-name pairs masked, scores below
`min_score=0` masked, top-k by descending score), `hloc/utils/parsers.py` `parse_retrieval`
(one `query db` pair per line, grouped by query in file order). `tests/retrieval/test_hloc.py`
reads `export_hloc`'s files back with them too.
"""

import json
from collections import defaultdict

import h5py
import numpy as np
import pytest

from tf_netvlad.retrieval import hloc_files

# --------------------------------------------------------------------------- hloc's side


def hloc_names(path):
    """As `hloc/utils/io.py` `list_h5_names`: the parent group of every dataset, without '/'."""
    found = []
    with h5py.File(str(path), "r") as handle:
        handle.visititems(lambda _, obj: found.append(obj.parent.name.strip("/"))
                          if isinstance(obj, h5py.Dataset) else None)
    return set(found)


def hloc_descriptors(names, path):
    """As `pairs_from_retrieval.get_descriptors`: stacked `global_descriptor`s as float32."""
    with h5py.File(str(path), "r", libver="latest") as handle:
        return np.stack([handle[n]["global_descriptor"].__array__() for n in names]).astype(np.float32)


def hloc_pairs(query_desc, db_desc, query_names, db_names, num_matched, self_mask=True, min_score=0.0):
    """As `pairs_from_retrieval.main` + `pairs_from_score_matrix`, in float64 NumPy."""
    scores = np.asarray(query_desc, np.float64) @ np.asarray(db_desc, np.float64).T
    invalid = np.zeros(scores.shape, bool)
    if self_mask:
        invalid |= np.array(query_names)[:, None] == np.array(db_names)[None]
    if min_score is not None:
        invalid |= scores < min_score
    scores[invalid] = -np.inf
    pairs = []
    for q, row in enumerate(scores):
        top = np.argsort(-row, kind="stable")[:num_matched]
        pairs += [(query_names[q], db_names[j]) for j in top if np.isfinite(row[j])]
    return pairs


def parse_retrieval(path):
    """As `hloc/utils/parsers.py` `parse_retrieval`."""
    retrieval = defaultdict(list)
    with open(path) as handle:
        for line in handle.read().rstrip("\n").split("\n"):
            if line:
                query, db = line.split()
                retrieval[query].append(db)
    return dict(retrieval)


def grouped(pairs):
    out = defaultdict(list)
    for query, db in pairs:
        out[query].append(db)
    return dict(out)


def unit_rows(rng, n, dim=8):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


MODEL_INFO = {"fingerprint": "f" * 64, "weights_sha256": "w" * 64, "descriptor_dim": 8,
              "name": "m", "source": "m.keras"}


# --------------------------------------------------------------------------- the features file


def test_features_file_layout_reads_back_with_hlocs_reader(tmp_path, rng):
    names = ["db/a/0.jpg", "db/b/1.jpg", "query/night/2.jpg", "top.jpg"]
    desc = unit_rows(rng, 4)
    sizes = [(640, 480), None, (480, 640), (12, 10)]
    path = tmp_path / "global-feats-netvlad.h5"
    assert hloc_files.write_features(path, names, desc, sizes, model_info=MODEL_INFO) == {
        "written": 4, "replaced": 0, "total": 4}
    assert hloc_names(path) == set(names)
    with h5py.File(path, "r") as handle:
        # names with '/' are nested groups, as h5py's create_group(name) makes them
        assert isinstance(handle["db"], h5py.Group) and isinstance(handle["db/a"], h5py.Group)
        assert set(handle["db/a/0.jpg"]) == {"global_descriptor", "image_size"}
        assert set(handle["db/b/1.jpg"]) == {"global_descriptor"}
        stored = handle["query/night/2.jpg/global_descriptor"]
        assert stored.dtype == np.float16 and stored.shape == (8,)  # hloc's as_half default
        size = handle["db/a/0.jpg/image_size"]
        assert size.dtype == np.int64 and size[()].tolist() == [640, 480]
        assert json.loads(handle.attrs["tf_netvlad_model"]) == MODEL_INFO
    np.testing.assert_array_equal(hloc_descriptors(names, path), desc.astype(np.float16).astype(np.float32))
    exact = tmp_path / "f32.h5"
    hloc_files.write_features(exact, names, desc, as_half=False)
    np.testing.assert_array_equal(hloc_descriptors(names, exact), desc)


def test_features_append_overwrite_and_refusals_leave_the_file_intact(tmp_path, rng, caplog):
    path = tmp_path / "feats.h5"
    desc = unit_rows(rng, 3)
    hloc_files.write_features(path, ["db/0.jpg", "db/1.jpg", "db/2.jpg"], desc, model_info=MODEL_INFO)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite.*--append"):
        hloc_files.write_features(path, ["db/0.jpg"], desc[:1])
    for names, message in ((["my photo.jpg"], "whitespace"), (["../up.jpg"], "not a relative path"),
                           (["a.jpg", "a.jpg"], "listed twice")):
        with pytest.raises(ValueError, match=message):
            hloc_files.write_features(path, names, unit_rows(rng, len(names)), append=True,
                                model_info=MODEL_INFO)
    with pytest.raises(ValueError, match="holds 8-D descriptors; this model gives 4-D"):
        hloc_files.write_features(path, ["q/0.jpg"], unit_rows(rng, 1, dim=4), append=True)
    other = dict(MODEL_INFO, weights_sha256="x" * 64, source="other.keras")
    with pytest.raises(ValueError, match="descriptors of another model.*other.keras"):
        hloc_files.write_features(path, ["q/0.jpg"], unit_rows(rng, 1), append=True, model_info=other)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["feats.h5"]
    # queries appended to the database file; a name already there is replaced
    new = unit_rows(rng, 2)
    assert hloc_files.write_features(path, ["q/0.jpg", "db/1.jpg"], new, append=True,
                               model_info=MODEL_INFO) == {"written": 2, "replaced": 1, "total": 4}
    assert hloc_names(path) == {"db/0.jpg", "db/1.jpg", "db/2.jpg", "q/0.jpg"}
    expected = np.stack([desc[0], new[1], desc[2], new[0]]).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(
        hloc_descriptors(["db/0.jpg", "db/1.jpg", "db/2.jpg", "q/0.jpg"], path), expected)
    # a file hloc wrote (no tf_netvlad attribute) takes appends with a warning
    foreign = tmp_path / "hloc.h5"
    with h5py.File(foreign, "w") as handle:
        handle.create_group("db/9.jpg").create_dataset("global_descriptor", data=desc[0].astype(np.float16))
    hloc_files.write_features(foreign, ["q/1.jpg"], desc[1:2], append=True, model_info=MODEL_INFO)
    assert hloc_names(foreign) == {"db/9.jpg", "q/1.jpg"} and "not written by tf_netvlad" in caplog.text
    with h5py.File(foreign, "r") as handle:
        assert "tf_netvlad_model" not in handle.attrs  # the old descriptors' model is unknown
    # a local-features file is not a global-features file
    local = tmp_path / "feats-superpoint.h5"
    with h5py.File(local, "w") as handle:
        handle.create_group("db/0.jpg").create_dataset("keypoints", data=np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match="no 1-D 'global_descriptor'"):
        hloc_files.write_features(local, ["q/0.jpg"], desc[:1], append=True)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="is not an HDF5 features file"):
        hloc_files.write_features(tmp_path / "junk.h5", ["q/0.jpg"], desc[:1], append=True)


# --------------------------------------------------------------------------- pairs


def test_retrieval_pairs_equal_hlocs_selection_and_read_back(tmp_path, rng):
    db_names = [f"db/{i:02d}.jpg" for i in range(10)]
    db = unit_rows(rng, 10)
    # 4 queries are database images (self-retrieval), 3 are new
    query_names = db_names[2:6] + [f"query/night/{j}.jpg" for j in range(3)]
    queries = np.concatenate([db[2:6], unit_rows(rng, 3)])
    pairs = hloc_files.retrieval_pairs(queries, db, query_names, db_names, 7)
    assert pairs == hloc_pairs(queries, db, query_names, db_names, 7)
    assert all(q != d for q, d in pairs)
    # negative similarities are dropped as hloc drops them: some queries keep fewer than 7
    counts = [len(v) for v in grouped(pairs).values()]
    assert max(counts) == 7 and len(pairs) < 7 * len(query_names)
    # by hand: similarities 1, 0 and -1; 0 is kept (hloc masks scores < 0), -1 is not
    assert hloc_files.retrieval_pairs([[1.0, 0.0]], [[0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]], ["q.jpg"],
                                ["a.jpg", "b.jpg", "c.jpg"], 3) == [("q.jpg", "c.jpg"), ("q.jpg", "a.jpg")]
    # each query's retrievals by descending similarity
    for q, found in grouped(pairs).items():
        row = queries[query_names.index(q)] @ db[[db_names.index(d) for d in found]].T
        assert np.all(np.diff(row) <= 0)
    # without self-exclusion a database query retrieves itself first; k larger than the database
    everything = hloc_files.retrieval_pairs(queries, db, query_names, db_names, 50, exclude_self=False,
                                      min_score=None)
    assert everything == hloc_pairs(queries, db, query_names, db_names, 50, self_mask=False,
                                    min_score=None)
    assert len(everything) == 7 * 10 and everything[0] == (db_names[2], db_names[2])
    own = hloc_files.retrieval_pairs(queries, db, query_names, db_names, 50, min_score=None)
    assert len(own) == 4 * 9 + 3 * 10
    # float16 database (an index stored as float16) searched exactly, the same ranking here
    assert hloc_files.retrieval_pairs(queries, db.astype(np.float16), query_names, db_names, 4) == \
        hloc_pairs(queries, db.astype(np.float16), query_names, db_names, 4)
    # the file: "query db" lines joined by newlines, no final newline, parsed back by hloc
    path = hloc_files.write_pairs(tmp_path / "pairs-netvlad.txt", pairs)
    text = open(path).read()
    assert not text.endswith("\n") and text.splitlines()[0] == " ".join(pairs[0])
    assert parse_retrieval(path) == grouped(pairs)
    with pytest.raises(FileExistsError, match="--overwrite"):
        hloc_files.write_pairs(path, pairs)
    assert hloc_files.retrieval_pairs(queries[:0], db, [], db_names, 4) == []
    with pytest.raises(ValueError, match="`num_matched`.*positive int"):
        hloc_files.retrieval_pairs(queries, db, query_names, db_names, 0)
    with pytest.raises(ValueError, match="listed twice"):
        hloc_files.retrieval_pairs(queries, db[:2], query_names, ["a.jpg", "a.jpg"], 1)
