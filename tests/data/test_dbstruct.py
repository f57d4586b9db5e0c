"""NetVLAD `dbStruct` `.mat` split files (`tf_netvlad.data.dbstruct`): round trips, the official field
orders (read positionally as the PyTorch ports do), real-file quirks, and broken files."""

import numpy as np
import pytest
import scipy.io

from tests.helpers import toy_split
from tf_netvlad.data import dbstruct
from tf_netvlad.data.dbstruct import write_mat
from tf_netvlad.data.places import PlaceSplit
from tf_netvlad.data.split_loading import load_split


def test_mat_round_trip_and_positional_read(tmp_path, rng):
    split = toy_split(rng, n_db=7, n_q=3)
    path = write_mat(split, tmp_path / "toy_test.mat")
    back = PlaceSplit.from_mat(path)
    assert back.db_paths == split.db_paths and back.query_paths == split.query_paths
    np.testing.assert_array_equal(back.db_utm, split.db_utm)
    np.testing.assert_array_equal(back.query_utm, split.query_utm)
    assert back.pos_dist_thr == 25.0 and back.non_triv_pos_dist_sq_thr == 100.0
    assert back.root == str(tmp_path) and back.name == "toy_test"

    # positional read, as Nanne/pytorch-NetVlad's pittsburgh.py does it
    s = scipy.io.loadmat(str(path))["dbStruct"].item()
    assert s[0].item() == "test"
    assert [f[0].item() for f in s[1]] == list(split.db_paths)
    np.testing.assert_array_equal(s[2].T, split.db_utm)
    assert [f[0].item() for f in s[3]] == list(split.query_paths)
    np.testing.assert_array_equal(s[4].T, split.query_utm)
    assert (s[5].item(), s[6].item()) == (7, 3)
    assert (s[7].item(), s[8].item(), s[9].item()) == (25.0, 625.0, 100.0)


def test_mat_tokyotm_timestamps_field_order(tmp_path, rng):
    split = toy_split(rng, n_db=6, n_q=2, timestamps=True)
    path = write_mat(split, tmp_path / "tm.mat")
    names = scipy.io.loadmat(str(path))["dbStruct"].dtype.names
    assert names == dbstruct._MAT_FIELDS_TM
    s = scipy.io.loadmat(str(path))["dbStruct"].item()
    np.testing.assert_array_equal(s[3].reshape(-1), split.db_timestamps)  # dbTimeStamp
    np.testing.assert_array_equal(s[6].reshape(-1), split.query_timestamps)  # qTimeStamp
    back = load_split(path, root="/data")
    np.testing.assert_array_equal(back.db_timestamps, split.db_timestamps)
    assert back.root == "/data"
    assert back.db_image_paths()[0] == "/data/db/0000.jpg"


def test_mat_reader_handles_real_file_quirks(tmp_path):
    # N×2 utm, 1×N cell, a single query (squeezed shapes), no posDistThr (only posDistSqThr)
    cell = np.empty((1, 3), dtype=object)
    cell[0, :] = ["000/a.jpg", "000/b.jpg", "001/c.jpg"]
    qcell = np.empty((1, 1), dtype=object)
    qcell[0, 0] = "queries_real/q.jpg"
    struct = {"whichSet": "val", "dbImageFns": cell, "utmDb": np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
              "qImageFns": qcell, "utmQ": np.array([1.5, 2.5]), "posDistSqThr": 400.0}
    path = tmp_path / "quirky.mat"
    scipy.io.savemat(str(path), {"dbStruct": struct})
    split = PlaceSplit.from_mat(path)
    assert split.db_paths == ("000/a.jpg", "000/b.jpg", "001/c.jpg")
    np.testing.assert_array_equal(split.db_utm, [[1, 2], [3, 4], [5, 6]])  # N×2 kept as is
    np.testing.assert_array_equal(split.query_utm, [[1.5, 2.5]])
    assert split.pos_dist_thr == 20.0


def test_mat_missing_field_and_v73(tmp_path):
    path = tmp_path / "bad.mat"
    scipy.io.savemat(str(path), {"dbStruct": {"whichSet": "x", "dbImageFns": np.array(["a"], object),
                                              "utmDb": np.zeros((2, 1))}})
    with pytest.raises(ValueError, match=r"missing field.*qImageFns.*utmQ.*found.*whichSet"):
        PlaceSplit.from_mat(path)
    scipy.io.savemat(str(path), {"other": np.zeros(3)})
    with pytest.raises(ValueError, match=r"no `dbStruct`.*\['other'\]"):
        PlaceSplit.from_mat(path)

    import h5py  # a test requirement (requirements-dev.txt): no skip that could hide this check

    v73 = tmp_path / "v73.mat"
    with h5py.File(v73, "w", userblock_size=512) as f:
        f.create_group("dbStruct").create_dataset("utmDb", data=np.zeros((2, 3)))
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(v73, "r+b") as f:
        f.write(header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM")
    assert scipy.io.matlab.matfile_version(str(v73)) == (2, 0)
    with pytest.raises(ValueError, match=r"v7\.3.*save\(out, 'dbStruct', '-v7'\)"):
        load_split(v73)


# ----------------------------------------------------------------------------- broken .mat files
def _good_mat(path, n=40):
    names = np.empty((n, 1), dtype=object)
    names[:, 0] = [f"000/{i:06d}_pitch1_yaw1.jpg" for i in range(n)]
    scipy.io.savemat(str(path), {"dbStruct": {
        "whichSet": "test", "dbImageFns": names, "utmDb": np.arange(2.0 * n).reshape(2, n),
        "qImageFns": names[:2], "utmQ": np.zeros((2, 2))}})
    return path


def _v73(path):
    """An HDF5 file with MATLAB's 512-byte v7.3 user block header, as `save -v7.3` writes."""
    import h5py  # a test requirement (requirements-dev.txt)

    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_group("dbStruct").create_dataset("utmDb", data=np.zeros((2, 3)))
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM")


def _plain_hdf5(path):
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("dbStruct", data=np.zeros(3))


@pytest.mark.parametrize("make, cause", [
    (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(3000)), "is not a MATLAB .mat file"),
    (lambda p: p.write_text("path,role,easting,northing\n"), "is not a MATLAB .mat file"),
    (_plain_hdf5, r"plain HDF5 file, not a MATLAB \.mat file; if MATLAB wrote it with -v7\.3, re-save"),
    (_v73, r"MATLAB v7\.3 \(HDF5\) file.*save\(out, 'dbStruct', '-v7'\)"),
    (lambda p: p.write_bytes(_good_mat(p).read_bytes()[:400]), "truncated or corrupt"),
    (lambda p: p.write_bytes(_good_mat(p).read_bytes()[:150]), "truncated or corrupt"),
])
def test_broken_mat_files_are_one_line_naming_the_file(tmp_path, make, cause):
    path = tmp_path / "pitts30k_test.mat"
    make(path)
    with pytest.raises(ValueError, match=cause) as err:
        load_split(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_broken_mat_through_the_cli_is_one_line(tmp_path, capsys):
    from tf_netvlad.cli import main

    path = tmp_path / "empty.mat"
    path.write_bytes(b"")
    assert main.main(["init", "--dataset", str(path), "--out", str(tmp_path / "m.keras")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tf_netvlad init: error: {str(path)!r} is empty (0 bytes), not a MATLAB .mat file."
    assert not (tmp_path / "m.keras").exists()
