"""Split files: CSV manifests (read and write), and what every split file format shares.

Pure NumPy. Shared: the names as a split's source file listed them (`listed_paths`), atomic writes
(`atomic_write`) and latitude/longitude projected into one UTM zone (`project_latlon`). The other
formats are `tf_netvlad.data.dbstruct` (NetVLAD `dbStruct` `.mat`) and
`tf_netvlad.data.image_folders` (`@`-named folders). `read_csv` takes the class to build
(`PlaceSplit`) as its first argument, so this module does not import `tf_netvlad.data.places`; use
it through `PlaceSplit.from_csv` or `split_loading.load_split`.
"""

import collections
import csv
import logging
import math
import os
from pathlib import Path

import numpy as np

from tf_netvlad.data import utm
from tf_netvlad.data.fileio import atomic_path

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------- shared
def listed_paths(split):
    """(database names, query names) as the split's source file lists them: `split.db_paths`
    without the folder and suffix its dataset layout added (`tf_netvlad.data.layouts`)."""
    layout = getattr(split, "layout", None)
    if layout is None:
        return list(split.db_paths), list(split.query_paths)
    return ([layout.db.listed(p) for p in split.db_paths],
            [layout.query.listed(p) for p in split.query_paths])


def atomic_write(path, write_fn, binary):
    """Writes `path` atomically: `write_fn(f)` on a temporary file (binary, or text), then a rename."""
    with atomic_path(path, Path(path).suffix) as tmp:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write_fn(f)


# ------------------------------------------------------------------ UTM zones
def project_latlon(lat_deg, lon_deg, zone=None):
    """WGS84 latitude/longitude (degrees) -> (easting, northing, zone label) in ONE UTM zone.

    `zone` (e.g. '17T') defaults to the zone and band of most points (ties: the first point's).
    Points of neighbouring zones are projected into it too (`utm.latlon_to_utm(..., zone=)`): the
    Krüger series stays accurate far beyond a zone's 6 degrees, and one zone keeps distances
    between all points metric. Raises ValueError for a point outside the UTM range.
    """
    lat = np.asarray(lat_deg, np.float64).reshape(-1)
    lon = np.asarray(lon_deg, np.float64).reshape(-1)
    if zone is None:
        if not lat.size:
            return np.zeros(0), np.zeros(0), None
        bad = ~((np.abs(lat) <= 84) & (np.abs(lon) <= 180))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"Latitude/longitude out of the UTM range (|lat| <= 84, |lon| <= 180): "
                             f"point {i} is ({lat[i]}, {lon[i]}).")
        pairs = zip(utm.utm_zone(lat, lon).tolist(), np.atleast_1d(utm.latitude_band(lat)).tolist())
        zone = "{}{}".format(*collections.Counter(pairs).most_common(1)[0][0])
    zone = utm.normalize_utm_zone(zone)
    easting, northing, _, _ = utm.latlon_to_utm(lat, lon, zone=zone)
    return easting, northing, zone


def _common_zone(zones, where):
    """The one zone of `zones` (strings; '' = unknown), refusing zones that do not share a projection."""
    known = collections.Counter(utm.normalize_utm_zone(z) for z in zones if z)
    if not known:
        return None
    keys = {utm.projection_key(z) for z in known}
    if len(keys) > 1:
        raise ValueError(f"{where} span UTM zones {sorted(known)}: easting/northing of different "
                         "zones cannot be compared; give latitude/longitude instead (projected into "
                         "one zone) or split the dataset by zone.")
    return known.most_common(1)[0][0]


# ----------------------------------------------------------------------- CSV
PATH_COLUMNS = ("path", "image_path", "image", "filename", "file")
UTM_COLUMNS = (("easting", "northing"), ("utm_east", "utm_north"), ("utm_easting", "utm_northing"),
               ("x", "y"))
LATLON_COLUMNS = (("latitude", "longitude"), ("lat", "lon"), ("lat", "lng"))
ROLES = {"db": "db", "database": "db", "query": "query", "queries": "query"}


def _csv_columns(header, path):
    """The columns a manifest uses: {'path', 'role', 'utm', 'geo', 'timestamp', 'conditions',
    'utm_zone'} -> column name(s), by the accepted names (case-insensitive; extra columns ignored)."""
    present = set(header)
    cols = {"path": next((c for c in PATH_COLUMNS if c in present), None),
            "role": "role" if "role" in present else None,
            "utm": next((pair for pair in UTM_COLUMNS if set(pair) <= present), None),
            "geo": next((pair for pair in LATLON_COLUMNS if set(pair) <= present), None)}
    for key in ("timestamp", "conditions", "utm_zone"):
        cols[key] = key if key in present else None
    if cols["path"] is None:
        raise ValueError(f"CSV manifest {str(path)!r}: no image path column (accepted names: "
                         f"{', '.join(PATH_COLUMNS)}); found {header}.")
    if cols["role"] is None:
        raise ValueError(f"CSV manifest {str(path)!r}: missing column 'role' (db or query per row); "
                         f"found {header}.")
    if cols["utm"] is None and cols["geo"] is None:
        accepted = ", ".join("/".join(p) for p in UTM_COLUMNS + LATLON_COLUMNS)
        raise ValueError(f"CSV manifest {str(path)!r}: no coordinate columns; accepted pairs "
                         f"(case-insensitive): {accepted} (UTM metres first, then WGS84 degrees); "
                         f"found {header}.")
    return cols


def _describe_columns(cols, header):
    used = [f"path={cols['path']}", "role=role"]
    if cols["utm"]:
        used.append("easting/northing={}/{}".format(*cols["utm"]))
    if cols["geo"]:
        used.append("latitude/longitude={}/{}".format(*cols["geo"])
                    + (" (for the UTM zone only)" if cols["utm"] else ""))
    used += [f"{k}={cols[k]}" for k in ("timestamp", "conditions", "utm_zone") if cols[k]]
    names = {c for v in cols.values() if v for c in ((v,) if isinstance(v, str) else v)}
    ignored = [h for h in header if h not in names]
    return "columns: " + ", ".join(used) + (f"; ignored: {', '.join(ignored)}" if ignored else "")


def _read_csv_rows(path):
    """(header lower-cased, [(line number, row)]) of a UTF-8 CSV, with or without a BOM."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                header = [h.strip().lower() for h in next(reader)]
            except StopIteration:
                raise ValueError(f"CSV manifest {str(path)!r} is empty.") from None
            rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except UnicodeDecodeError as err:
        raise ValueError(f"CSV manifest {str(path)!r} is not UTF-8 text ({err}); save it as "
                         "'CSV UTF-8'.") from None
    except csv.Error as err:
        raise ValueError(f"CSV manifest {str(path)!r} is not a readable CSV file ({err}).") from None
    return header, rows


def read_csv(cls, path, root=None, name=None, **thresholds):
    path = Path(path)
    header, rows = _read_csv_rows(path)
    cols = _csv_columns(header, path)
    index = {}
    for i, h in enumerate(header):
        index.setdefault(h, i)
    xy_cols = cols["utm"] or cols["geo"]
    sides = {"db": collections.defaultdict(list), "query": collections.defaultdict(list)}
    for line, row in rows:
        def field(key):
            i = index[key]
            if i >= len(row):
                raise ValueError(f"{str(path)!r} line {line}: missing value for {key!r} "
                                 f"(row has {len(row)} columns, header has {len(header)}).")
            return row[i].strip()
        role = ROLES.get(field("role").lower())
        if role is None:
            raise ValueError(f"{str(path)!r} line {line}: role must be 'db' or 'query', "
                             f"received {field('role')!r}.")
        try:
            xy = [float(field(c)) for c in xy_cols]
            geo = [float(field(c)) for c in cols["geo"]] if cols["geo"] and cols["utm"] else None
            ts = int(field("timestamp")) if cols["timestamp"] else None
        except ValueError as err:
            if "line" in str(err):
                raise
            raise ValueError(f"{str(path)!r} line {line}: could not parse "
                             f"{[field(c) for c in xy_cols]} / timestamp as numbers "
                             f"({err}).") from None
        if not all(map(math.isfinite, xy)):
            raise ValueError(f"{str(path)!r} line {line}: non-finite coordinate {xy}.")
        if not field(cols["path"]):
            raise ValueError(f"{str(path)!r} line {line}: empty path.")
        side = sides[role]
        side["paths"].append(field(cols["path"]))
        side["xy"].append(xy)
        side["geo"].append(geo)
        side["ts"].append(ts)
        side["cond"].append(field("conditions") if cols["conditions"] and index["conditions"] < len(row)
                            else "")
        zone = field("utm_zone") if cols["utm_zone"] and index["utm_zone"] < len(row) else ""
        try:
            side["zone"].append(utm.normalize_utm_zone(zone) if zone else "")
        except ValueError as err:
            raise ValueError(f"{str(path)!r} line {line}, column utm_zone: {err}") from None
    if not sides["db"]["paths"]:
        raise ValueError(f"CSV manifest {str(path)!r} has no rows with role 'db'.")
    notes = [_describe_columns(cols, header)]
    utm_xy, zone = _csv_positions(sides, cols, path, notes)
    n_db = len(sides["db"]["paths"])
    query = sides["query"]
    return cls(
        name=name or path.stem, db_paths=sides["db"]["paths"], db_utm=utm_xy[:n_db],
        query_paths=query["paths"], query_utm=utm_xy[n_db:],
        db_timestamps=sides["db"]["ts"] if cols["timestamp"] else None,
        query_timestamps=query["ts"] if cols["timestamp"] else None,
        query_conditions=query["cond"] if cols["conditions"] else None,
        root=os.fspath(root) if root is not None else str(path.parent), utm_zone=zone,
        notes=tuple(notes), **thresholds)


def _csv_positions(sides, cols, path, notes):
    """(N_db + N_q, 2) UTM metres of all rows (db first) and the split's UTM zone (or None)."""
    xy = np.array(sides["db"]["xy"] + sides["query"]["xy"], np.float64).reshape(-1, 2)
    if cols["utm"]:
        zone = _common_zone(sides["db"]["zone"] + sides["query"]["zone"],
                            f"CSV manifest {str(path)!r}: rows")
        if zone:
            utm.check_zone_fits(xy, zone, f"the positions of CSV manifest {str(path)!r}")
            notes.append(f"UTM zone {zone} (column utm_zone)")
        elif cols["geo"]:
            geo = np.array(sides["db"]["geo"] + sides["query"]["geo"], np.float64).reshape(-1, 2)
            zone = project_latlon(geo[:, 0], geo[:, 1])[2]
            notes.append(f"UTM zone {zone} (from the {'/'.join(cols['geo'])} columns)")
        return xy, zone
    try:
        easting, northing, zone = project_latlon(xy[:, 0], xy[:, 1])
    except ValueError as err:
        raise ValueError(f"CSV manifest {str(path)!r}: {err}") from None
    outside = int(np.sum(utm.utm_zone(xy[:, 0], xy[:, 1]) != utm.projection_key(zone)[0]))
    notes.append(f"UTM zone {zone}: {'/'.join(cols['geo'])} projected into it"
                 + (f" ({outside} points of neighbouring zones included)" if outside else ""))
    logger.info("%s: %s", path, notes[-1])
    return np.stack([easting, northing], axis=1), zone


def write_csv(split, path):
    """Write `split` as a CSV manifest (`path, role, easting, northing[, timestamp]
    [, conditions][, utm_zone]`) that `PlaceSplit.from_csv` reads back exactly; the paths are
    the names as the split's source listed them (`listed_paths`)."""
    header = ["path", "role", "easting", "northing"]
    if split.has_timestamps:
        header.append("timestamp")
    if split.query_conditions is not None:
        header.append("conditions")
    zone = getattr(split, "utm_zone", None)
    if zone:
        header.append("utm_zone")
    db_names, query_names = listed_paths(split)

    def rows():
        for role, paths, utm_xy, ts in (("db", db_names, split.db_utm, split.db_timestamps),
                                        ("query", query_names, split.query_utm,
                                         split.query_timestamps)):
            for i, p in enumerate(paths):
                row = [p, role, repr(float(utm_xy[i, 0])), repr(float(utm_xy[i, 1]))]
                if ts is not None:
                    row.append(str(int(ts[i])))
                if split.query_conditions is not None:
                    row.append(split.query_conditions[i] if role == "query" else "")
                if zone:
                    row.append(zone)
                yield row

    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows())

    atomic_write(path, write, binary=False)
    return Path(path)

