"""Split files as people have them (`tf_netvlad.data.split_files`): CSV manifests with the usual
column names, UTM zones (CSV columns, latitude/longitude projected into one zone), duplicates.
Broken `.mat` files are in test_dbstruct.py, `@`-named folders in test_image_folders.py and
`load_split(utm_zone=)` in test_split_loading.py."""

import math

import numpy as np
import pytest
import scipy.io

from tf_netvlad.data import dbstruct, utm
from tf_netvlad.data.dbstruct import write_mat
from tf_netvlad.data.places import PlaceSplit
from tf_netvlad.data.split_files import project_latlon, write_csv
from tf_netvlad.data.split_loading import load_split


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
    assert names == dbstruct._MAT_FIELDS + ("utmZone",)  # after the official fields
    path.write_text(f"path,role,easting,northing,utm_zone\na.jpg,db,{PITTS},17T\nq.jpg,query,{PITTS},18T\n")
    with pytest.raises(ValueError, match=r"span UTM zones \['17T', '18T'\].*latitude/longitude"):
        load_split(path)
    path.write_text(f"path,role,easting,northing,utm_zone\na.jpg,db,{PITTS},17\n")
    with pytest.raises(ValueError, match=r"line 2, column utm_zone: '17' is not a UTM zone label"):
        load_split(path)
    path.write_text(f"path,role,easting,northing,utm_zone\na.jpg,db,{PITTS},17N\n")  # N as "north"
    with pytest.raises(ValueError, match=r"UTM zone '17N' does not fit the positions of CSV manifest"):
        load_split(path)


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
        load_split(csv_path)
    # a query may be a database image (TokyoTM)
    assert PlaceSplit("tm", ["a.jpg", "b.jpg"], np.zeros((2, 2)), ["a.jpg"], np.zeros((1, 2))).num_db == 2
