"""Splits from folders of `@`-named images (`tf_netvlad.data.image_folders`), as
gmberton/VPR-datasets-downloader writes them: positions, zones and time stamps from the names."""

import numpy as np
import pytest

from tf_netvlad.data.image_folders import parse_utm_filename
from tf_netvlad.data.split_files import project_latlon
from tf_netvlad.data.split_loading import load_split


def test_folder_at_filenames(tmp_path):
    names = {
        "database": ["@0584334.39@4476910.88@17@T@040.43857@-080.00562@004561@00@@@@@@pitch1_yaw1@.jpg",
                     "@0585230.45@4477142.26@17@T@040.44056@-079.99503@000116@35@@@@@@pitch2_yaw12@.jpg"],
        "queries": ["@0584340.00@4476910.00@17@T@040.43857@-080.00562@q1@00@@@@@@@.jpg"],
    }
    for sub, files in names.items():
        (tmp_path / "test" / sub).mkdir(parents=True)
        for n in files:
            (tmp_path / "test" / sub / n).write_bytes(b"")
    split = load_split(tmp_path / "test")
    assert split.name == "test" and split.num_db == 2 and split.num_queries == 1
    np.testing.assert_array_equal(split.db_utm, [[584334.39, 4476910.88], [585230.45, 4477142.26]])
    assert split.db_paths[0].startswith("database/@0584334.39@")
    assert split.db_timestamps is None
    assert split.positives()[0].tolist() == [0]
    assert parse_utm_filename(
        "@0241821.78@9862147.68@37@M@-01.24616@0036.67991@Oz2h@@@@@@20180527@day_forward@.jpg"
    ) == (241821.78, 9862147.68, "37M", 20180527)
    with pytest.raises(ValueError, match="convention"):
        parse_utm_filename("img_001.jpg")


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
