"""Loading a split (`tf_netvlad.data.split_loading`): what `load_split` refuses, and its `utm_zone`
argument. Layout detection, the overrides and `check_images` are in test_layouts.py."""

import sys

import numpy as np
import pytest

from tf_netvlad.data.places import PlaceSplit
from tf_netvlad.data.split_loading import load_split
from tf_netvlad.data.utm import normalize_utm_zone

PITTS = "584334.39,4476910.88"  # a Pittsburgh position (zone 17, band T)


def test_pure_numpy_module_does_not_import_tensorflow():
    import subprocess
    code = ("import sys, tf_netvlad.data.split_loading; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_load_split_rejects_unknown_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mat"):
        load_split(tmp_path / "nope.mat")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match=r"\.txt"):
        load_split(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="database/"):
        load_split(tmp_path)


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
