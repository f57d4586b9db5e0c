"""WGS84 latitude/longitude <-> UTM easting/northing (pure NumPy), and UTM zone labels.

Datasets give positions in UTM metres (Pittsburgh/Tokyo `.mat` files, `@utm_east@utm_north@`
names) or in degrees (CSV manifests); distances and positives are computed in UTM metres, and
`localize` reports its estimate back in latitude/longitude when the zone is known.

A zone label is the zone number followed by the MGRS latitude-band letter, as
VPR-datasets-downloader writes it in its file names (`@...@17@T@...`): `"17T"`. Bands are 8°
tall from `C` (80°S) to `X` (72°N-84°N, 12°), skipping `I` and `O`; a band letter >= `N` is in
the northern hemisphere. The letter is a band, not a hemisphere: `"17S"` is zone 17 at
32°N-40°N, `"17N"` zone 17 at 0°-8°N. `check_zone_fits` catches the usual mix-up (a hemisphere
`N`/`S` written where the band letter belongs) from the positions themselves.

Both directions use Krüger's series to order n⁴ (Karney 2011, "Transverse Mercator with an
accuracy of a few nanometers", eqs. 35-36): about a millimetre within 3,000 km of the central
meridian, so a dataset re-projected into one zone stays exact far beyond the zone's 6° width.
"""

import math

import numpy as np

_WGS84_A = 6378137.0
_WGS84_F = 1 / 298.257223563
_K0 = 0.9996
_FALSE_EASTING = 500000.0
_FALSE_NORTHING_SOUTH = 10000000.0

# MGRS latitude bands, south to north: C is 80°S-72°S, ..., W is 64°N-72°N, X is 72°N-84°N.
BAND_LETTERS = "CDEFGHJKLMNPQRSTUVWX"
# How far (degrees) positions may lie outside their zone label's band before it is refused.
BAND_SLACK_DEG = 8.0
# How far (degrees of longitude) from the zone's central meridian positions may lie.
MERIDIAN_SLACK_DEG = 9.0


def _series_constants(a, f):
    n = f / (2 - f)
    big_a = a / (1 + n) * (1 + n ** 2 / 4 + n ** 4 / 64)
    return n, big_a, 2 * math.sqrt(n) / (1 + n)


def _transverse_mercator(lat_deg, lon_deg, lon0_deg, a=_WGS84_A, f=_WGS84_F, k0=_K0):
    """Gauss-Krüger series (Krüger 1912, order n⁴; ~mm accuracy within a UTM zone).

    Returns (x, y) in metres relative to the central meridian and the equator.
    """
    n, big_a, e = _series_constants(a, f)
    alpha = (n / 2 - 2 * n ** 2 / 3 + 5 * n ** 3 / 16 + 41 * n ** 4 / 180,
             13 * n ** 2 / 48 - 3 * n ** 3 / 5 + 557 * n ** 4 / 1440,
             61 * n ** 3 / 240 - 103 * n ** 4 / 140,
             49561 * n ** 4 / 161280)
    phi = np.radians(np.asarray(lat_deg, np.float64))
    lam = np.radians(np.asarray(lon_deg, np.float64) - lon0_deg)
    t = np.sinh(np.arctanh(np.sin(phi)) - e * np.arctanh(e * np.sin(phi)))
    xi = np.arctan2(t, np.cos(lam))
    eta = np.arctanh(np.sin(lam) / np.sqrt(1 + t ** 2))
    x_sum, y_sum = eta.copy(), xi.copy()
    for j, aj in enumerate(alpha, start=1):
        x_sum += aj * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
        y_sum += aj * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
    return k0 * big_a * x_sum, k0 * big_a * y_sum


def _inverse_transverse_mercator(x, y, lon0_deg, a=_WGS84_A, f=_WGS84_F, k0=_K0):
    """Inverse of `_transverse_mercator`: (x, y) metres from the central meridian and the
    equator -> (latitude, longitude) in degrees.

    Krüger's β series takes the projected point back to the conformal sphere (ξ', η'); the
    conformal latitude is turned into the geodetic one by Newton's method on τ = tan φ
    (Karney 2011, eqs. 19-21), which converges to machine precision in a few steps.
    """
    n, big_a, e = _series_constants(a, f)
    beta = (n / 2 - 2 * n ** 2 / 3 + 37 * n ** 3 / 96 - n ** 4 / 360,
            n ** 2 / 48 + n ** 3 / 15 - 437 * n ** 4 / 1440,
            17 * n ** 3 / 480 - 37 * n ** 4 / 840,
            4397 * n ** 4 / 161280)
    xi = np.asarray(y, np.float64) / (k0 * big_a)
    eta = np.asarray(x, np.float64) / (k0 * big_a)
    xi_p, eta_p = xi.copy(), eta.copy()
    for j, bj in enumerate(beta, start=1):
        xi_p -= bj * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
        eta_p -= bj * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
    tau_p = np.sin(xi_p) / np.sqrt(np.sinh(eta_p) ** 2 + np.cos(xi_p) ** 2)
    lam = np.arctan2(np.sinh(eta_p), np.cos(xi_p))
    e2 = e * e
    tau = tau_p.copy()
    for _ in range(8):
        sigma = np.sinh(e * np.arctanh(e * tau / np.sqrt(1 + tau ** 2)))
        tau_i = tau * np.sqrt(1 + sigma ** 2) - sigma * np.sqrt(1 + tau ** 2)
        step = ((tau_p - tau_i) / np.sqrt(1 + tau_i ** 2)
                * (1 + (1 - e2) * tau ** 2) / ((1 - e2) * np.sqrt(1 + tau ** 2)))
        tau = tau + step
        if np.all(np.abs(step) <= 1e-14 * np.maximum(1.0, np.abs(tau))):
            break
    return np.degrees(np.arctan(tau)), np.degrees(lam) + lon0_deg


# --------------------------------------------------------------------------- zones and bands


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


def latitude_band(lat_deg):
    """MGRS latitude-band letter of each latitude (`C` .. `X`; 84°N counts as `X`, 80°S as `C`).

    Returns a str for a scalar, else an array of str.
    """
    lat = np.asarray(lat_deg, np.float64)
    if np.any(~(np.abs(lat) <= 84)):
        raise ValueError(f"Latitude out of the UTM range (|lat| <= 84). Received: {lat_deg!r}")
    index = np.clip(np.floor((lat + 80) / 8).astype(np.int64), 0, len(BAND_LETTERS) - 1)
    letters = np.array(list(BAND_LETTERS))[index]
    return str(letters) if letters.ndim == 0 else letters


def _band_range(letter):
    south = -80 + 8 * BAND_LETTERS.index(letter)
    return south, south + (12 if letter == "X" else 8)


def parse_utm_zone(zone):
    """A zone label -> `(number, band_letter)`; refuses anything that is not one.

    Accepts `"17T"`, `"17 t"`, `"07T"` (number 1-60, band letter C-X without I and O).

    Example:
    >>> parse_utm_zone("17T")
    (17, 'T')
    """
    text = str(zone).strip().upper().replace(" ", "")
    number, letter = text[:-1], text[-1:]
    if not (number.isdigit() and 1 <= int(number) <= 60 and letter and letter in BAND_LETTERS):
        raise ValueError(
            f"{zone!r} is not a UTM zone label: expected the zone number 1-60 followed by the "
            "latitude-band letter C-X (no I, O), like '17T' (Pittsburgh) or '54S' (Tokyo); "
            "bands C-M are south of the equator, N-X north of it."
        )
    return int(number), letter


def format_utm_zone(number, letter):
    """`(17, "T")` -> `"17T"` (validated)."""
    return "{}{}".format(*parse_utm_zone(f"{int(number)}{letter}"))


def normalize_utm_zone(zone):
    """A zone label in its canonical form: `"17 t"` or `"017T"` -> `"17T"` (validated)."""
    return format_utm_zone(*parse_utm_zone(zone))


def projection_key(zone):
    """`(zone number, northern?)`: labels with equal keys share one projection."""
    number, letter = parse_utm_zone(zone)
    return number, letter >= "N"


def is_northern(zone):
    """True when a zone label's band letter is in the northern hemisphere (`N` .. `X`)."""
    return parse_utm_zone(zone)[1] >= "N"


def same_projection(zone_a, zone_b):
    """True when two zone labels use the same projection (same number and hemisphere).

    `"17T"` and `"17S"` are the same projection (bands only name the latitude), so positions
    labelled with either can be mixed; `"17T"` and `"18T"` cannot.
    """
    return projection_key(zone_a) == projection_key(zone_b)


def zone_label(lat_deg, lon_deg):
    """The zone label (`"17T"`) of one point."""
    lat, lon = float(np.asarray(lat_deg).reshape(-1)[0]), float(np.asarray(lon_deg).reshape(-1)[0])
    return format_utm_zone(int(utm_zone(lat, lon)), latitude_band(lat))


# --------------------------------------------------------------------------- conversions


def latlon_to_utm(lat_deg, lon_deg, zone=None):
    """WGS84 latitude/longitude (degrees) -> (easting, northing, zone, hemisphere).

    Args:
        lat_deg, lon_deg: degrees (scalars or arrays of the same length).
        zone: None: all points must fall in one UTM zone and one hemisphere, otherwise metric
            distances between them are not meaningful and a ValueError is raised. A zone number
            or label (`"17T"`): every point is projected into that zone (a split that straddles
            two zones is re-projected into one); a label's band letter sets the hemisphere,
            a number takes it from the points.

    Returns:
        `(easting, northing)` float64 arrays, the zone number and "N" or "S".
    """
    lat = np.asarray(lat_deg, np.float64).reshape(-1)
    lon = np.asarray(lon_deg, np.float64).reshape(-1)
    if lat.shape != lon.shape:
        raise ValueError(f"Need one longitude per latitude: {lat.size} latitudes, {lon.size} "
                         "longitudes.")
    if lat.size == 0:
        return np.zeros(0), np.zeros(0), None, None
    bad = ~((np.abs(lat) <= 84) & (np.abs(lon) <= 180))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"Latitude/longitude out of the UTM range (|lat| <= 84, |lon| <= 180): "
                         f"point {i} is ({lat[i]}, {lon[i]}).")
    north = lat >= 0
    northern = None
    if isinstance(zone, str):
        number, letter = parse_utm_zone(zone)
        northern = letter >= "N"
    elif zone is not None:
        number = int(zone)
        if not 1 <= number <= 60:
            raise ValueError(f"`zone` must be a UTM zone number 1-60. Received: zone={zone!r}")
    else:
        zones = np.unique(utm_zone(lat, lon))
        if len(zones) > 1 or (north.any() and not north.all()):
            raise ValueError(f"Points span UTM zones {zones.tolist()} and hemispheres "
                             f"{sorted({'N' if v else 'S' for v in north})}; all points of a "
                             "split must lie in one zone (give UTM easting/northing instead).")
        number = int(zones[0])
    if northern is None:
        if north.any() and not north.all():
            raise ValueError("Points lie on both sides of the equator: give a zone label such as "
                             "'37M' to project them all into one hemisphere's coordinates.")
        northern = bool(north.all())
    x, y = _transverse_mercator(lat, lon, 6 * number - 183)
    easting = x + _FALSE_EASTING
    northing = y + (0.0 if northern else _FALSE_NORTHING_SOUTH)
    return easting, northing, number, "N" if northern else "S"


def utm_to_latlon(easting, northing, zone):
    """UTM easting/northing (metres) in zone `zone` -> WGS84 (latitude, longitude) in degrees.

    Args:
        easting, northing: metres (scalars or arrays of the same shape); NaN gives NaN.
        zone: a zone label such as `"17T"` (its band letter gives the hemisphere).

    Returns:
        `(latitude, longitude)` float64 arrays of the inputs' shape.

    Example:
    >>> lat, lon = utm_to_latlon(444140.54, 3684706.36, "38S")   # GeographicLib's GeoConvert example
    >>> round(float(lat), 6), round(float(lon), 6)
    (33.3, 44.4)
    """
    number, letter = parse_utm_zone(zone)
    x = np.asarray(easting, np.float64) - _FALSE_EASTING
    y = np.asarray(northing, np.float64) - (0.0 if letter >= "N" else _FALSE_NORTHING_SOUTH)
    if x.shape != y.shape:
        raise ValueError(f"Need one northing per easting: shapes {x.shape} and {y.shape}.")
    lat, lon = _inverse_transverse_mercator(x, y, 6 * number - 183)
    return lat, (lon + 180) % 360 - 180


def check_zone_fits(positions, zone, where="the positions"):
    """Refuses a zone label that cannot be the one of `positions` (before any work uses it).

    Converts the known positions (NaN rows are unknown) back to latitude/longitude with `zone`
    and requires them within `BAND_SLACK_DEG` of the label's latitude band and within
    `MERIDIAN_SLACK_DEG` of its central meridian. This catches a hemisphere letter written in
    place of the band (`"17N"` for Pittsburgh, whose band is T; `"56S"` meant as "south" for
    Sydney, whose band is H) and eastings/northings that are not UTM metres at all. A wrong zone
    number cannot be seen from UTM positions alone: every zone's coordinates look alike.

    Returns:
        the canonical label (`"17T"`).
    """
    number, letter = parse_utm_zone(zone)
    label = f"{number}{letter}"
    positions = np.asarray(positions, np.float64).reshape(-1, 2)
    known = positions[np.isfinite(positions).all(axis=1)]
    if not len(known):
        return label
    lat, lon = utm_to_latlon(known[:, 0], known[:, 1], label)
    south, north = _band_range(letter)
    offset = (lon - (6 * number - 183) + 180) % 360 - 180
    bad = ~((lat >= south - BAND_SLACK_DEG) & (lat <= north + BAND_SLACK_DEG)
            & (np.abs(offset) <= MERIDIAN_SLACK_DEG))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"UTM zone {label!r} does not fit {where}: band {letter} covers "
            f"{_degrees(south)}-{_degrees(north)}, but ({known[i, 0]:.1f}, {known[i, 1]:.1f}) "
            f"converts to latitude {lat[i]:.2f}, longitude {lon[i]:.2f} in zone {label}. The "
            "letter is the latitude band of the positions (C-M south of the equator, N-X north), "
            f"not a hemisphere{_suggest(known[i], number)}"
        )
    return label


def _degrees(lat):
    return f"{abs(lat)}°{'S' if lat < 0 else 'N'}"


def _suggest(position, number):
    """'; did you mean ...?': the labels that would put `position` inside its own band."""
    labels = []
    for letter, hemisphere in (("N", "northern"), ("M", "southern")):
        lat, lon = utm_to_latlon(position[0], position[1], f"{number}{letter}")
        offset = (float(lon) - (6 * number - 183) + 180) % 360 - 180
        if abs(float(lat)) <= 84 and abs(offset) <= MERIDIAN_SLACK_DEG:
            labels.append(f"'{number}{latitude_band(float(lat))}' ({hemisphere} hemisphere)")
    return f"; did you mean {' or '.join(labels)}?" if labels else "."
