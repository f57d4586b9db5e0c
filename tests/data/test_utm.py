"""Tests for tf_netvlad.data.utm: UTM -> WGS84 against published points, round trips, zone labels."""

import math

import numpy as np
import pytest

from tf_netvlad.data import utm


@pytest.mark.parametrize("label, easting, northing, lat, lon, tol_deg", [
    # GeographicLib GeoConvert(1) man page: its geographic example "33.3 44.4" and its UTM example
    # "38n 444140.54 3684706.36" are the same point (given to 1 cm); band S holds 33.3°N.
    ("38S", 444140.54, 3684706.36, 33.3, 44.4, 2e-7),
    # AGI STK Connect "Convert MapGridPoint": LatLon 33.5 74.75 -> "43S 476779 3706747" (metres).
    ("43S", 476779.0, 3706747.0, 33.5, 74.75, 1e-5),
    # MSLS Nairobi as VPR-datasets-downloader names it (southern band M, 5-decimal degrees):
    # @0241821.78@9862147.68@37@M@-01.24616@0036.67991@
    ("37M", 241821.78, 9862147.68, -1.24616, 36.67991, 1e-5),
])
def test_utm_to_latlon_matches_published_points(label, easting, northing, lat, lon, tol_deg):
    got_lat, got_lon = utm.utm_to_latlon(easting, northing, label)
    assert abs(got_lat - lat) < tol_deg and abs(got_lon - lon) < tol_deg


def test_inverse_series_on_snyders_clarke_1866_example():
    # Snyder, Map Projections - A Working Manual (USGS PP 1395), p. 270 (inverse of p. 269):
    # x 127106.5 m, y 4484124.4 m, central meridian 75°W, k0 0.9996 -> 40°30'N, 73°30'W.
    e2 = 0.00676866
    lat, lon = utm._inverse_transverse_mercator(127106.5, 4484124.4, -75.0, a=6378206.4,
                                                f=1 - math.sqrt(1 - e2))
    assert abs(lat - 40.5) < 2e-6 and abs(lon + 73.5) < 2e-6  # 0.1 m of the rounded input


def test_round_trip_is_below_a_millimetre_in_every_zone_and_far_off_the_meridian():
    rng = np.random.default_rng(0)
    for number in (1, 17, 31, 32, 54, 60):
        for band, lat_range in (("T", (0.0, 84.0)), ("H", (-80.0, -0.01))):
            lat = rng.uniform(*lat_range, 200)
            # up to 9° from the central meridian: a split re-projected into a neighbouring zone
            lon = (6 * number - 183 + rng.uniform(-9, 9, 200) + 180) % 360 - 180
            easting, northing, got_number, hemisphere = utm.latlon_to_utm(lat, lon, f"{number}{band}")
            assert got_number == number and hemisphere == ("N" if band == "T" else "S")
            back_lat, back_lon = utm.utm_to_latlon(easting, northing, f"{number}{band}")
            again_e, again_n, _, _ = utm.latlon_to_utm(back_lat, back_lon, f"{number}{band}")
            assert np.abs(again_e - easting).max() < 1e-3 and np.abs(again_n - northing).max() < 1e-3
            # 1e-8° is about 1 mm on the ground
            assert np.abs(back_lat - lat).max() < 1e-8
            assert np.abs((back_lon - lon + 180) % 360 - 180).max() < 1e-8


def test_utm_to_latlon_keeps_shapes_and_nan():
    lat, lon = utm.utm_to_latlon([[444140.54, np.nan]], [[3684706.36, 0.0]], "38S")
    assert lat.shape == (1, 2) and np.isnan(lat[0, 1]) and np.isnan(lon[0, 1])
    with pytest.raises(ValueError, match="one northing per easting"):
        utm.utm_to_latlon([1.0, 2.0], [1.0], "38S")


def test_latlon_to_utm_into_a_given_zone_reprojects_a_split_across_two_zones():
    lat, lon = [40.0, 40.0], [-78.01, -77.99]  # zones 17 and 18
    with pytest.raises(ValueError, match=r"zones \[17, 18\]"):
        utm.latlon_to_utm(lat, lon)
    easting, northing, number, hemisphere = utm.latlon_to_utm(lat, lon, zone="17T")
    assert (number, hemisphere) == (17, "N")
    # the first point is in zone 17 anyway: same coordinates as its own projection
    own = utm.latlon_to_utm(lat[:1], lon[:1])
    assert own[2] == 17 and abs(own[0][0] - easting[0]) < 1e-9 and abs(own[1][0] - northing[0]) < 1e-9
    # The two points are 0.02° of longitude apart on the 40°N parallel: N cos(phi) d_lambda on the
    # ellipsoid, times the point scale 3° off the zone's meridian, k0 (1 + (1 + eta²) p² / 2) with
    # p = d_lambda cos(phi) (Snyder eq. 8-11 to second order).
    a, f, phi = 6378137.0, 1 / 298.257223563, math.radians(40.0)
    e2 = f * (2 - f)
    arc = a / math.sqrt(1 - e2 * math.sin(phi) ** 2) * math.cos(phi) * math.radians(0.02)
    p2 = (math.radians(3.0) * math.cos(phi)) ** 2
    scale = 0.9996 * (1 + (1 + e2 / (1 - e2) * math.cos(phi) ** 2) * p2 / 2)
    assert abs(math.hypot(easting[1] - easting[0], northing[1] - northing[0]) / arc - scale) < 1e-5
    # a zone number alone takes the hemisphere from the points, and refuses both hemispheres
    assert utm.latlon_to_utm([-1.24616], [36.67991], zone=37)[3] == "S"
    with pytest.raises(ValueError, match="both sides of the equator"):
        utm.latlon_to_utm([-0.1, 0.1], [36.7, 36.7], zone=37)
    with pytest.raises(ValueError, match="zone number 1-60"):
        utm.latlon_to_utm([0.0], [0.0], zone=61)


def test_zone_labels_bands_and_projections():
    assert utm.parse_utm_zone("17T") == (17, "T")
    assert utm.parse_utm_zone(" 07 t ") == (7, "T")
    assert utm.format_utm_zone(54, "s") == "54S"
    for bad in ("17", "T", "0T", "61T", "17I", "17O", "17Y", "17TT", "", None):
        with pytest.raises(ValueError, match="not a UTM zone label"):
            utm.parse_utm_zone(bad)
    # bands: C is 80°S-72°S, M 8°S-0°, N 0°-8°N, T 40°N-48°N, X 72°N-84°N
    assert list(utm.latitude_band([-80, -72.01, -72, -0.5, 0, 40.44, 71.9, 72, 84])) == \
        ["C", "C", "D", "M", "N", "T", "W", "X", "X"]
    assert utm.latitude_band(35.68) == "S"  # Tokyo
    with pytest.raises(ValueError, match="UTM range"):
        utm.latitude_band(85.0)
    assert utm.zone_label(40.4406, -79.9959) == "17T" and utm.zone_label(-33.87, 151.21) == "56H"
    assert utm.zone_label(60.0, 5.0) == "32V"  # Norway exception
    assert utm.is_northern("17N") and utm.is_northern("54S") and not utm.is_northern("37M")
    assert utm.same_projection("17T", "17S") and not utm.same_projection("17T", "18T")
    assert not utm.same_projection("37M", "37N")


def test_check_zone_fits_refuses_a_hemisphere_letter_in_place_of_the_band():
    pittsburgh = np.stack(utm.latlon_to_utm([40.4406], [-79.9959])[:2], axis=1)
    assert utm.check_zone_fits(pittsburgh, "17t") == "17T"
    assert utm.check_zone_fits(np.vstack([pittsburgh, [np.nan, np.nan]]), "17S") == "17S"  # next band
    with pytest.raises(ValueError, match=r"'17N' does not fit the index.*latitude 40\.44.*did you mean "
                                         r"'17T' \(northern hemisphere\)"):
        utm.check_zone_fits(pittsburgh, "17N", "the index")
    sydney = np.stack(utm.latlon_to_utm([-33.87], [151.21])[:2], axis=1)
    assert utm.check_zone_fits(sydney, "56H") == "56H"
    with pytest.raises(ValueError, match=r"'56S'.*or '56H' \(southern hemisphere\)\?"):
        utm.check_zone_fits(sydney, "56S")
    # eastings far from any zone's meridian are not UTM metres of that zone
    with pytest.raises(ValueError, match="does not fit"):
        utm.check_zone_fits([[5_000_000.0, 4_477_000.0]], "17T")
    assert utm.check_zone_fits([[np.nan, np.nan]], "17T") == "17T"  # nothing known, nothing to check
