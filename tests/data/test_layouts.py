"""Dataset roots as their authors ship them (`tf_netvlad.data.layouts`, `split_loading.load_split`): layout
detection, overrides, the image check and its errors, and `tf_netvlad evaluate` on each layout.

The fixtures reproduce the distributed trees with tiny images:
- Relja/netvlad `datasets/dbPitts.m`: `<root>/images/` + `<root>/queries/`;
  `datasets/dbTokyo247.m`: `images/` + `query/`; `datasets/dbTokyoTimeMachine.m`: `images/` for both.
- Nanne/pytorch-NetVlad `pittsburgh.py` (and gmberton/VPR-datasets-downloader `format_pitts30k.py`,
  "000, 001, ..., queries_real, datasets"): database folders `000/`... at the root, queries under
  `queries_real/`, the `.mat` files in `<root>/datasets/`.
- Names as the official lists carry them: Pittsburgh `000/000829_pitch1_yaw1.jpg` for both lists
  (QVPR/Patch-NetVLAD `patchnetvlad/dataset_imagenames/pitts30k_imageNames_{index,query}.txt`);
  Tokyo 24/7 database cutouts `03814/<22-char panorama id>_012_<yaw>.jpg` (Torii's
  `247code/data/example_gsv/L-NLvGeZ6JHX6JO8Xnf_BA_012_000.jpg`) shipped as `.png` files
  (VPR-datasets-downloader `format_tokyo247.py` reads them with `.replace('.jpg', '.png')`), queries
  `00010.jpg` (Patch-NetVLAD `tokyo247_imageNames_query.txt`). TokyoTM names are illustrative.
- The dbStruct is written with scipy directly in the official field order (cell arrays N x 1,
  UTM 2 x N, scalar thresholds), not with `write_mat`.
"""

import json
import os
import shutil

import numpy as np
import pytest
import scipy.io

from tests.helpers import write_block_images
from tf_netvlad.data import layouts, split_loading
from tf_netvlad.data.dbstruct import write_mat
from tf_netvlad.data.split_files import listed_paths, write_csv

PITTS_DB = ["000/000829_pitch1_yaw1.jpg", "000/000829_pitch1_yaw2.jpg",
            "001/001046_pitch2_yaw12.jpg", "001/001047_pitch1_yaw1.jpg"]
PITTS_Q = ["000/000546_pitch1_yaw1.jpg", "000/000547_pitch2_yaw3.jpg"]
TOKYO_DB = ["03814/L-NLvGeZ6JHX6JO8Xnf_BA_012_000.jpg", "03814/L-NLvGeZ6JHX6JO8Xnf_BA_012_030.jpg",
            "03815/a7Hq2cD9sPz0WkLmNbVcXe_012_000.jpg", "03815/a7Hq2cD9sPz0WkLmNbVcXe_012_030.jpg"]
TOKYO_Q = ["00010.jpg", "00011.jpg"]
# four places 100 m apart; query q is 3 m from database image QUERY_OF[q] and a copy of its file
DB_UTM = np.array([[584334.39, 4476910.88], [584434.39, 4476910.88],
                   [584534.39, 4476910.88], [584634.39, 4476910.88]])
QUERY_OF = (0, 2)


def write_dbstruct(path, db_names, q_names, which_set="test", timestamps=None):
    """A dbStruct .mat as the official files are laid out (see the module docstring)."""
    def cell(names):
        c = np.empty((len(names), 1), dtype=object)
        c[:, 0] = names
        return c

    q_utm = DB_UTM[list(QUERY_OF)] + [3.0, 0.0]
    fields = [("whichSet", which_set), ("dbImageFns", cell(db_names)), ("utmDb", DB_UTM.T.copy())]
    if timestamps is not None:
        fields.append(("dbTimeStamp", np.asarray(timestamps[0], np.float64).reshape(1, -1)))
    fields += [("qImageFns", cell(q_names)), ("utmQ", q_utm.T.copy())]
    if timestamps is not None:
        fields.append(("qTimeStamp", np.asarray(timestamps[1], np.float64).reshape(1, -1)))
    fields += [("numImages", float(len(db_names))), ("numQueries", float(len(q_names))),
               ("posDistThr", 25.0), ("posDistSqThr", 625.0), ("nonTrivPosDistSqThr", 100.0)]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scipy.io.savemat(str(path), {"dbStruct": dict(fields)})
    return path


def write_images(root, db_folder, q_folder, db_names=PITTS_DB, q_names=PITTS_Q, db_suffix=None):
    """Distinct 32x40 block images for the database (`db_suffix` replaces the listed suffix on
    disk, as Tokyo 24/7's .png files); each query is a byte copy of its database image."""
    db_files = []
    for i, name in enumerate(db_names):
        on_disk = name if db_suffix is None else os.path.splitext(name)[0] + db_suffix
        full = os.path.join(root, db_folder, on_disk)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        written = write_block_images(os.path.dirname(full), 1, seed=i, name=os.path.basename(full))
        db_files.append(os.path.join(os.path.dirname(full), written[0]))
    for q, name in enumerate(q_names):
        full = os.path.join(root, q_folder, name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        shutil.copyfile(db_files[QUERY_OF[q]], full)
    return db_files


def pittsburgh_as_distributed(root):
    """Nanne/pytorch-NetVlad layout: database at the root, queries_real/, datasets/*.mat."""
    write_images(root, "", "queries_real")
    return write_dbstruct(root / "datasets" / "pitts30k_test.mat", PITTS_DB, PITTS_Q)


def pittsburgh_matlab(root):
    """Relja/netvlad dbPitts.m layout: images/ + queries/ (the .mat kept elsewhere)."""
    write_images(root, "images", "queries")
    return write_dbstruct(root.parent / "specs" / "pitts30k_test.mat", PITTS_DB, PITTS_Q)


LAYOUT_CASES = {
    "pittsburgh_matlab": ("images", "queries", PITTS_DB, PITTS_Q, None, None, "dbPitts.m"),
    "tokyo247_matlab": ("images", "query", TOKYO_DB, TOKYO_Q, ".png", None, "dbTokyo247.m"),
    "tokyotm_matlab": ("images", "images", TOKYO_DB, ["03814/L-NLvGeZ6JHX6JO8Xnf_BA_012_000.jpg",
                                                      "03815/a7Hq2cD9sPz0WkLmNbVcXe_012_000.jpg"],
                       None, ([1, 1, 2, 2], [1, 2]), "dbTokyoTimeMachine.m"),
    "pytorch_netvlad": ("", "queries_real", PITTS_DB, PITTS_Q, None, None, "pittsburgh.py"),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_each_official_layout_is_detected_and_written_back_unchanged(tmp_path, case):
    db_folder, q_folder, db_names, q_names, suffix, stamps, source = LAYOUT_CASES[case]
    root = tmp_path / "root"
    if case == "tokyotm_matlab":  # TokyoTM queries are database images: no copies
        write_images(root, db_folder, "copies", db_names, [], db_suffix=suffix)
    else:
        write_images(root, db_folder, q_folder, db_names, q_names, db_suffix=suffix)
    mat = write_dbstruct(tmp_path / "specs" / f"{case}.mat", db_names, q_names, timestamps=stamps)

    split = split_loading.load_split_checked(mat, root=root)
    assert source in split.layout.name and split.root == str(root)
    assert (split.layout.db.folder, split.layout.query.folder) == (db_folder, q_folder)
    want_db = [os.path.join(root, db_folder, os.path.splitext(n)[0] + (suffix or ".jpg"))
               for n in db_names]
    assert split.db_image_paths() == want_db
    assert split.query_image_paths()[1] == os.path.join(root, q_folder, q_names[1])
    assert any(n.startswith("layout: ") and source in n for n in split.notes)
    # the names go back out as the official file lists them
    assert listed_paths(split) == (db_names, q_names)
    back = scipy.io.loadmat(str(write_mat(split, tmp_path / "back.mat")))["dbStruct"].item()
    assert [f[0].item() for f in back[1]] == db_names
    assert [f[0].item() for f in back[4 if stamps else 3]] == q_names
    assert split_loading.load_split(tmp_path / "back.mat", root=root).db_paths == split.db_paths
    csv_back = split_loading.load_split(write_csv(split, tmp_path / "back.csv"), root=root)
    assert csv_back.db_paths == split.db_paths and csv_back.query_paths == split.query_paths


def test_pytorch_netvlad_root_is_the_parent_of_datasets(tmp_path):
    mat = pittsburgh_as_distributed(tmp_path / "pittsburgh")
    split = split_loading.load_split_checked(mat)  # no root: the .mat's folder, then its parent
    assert split.root == str(tmp_path / "pittsburgh")
    assert split.db_paths[0] == "000/000829_pitch1_yaw1.jpg"
    assert split.query_paths[0] == "queries_real/000/000546_pitch1_yaw1.jpg"
    assert split.summary()["layout"].startswith("Pittsburgh as distributed")


def test_db_root_and_query_root_override_detection(tmp_path):
    write_images(tmp_path / "disk1", "", "", PITTS_DB, [])
    write_images(tmp_path / "disk2", "pitts_db_copy", "q", PITTS_DB, PITTS_Q)
    mat = write_dbstruct(tmp_path / "specs" / "pitts30k_val.mat", PITTS_DB, PITTS_Q)
    split = split_loading.load_split_checked(mat, root=tmp_path / "disk2", db_root=tmp_path / "disk1",
                                             query_root=tmp_path / "disk2" / "q")
    assert split.layout.name == "given folders (--db-root / --query-root)"
    assert split.db_paths[0] == os.path.join(tmp_path, "disk1", PITTS_DB[0])  # outside root: absolute
    assert split.query_paths[0] == os.path.join("q", PITTS_Q[0])  # inside root: relative
    assert listed_paths(split) == (PITTS_DB, PITTS_Q)
    (tmp_path / "folder" / "database").mkdir(parents=True)
    (tmp_path / "folder" / "queries").mkdir()
    with pytest.raises(ValueError, match="apply to .mat and .csv"):
        split_loading.load_split(tmp_path / "folder", db_root=tmp_path)


def test_root_matching_no_layout_lists_the_folders_tried_and_the_flags(tmp_path):
    mat = write_dbstruct(tmp_path / "pitts30k_test.mat", PITTS_DB, PITTS_Q)
    (tmp_path / "somewhere_else").mkdir()
    split = split_loading.load_split(mat, root=tmp_path / "somewhere_else")  # loading alone does not check
    assert not split.layout.db.found and split.layout.name.startswith("no known layout")
    with pytest.raises(FileNotFoundError) as err:
        split_loading.load_split_checked(mat, root=tmp_path / "somewhere_else",
                                         flags=("--root", "--db-root", "--query-root"))
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(mat))
    assert "4 of 4 database images not found, no known dataset layout matched (looked in" in message
    assert "2 of 2 query images not found, no known dataset layout matched" in message
    for folder in ("", "images"):
        assert os.path.join(tmp_path, "somewhere_else", folder).rstrip("/") in message
    for folder in ("queries", "query", "queries_real"):
        assert os.path.join(tmp_path, "somewhere_else", folder) in message
    assert "--root" in message and "--db-root" in message and "--query-root" in message


def test_check_reports_the_missing_images_of_a_detected_layout(tmp_path):
    mat = pittsburgh_matlab(tmp_path / "pitts")
    os.remove(tmp_path / "pitts" / "images" / PITTS_DB[1])  # the sample is first/second/.../last
    split = split_loading.load_split(mat, root=tmp_path / "pitts")
    assert split.layout.db.folder == "images"
    with pytest.raises(FileNotFoundError, match=r"1 of 4 database images not found \(looked in "
                       + str(tmp_path / "pitts" / "images") + ".*000829_pitch1_yaw2.jpg.*root="):
        split_loading.check_images(split)
    split_loading.check_images(split, parts=("query",))  # the queries are all there
    with pytest.raises(ValueError, match="'db' or 'query'"):
        split_loading.check_images(split, parts=("database",))


def test_missing_files_lists_each_folder_once(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    (tmp_path / "a" / "dir.jpg").mkdir()  # a folder is not an image file
    paths = [str(tmp_path / "a" / n) for n in ("x.jpg", "y.jpg", "dir.jpg")] + [
        str(tmp_path / "nope" / "z.jpg")]
    scanned = []
    real_scandir = os.scandir
    monkeypatch.setattr(layouts.os, "scandir", lambda d: scanned.append(d) or real_scandir(d))
    assert layouts.missing_files(paths * 3) == paths[1:] * 3
    assert sorted(scanned) == sorted([str(tmp_path / "a"), str(tmp_path / "nope")])


def test_sample_spans_the_list():
    names = [f"{i}.jpg" for i in range(10)]
    assert layouts._sample(names) == ["0.jpg", "3.jpg", "6.jpg", "9.jpg"]
    assert layouts._sample(names[:1]) == ["0.jpg"] and layouts._sample([]) == []


def test_side_apply_and_listed_are_inverse():
    side = layouts.Side(folder="images", suffix=(".jpg", ".png"))
    assert side.apply("03814/a_012_000.jpg") == os.path.join("images", "03814/a_012_000.png")
    assert side.listed(side.apply("03814/a_012_000.jpg")) == "03814/a_012_000.jpg"
    assert layouts.Side().apply("/abs/x.jpg") == "/abs/x.jpg"


# ------------------------------------------------------------------ through the command line
@pytest.fixture(scope="module")
def model_file(tiny_model, tmp_path_factory):
    from tf_netvlad.models.model_files import save_model

    return str(save_model(tiny_model, tmp_path_factory.mktemp("model") / "tiny.keras"))


def _evaluate(argv, tmp_path, capsys):
    from tf_netvlad.cli import main

    out = tmp_path / "r.json"
    code = main.main(["evaluate", *argv, "--json", str(out), "--recall-ns", "1,2"])
    captured = capsys.readouterr()
    return code, captured, json.loads(out.read_text()) if out.exists() else None


def test_evaluate_pittsburgh_as_distributed_with_the_dataset_file_only(tmp_path, capsys, model_file):
    mat = pittsburgh_as_distributed(tmp_path / "pittsburgh")
    code, captured, results = _evaluate(["--dataset", str(mat), "--model", model_file], tmp_path, capsys)
    assert code == 0, captured.err
    assert "dataset: layout: Pittsburgh as distributed" in captured.out
    assert str(tmp_path / "pittsburgh" / "queries_real") in captured.out
    # every query is a copy of a database image 3 m away and the 4 places differ: rank 1
    assert (results["num_db"], results["num_queries"], results["recall@1"]) == (4, 2, 1.0)


def test_evaluate_relja_layout_with_root_and_overrides(tmp_path, capsys, model_file):
    mat = pittsburgh_matlab(tmp_path / "Pittsburgh")
    code, captured, results = _evaluate(["--dataset", str(mat), "--root", str(tmp_path / "Pittsburgh"),
                                         "--model", model_file], tmp_path, capsys)
    assert code == 0 and results["recall@1"] == 1.0
    assert "dbPitts.m" in captured.out
    code, captured, results = _evaluate(
        ["--dataset", str(mat), "--db-root", str(tmp_path / "Pittsburgh" / "images"),
         "--query-root", str(tmp_path / "Pittsburgh" / "queries"), "--model", model_file],
        tmp_path, capsys)
    assert code == 0 and results["recall@1"] == 1.0
    assert "given folders" in captured.out


def test_evaluate_refuses_a_root_without_images_before_loading_the_model(tmp_path, capsys):
    mat = write_dbstruct(tmp_path / "pitts30k_test.mat", PITTS_DB, PITTS_Q)
    code, captured, results = _evaluate(
        ["--dataset", str(mat), "--root", str(tmp_path), "--model", str(tmp_path / "absent.keras")],
        tmp_path, capsys)
    assert code == 2 and results is None
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"tf_netvlad evaluate: error: {mat}: 4 of 4 database images not found")
    assert "absent.keras" not in err  # the dataset is checked before the model is opened
    assert "--root" in err and "--db-root" in err and "--query-root" in err


def test_evaluate_vpr_datasets_downloader_folder(tmp_path, capsys, model_file):
    # gmberton/VPR-datasets-downloader: datasets/<name>/images/{train,val,test}/{database,queries}
    # with util.py get_dst_image_name names @east(7.2)@north(7.2)@zone(02d)@letter@lat(3.5)@lon(4.5)
    # @pano@tile(02d)@heading@pitch@roll@height@timestamp@note@.jpg (Pittsburgh: note pitch1_yaw1)
    test_dir = tmp_path / "datasets" / "pitts30k" / "images" / "test"
    names = []
    for i, (east, north) in enumerate(DB_UTM):
        names.append(f"@{east:010.2f}@{north:010.2f}@17@T@040.4385{i}@-080.0056{i}@00082{i}@00"
                     f"@@@@@@pitch1_yaw1@.jpg")
    files = write_images(test_dir, "database", "scratch", names, [])
    for q, i in enumerate(QUERY_OF):
        east, north = DB_UTM[i] + [3.0, 0.0]
        dst = test_dir / "queries" / (f"@{east:010.2f}@{north:010.2f}@17@T@040.4385{i}@-080.0056{i}"
                                      f"@00054{q}@00@@@@@@pitch1_yaw1@.jpg")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[i], dst)
    shutil.rmtree(test_dir / "scratch", ignore_errors=True)
    code, captured, results = _evaluate(["--dataset", str(test_dir), "--model", model_file],
                                        tmp_path, capsys)
    assert code == 0, captured.err
    assert (results["num_db"], results["num_queries"], results["recall@1"]) == (4, 2, 1.0)
    assert "VPR-datasets-downloader folder" in captured.out and "UTM zone 17T" in captured.out
