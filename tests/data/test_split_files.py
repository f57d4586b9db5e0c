"""Split files as people have them (`tf_netvlad.data.split_files`): broken `.mat` files, CSV manifests
with the usual column names, UTM zones (CSV, `@`-names, `load_split(utm_zone=)`), duplicates."""

import math

import numpy as np
import pytest
import scipy.io

from tf_netvlad.data import places, split_files, utm
from tf_netvlad.data.places import PlaceSplit, load_split
from tf_netvlad.data.split_files import project_latlon, write_csv, write_mat
from tf_netvlad.data.utm import normalize_utm_zone


def _good_mat(path, n=40):
    names = np.empty((n, 1), dtype=object)
    names[:, 0] = [f"000/{i:06d}_pitch1_yaw1.jpg" for i in range(n)]
    scipy.io.savemat(str(path), {"dbStruct": {
        "whichSet": "test", "dbImageFns": names, "utmDb": np.arange(2.0 * n).reshape(2, n),
        "qImageFns": names[:2], "utmQ": np.zeros((2, 2))}})
    return path


# ----------------------------------------------------------------------------- broken .mat files
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


# ----------------------------------------------------------------------------------- CSV
@pytest.mark.parametrize("x, y", [("easting", "northing"), ("UTM_East", "UTM_North"),
                                  ("utm_easting", "utm_northing"), ("X", "y")])
def test_csv_utm_column_names(tmp_path, x, y):
    path = tmp_path / "m.csv"
    path.write_text(f"id,Path,{x},ROLE,{y},heading\n"
                    "7,a.jpg,584334.39,db,4476910.88,90\n"
                    "8,q.jpg,584337.39,query,4476914.88,180\n")
    split = PlaceSplit.from_csv(path)
    np.testing.assert_array_equal(split.db_utm, [[584334.39, 4476910.88]])
    np.testing.assert_array_equal(split.query_utm, [[584337.39, 4476914.88]])
    assert split.notes[0] == (f"columns: path=path, role=role, easting/northing={x.lower()}/{y.lower()}; "
                              "ignored: id, heading")
    assert split.positives()[0].tolist() == [0]  # 5 m apart
    assert split.utm_zone is None


@pytest.mark.parametrize("lat, lon", [("latitude", "longitude"), ("Lat", "Lon"), ("lat", "lng")])
def test_csv_latlon_column_names_with_a_bom(tmp_path, lat, lon):
    # Excel's "CSV UTF-8" starts with a BOM; VPR-datasets-downloader name of the first row:
    # @0584334.39@4476910.88@17@T@040.43857@-080.00562@
    path = tmp_path / "geo.csv"
    path.write_bytes(f"image,role,{lat},{lon}\nа.jpg,database,40.43857,-80.00562\n"
                     "q.jpg,Query,40.43858,-80.00560\n".encode("utf-8-sig"))
    split = load_split(path)
    assert split.db_paths == ("а.jpg",)  # non-ASCII path kept
    np.testing.assert_allclose(split.db_utm, [[584334.39, 4476910.88]], atol=0.8)
    assert split.utm_zone == "17T"
    assert split.notes[0] == f"columns: path=image, role=role, latitude/longitude={lat.lower()}/{lon.lower()}"
    assert split.notes[1].startswith("UTM zone 17T:")


def test_csv_without_coordinates_lists_the_accepted_names(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,role,east,north\na.jpg,db,1,2\n")
    with pytest.raises(ValueError) as err:
        load_split(path)
    message = str(err.value)
    for pair in ("easting/northing", "utm_east/utm_north", "x/y", "latitude/longitude", "lat/lon"):
        assert pair in message
    assert str(path) in message and "found ['path', 'role', 'east', 'north']" in message
    path.write_text("file_name,role,x,y\na.jpg,db,1,2\n")
    with pytest.raises(ValueError, match="no image path column.*path, image_path, image"):
        load_split(path)
    path.write_bytes(b"path,role,x,y\n\xff\xfe,db,1,2\n")
    with pytest.raises(ValueError, match="not UTF-8 text"):
        load_split(path)


def test_latlon_spanning_two_zones_is_projected_into_one(tmp_path):
    # two points 0.0002 deg of longitude apart on either side of the zone 17/18 border (78 W)
    # and a third one in zone 17: the split is projected into 17T. Transverse Mercator is mirror
    # symmetric about the central meridians (81 W, 75 W), so the pair's distance must come out the
    # same in zone 17 and in zone 18 (where each point sits at the mirror position), ~17 m.
    lat, lon = [40.0, 40.0, 40.0], [-78.0001, -77.9999, -79.0]
    path = tmp_path / "border.csv"
    path.write_text("path,role,lat,lon\n" + "".join(
        f"{i}.jpg,{'db' if i else 'query'},{a},{o}\n" for i, (a, o) in enumerate(zip(lat, lon))))
    split = load_split(path)
    assert split.utm_zone == "17T" and "1 points of neighbouring zones" in split.notes[1]
    q, d = split.query_utm[0], split.db_utm[0]
    in_17 = math.dist(q, d)
    e18, n18, _ = project_latlon(lat[:2], lon[:2], "18T")
    assert in_17 == pytest.approx(math.dist((e18[0], n18[0]), (e18[1], n18[1])), abs=1e-6)
    assert 17.0 < in_17 < 17.1  # 0.0002 deg * 85.4 km/deg at 40 N, times the edge scale ~1.0009
    assert split.positives()[0].tolist() == [0]
    # each point in its own zone (what a per-point conversion does) would put them ~510 km apart
    e, n, _, _ = utm.latlon_to_utm(lat[1:2], lon[1:2])
    assert math.dist(q, (e[0], n[0])) > 500_000
    # points of the chosen zone are projected exactly as latlon_to_utm does
    e, n, zone, _ = utm.latlon_to_utm(lat[2:], lon[2:])
    np.testing.assert_allclose(split.db_utm[1], [e[0], n[0]], atol=1e-6)


PITTS = "584334.39,4476910.88"  # a Pittsburgh position (zone 17, band T)


def test_utm_zone_column_and_round_trips(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(f"path,role,easting,northing,utm_zone\na.jpg,db,{PITTS},17 t\nq.jpg,query,{PITTS},17T\n")
    split = load_split(path)
    assert split.utm_zone == "17T" and "UTM zone 17T (column utm_zone)" in split.notes
    sub = split.subset_queries([0])
    assert sub.utm_zone == "17T"
    assert load_split(write_csv(split, tmp_path / "back.csv")).utm_zone == "17T"
    back = load_split(write_mat(split, tmp_path / "back.mat"))
    assert back.utm_zone == "17T"
    names = scipy.io.loadmat(str(tmp_path / "back.mat"))["dbStruct"].dtype.names
    assert names == split_files._MAT_FIELDS + ("utmZone",)  # after the official fields
    path.write_text(f"path,role,easting,northing,utm_zone\na.jpg,db,{PITTS},17T\nq.jpg,query,{PITTS},18T\n")
    with pytest.raises(ValueError, match=r"span UTM zones \['17T', '18T'\].*latitude/longitude"):
        load_split(path)
    path.write_text(f"path,role,easting,northing,utm_zone\na.jpg,db,{PITTS},17\n")
    with pytest.raises(ValueError, match=r"line 2, column utm_zone: '17' is not a UTM zone label"):
        load_split(path)
    path.write_text(f"path,role,easting,northing,utm_zone\na.jpg,db,{PITTS},17N\n")  # N as "north"
    with pytest.raises(ValueError, match=r"UTM zone '17N' does not fit the positions of CSV manifest"):
        load_split(path)


def test_utm_zone_argument_and_validation(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(f"path,role,easting,northing\na.jpg,db,{PITTS}\nq.jpg,query,{PITTS}\n")
    assert load_split(path, utm_zone="17t").utm_zone == "17T"
    with pytest.raises(ValueError, match="'17N' does not fit the positions of"):
        load_split(path, utm_zone="17N")  # N meant as "north": band N is 0-8 N, Pittsburgh 40.4 N
    path.write_text(f"path,role,easting,northing,utm_zone\na.jpg,db,{PITTS},17T\n")
    assert load_split(path, utm_zone="17T").utm_zone == "17T"
    with pytest.raises(ValueError, match="utm_zone='18T' was given but.*17T"):
        load_split(path, utm_zone="18T")
    assert [normalize_utm_zone(z) for z in ("05T", "37m", "60 X")] == ["5T", "37M", "60X"]
    for bad in ("17", "61T", "17I", "17O", "T17", ""):
        with pytest.raises(ValueError, match="zone number 1-60 followed by the latitude-band letter"):
            normalize_utm_zone(bad)
    with pytest.raises(ValueError, match="'99Q' is not a UTM zone label"):
        PlaceSplit("x", ["a"], [[0, 0]], [], np.zeros((0, 2)), utm_zone="99Q")


# ------------------------------------------------------------------------------ @-named folders
def _at_name(east, north, zone, letter, lat, lon, pano):
    # gmberton/VPR-datasets-downloader util.py get_dst_image_name: 7.2 / 7.2 / 02d / letter /
    # 3.5 / 4.5 / pano / tile 02d / heading / pitch / roll / height / timestamp / note / extension
    return f"@{east:010.2f}@{north:010.2f}@{zone:02d}@{letter}@{lat}@{lon}@{pano}@00@@@@@@@.jpg"


def _folder(tmp_path, names_db, names_q):
    for sub, names in (("database", names_db), ("queries", names_q)):
        (tmp_path / "test" / sub).mkdir(parents=True, exist_ok=True)
        for n in names:
            (tmp_path / "test" / sub / n).write_bytes(b"")
    return tmp_path / "test"


def test_folder_names_spanning_two_zones_are_reprojected(tmp_path):
    lat, lon = [40.0, 40.0, 40.0], [-79.0, -78.5, -77.9999]
    e17, n17, _ = project_latlon(lat, lon, "17T")
    e18, n18, _ = project_latlon(lat[2:], lon[2:], "18T")
    names_db = [_at_name(e17[0], n17[0], 17, "T", "040.00000", "-079.00000", "p0"),
                _at_name(e17[1], n17[1], 17, "T", "040.00000", "-078.50000", "p1")]
    names_q = [_at_name(e18[0], n18[0], 18, "T", "040.00000", "-077.99990", "p2")]
    split = load_split(_folder(tmp_path, names_db, names_q))
    assert split.utm_zone == "17T"
    assert "1 images of zones ['18T'] re-projected" in split.notes[-1]
    np.testing.assert_allclose(split.query_utm[0], [e17[2], n17[2]], atol=0.01)  # names are 0.01 m
    np.testing.assert_allclose(split.db_utm, np.stack([e17[:2], n17[:2]], 1), atol=0.01)
    without_latlon = [n.replace("@040.00000@-077.99990@", "@@@") for n in names_q]
    (tmp_path / "test" / "queries" / names_q[0]).unlink()
    (tmp_path / "test" / "queries" / without_latlon[0]).write_bytes(b"")
    with pytest.raises(ValueError, match=r"span UTM zones \['17T', '18T'\] and the names carry no "
                                         "latitude/longitude"):
        load_split(tmp_path / "test")


# ------------------------------------------------------------------------------- duplicates
def test_duplicate_database_paths_are_refused(tmp_path):
    names = np.empty((3, 1), dtype=object)
    names[:, 0] = ["000/a.jpg", "000/b.jpg", "000/a.jpg"]
    path = tmp_path / "dup.mat"
    scipy.io.savemat(str(path), {"dbStruct": {"dbImageFns": names, "utmDb": np.zeros((2, 3)),
                                              "qImageFns": names[:1], "utmQ": np.zeros((2, 1))}})
    with pytest.raises(ValueError, match=f"{path}.*1 database path.*more than once.*'000/a.jpg'"):
        load_split(path)
    csv_path = tmp_path / "dup.csv"
    csv_path.write_text("path,role,x,y\na.jpg,db,0,0\na.jpg,db,5,5\na.jpg,query,0,0\n")
    with pytest.raises(ValueError, match="dup.csv.*more than once"):
        places.load_split(csv_path)
    # a query may be a database image (TokyoTM)
    assert PlaceSplit("tm", ["a.jpg", "b.jpg"], np.zeros((2, 2)), ["a.jpg"], np.zeros((1, 2))).num_db == 2
