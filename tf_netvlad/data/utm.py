"""WGS84 latitude/longitude to UTM easting/northing (pure NumPy), for CSV manifests in degrees."""

import math

import numpy as np

_WGS84_A = 6378137.0
_WGS84_F = 1 / 298.257223563


def _transverse_mercator(lat_deg, lon_deg, lon0_deg, a=_WGS84_A, f=_WGS84_F, k0=0.9996):
    """Gauss-Krüger series (Krüger 1912, order n⁴; ~mm accuracy within a UTM zone).

    Returns (x, y) in metres relative to the central meridian and the equator.
    """
    n = f / (2 - f)
    big_a = a / (1 + n) * (1 + n ** 2 / 4 + n ** 4 / 64)
    alpha = (n / 2 - 2 * n ** 2 / 3 + 5 * n ** 3 / 16 + 41 * n ** 4 / 180,
             13 * n ** 2 / 48 - 3 * n ** 3 / 5 + 557 * n ** 4 / 1440,
             61 * n ** 3 / 240 - 103 * n ** 4 / 140,
             49561 * n ** 4 / 161280)
    phi = np.radians(np.asarray(lat_deg, np.float64))
    lam = np.radians(np.asarray(lon_deg, np.float64) - lon0_deg)
    e = 2 * math.sqrt(n) / (1 + n)
    t = np.sinh(np.arctanh(np.sin(phi)) - e * np.arctanh(e * np.sin(phi)))
    xi = np.arctan2(t, np.cos(lam))
    eta = np.arctanh(np.sin(lam) / np.sqrt(1 + t ** 2))
    x_sum, y_sum = eta.copy(), xi.copy()
    for j, aj in enumerate(alpha, start=1):
        x_sum += aj * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
        y_sum += aj * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
    return k0 * big_a * x_sum, k0 * big_a * y_sum


def utm_zone(lat_deg, lon_deg):
    """UTM zone number (with the Norway/Svalbard exceptions) of each point."""
    lat = np.asarray(lat_deg, np.float64)
    lon = (np.asarray(lon_deg, np.float64) + 180) % 360 - 180
    zone = np.floor((lon + 180) / 6).astype(np.int64) + 1
    zone = np.minimum(zone, 60)
    zone = np.where((lat >= 56) & (lat < 64) & (lon >= 3) & (lon < 12), 32, zone)
    sval = (lat >= 72) & (lat < 84)
    for z, lo, hi in ((31, 0, 9), (33, 9, 21), (35, 21, 33), (37, 33, 42)):
        zone = np.where(sval & (lon >= lo) & (lon < hi), z, zone)
    return zone


def latlon_to_utm(lat_deg, lon_deg):
    """WGS84 latitude/longitude (degrees) -> (easting, northing, zone, hemisphere).

    All points must fall in one UTM zone and one hemisphere, otherwise metric distances
    between them are not meaningful and a ValueError is raised.
    """
    lat = np.asarray(lat_deg, np.float64).reshape(-1)
    lon = np.asarray(lon_deg, np.float64).reshape(-1)
    if lat.size == 0:
        return np.zeros(0), np.zeros(0), None, None
    bad = ~((np.abs(lat) <= 84) & (np.abs(lon) <= 180))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"Latitude/longitude out of the UTM range (|lat| <= 84, |lon| <= 180): "
                         f"point {i} is ({lat[i]}, {lon[i]}).")
    zones = np.unique(utm_zone(lat, lon))
    north = lat >= 0
    if len(zones) > 1 or (north.any() and not north.all()):
        raise ValueError(f"Points span UTM zones {zones.tolist()} and hemispheres "
                         f"{sorted({'N' if v else 'S' for v in north})}; all points of a split "
                         "must lie in one zone (give UTM easting/northing instead).")
    zone = int(zones[0])
    x, y = _transverse_mercator(lat, lon, 6 * zone - 183)
    easting = x + 500000.0
    northing = y + (0.0 if north.all() else 10000000.0)
    return easting, northing, zone, "N" if north.all() else "S"
