"""Split files: NetVLAD `dbStruct` `.mat` (read and write), CSV manifests and `@`-named folders.

Pure NumPy/SciPy. The readers take the class to build (`PlaceSplit`) as their first argument, so
this module does not import `tf_netvlad.data.places`; use them through `PlaceSplit.from_mat`,
`from_csv`, `from_folder` or `places.load_split`.
"""

import collections
import csv
import io
import logging
import math
import os
import re
from pathlib import Path

import numpy as np

from tf_netvlad.data import utm
from tf_netvlad.data.fileio import atomic_path
from tf_netvlad.defaults import NON_TRIV_POS_DIST_SQ_THR_M2, POS_DIST_THR_M

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# Official dbStruct field order (Pittsburgh / Tokyo 24/7); TokyoTM inserts the time stamps.
_MAT_FIELDS = ("whichSet", "dbImageFns", "utmDb", "qImageFns", "utmQ", "numImages",
               "numQueries", "posDistThr", "posDistSqThr", "nonTrivPosDistSqThr")
_MAT_FIELDS_TM = ("whichSet", "dbImageFns", "utmDb", "dbTimeStamp", "qImageFns", "utmQ",
                  "qTimeStamp", "numImages", "numQueries", "posDistThr", "posDistSqThr",
                  "nonTrivPosDistSqThr")
_MAT_REQUIRED = ("dbImageFns", "utmDb", "qImageFns", "utmQ")


# ---------------------------------------------------------------------- .mat
def _mat_strings(value, field):
    arr = np.asarray(value, dtype=object).reshape(-1)
    out = []
    for item in arr:
        while isinstance(item, np.ndarray):
            if item.size != 1:
                if item.dtype.kind in "US":
                    item = "".join(str(c) for c in item.reshape(-1))
                    break
                raise ValueError(f"dbStruct field {field!r}: expected a cell array of "
                                 f"strings, found an element of shape {item.shape}.")
            item = item.reshape(-1)[0]
        out.append(str(item).strip())
    return out


def _mat_utm(value, n, field):
    utm = np.asarray(value, dtype=np.float64)
    if utm.size == 0 and n == 0:
        return np.zeros((0, 2))
    if utm.ndim == 1 and utm.size == 2:
        utm = utm.reshape(2, 1)
    if utm.ndim != 2 or 2 not in utm.shape:
        raise ValueError(f"dbStruct field {field!r} must be 2×N or N×2, received shape "
                         f"{utm.shape}.")
    if utm.shape[0] == 2 and utm.shape[1] == n:
        return utm.T
    if utm.shape == (n, 2):
        return utm
    raise ValueError(f"dbStruct field {field!r} has shape {utm.shape}, which does not match "
                     f"the {n} image names.")


def _mat_scalar(fields, key, default):
    if key not in fields:
        return default
    return float(np.asarray(fields[key], dtype=np.float64).reshape(-1)[0])


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_RESAVE_V7 = "re-save it as v7 in MATLAB/Octave: `load(in); save(out, 'dbStruct', '-v7')`"


def _check_mat_header(path):
    """Refuses, naming the file and the cause, what scipy cannot read as a MAT v4/v5/v7 file."""
    from scipy.io.matlab import matfile_version

    with open(path, "rb") as f:
        head = f.read(520)
    if not head:
        raise ValueError(f"{str(path)!r} is empty (0 bytes), not a MATLAB .mat file.")
    hdf5 = head.startswith(_HDF5_SIGNATURE) or head[512:520] == _HDF5_SIGNATURE
    if head.startswith(b"MATLAB 7.3 MAT-file") or (hdf5 and head.startswith(b"MATLAB")):
        raise ValueError(f"{str(path)!r} is a MATLAB v7.3 (HDF5) file, which scipy cannot read; "
                         f"{_RESAVE_V7}.")
    if hdf5:
        raise ValueError(f"{str(path)!r} is a plain HDF5 file, not a MATLAB .mat file; if MATLAB "
                         f"wrote it with -v7.3, {_RESAVE_V7}.")
    try:
        version = matfile_version(str(path))
    except Exception as err:  # scipy raises ValueError, MatReadError, IndexError... on bad bytes
        raise ValueError(f"{str(path)!r} is not a MATLAB .mat file ({err}).") from None
    if version == (2, 0):
        raise ValueError(f"{str(path)!r} is a MATLAB v7.3 (HDF5) file, which scipy cannot read; "
                         f"{_RESAVE_V7}.")


def read_mat(cls, path, root=None, name=None):
    import scipy.io

    path = Path(path)
    _check_mat_header(path)
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=True)
    except Exception as err:  # truncated or corrupt: OSError, IndexError, ValueError, zlib.error...
        raise ValueError(f"{str(path)!r} could not be read as a MATLAB .mat file: it is truncated "
                         f"or corrupt ({type(err).__name__}: {err}).") from None
    if "dbStruct" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{str(path)!r} has no `dbStruct` variable; found variables {found}.")
    struct = mat["dbStruct"]
    names = struct.dtype.names or ()
    fields = {n: struct[n].reshape(-1)[0] for n in names}
    missing = [f for f in _MAT_REQUIRED if f not in fields]
    if missing:
        raise ValueError(f"{str(path)!r}: dbStruct is missing field(s) {missing}; fields "
                         f"found: {list(names)}.")
    db_paths = _mat_strings(fields["dbImageFns"], "dbImageFns")
    q_paths = _mat_strings(fields["qImageFns"], "qImageFns")
    for key, n in (("numImages", len(db_paths)), ("numQueries", len(q_paths))):
        if key in fields and int(_mat_scalar(fields, key, n)) != n:
            raise ValueError(f"{str(path)!r}: {key} = {int(_mat_scalar(fields, key, n))} but "
                             f"the file lists {n} image names.")
    pos_thr = _mat_scalar(fields, "posDistThr", None)
    if pos_thr is None:
        sq = _mat_scalar(fields, "posDistSqThr", POS_DIST_THR_M**2)
        pos_thr = math.sqrt(sq)
    times = {}
    for key in ("dbTimeStamp", "qTimeStamp"):
        if key in fields:
            times[key] = np.asarray(fields[key], dtype=np.float64).reshape(-1)
    zone = _mat_strings(fields["utmZone"], "utmZone")[0] if "utmZone" in fields else None
    return cls(
        name=name or path.stem,
        db_paths=db_paths, db_utm=_mat_utm(fields["utmDb"], len(db_paths), "utmDb"),
        query_paths=q_paths, query_utm=_mat_utm(fields["utmQ"], len(q_paths), "utmQ"),
        db_timestamps=times.get("dbTimeStamp"), query_timestamps=times.get("qTimeStamp"),
        pos_dist_thr=pos_thr,
        non_triv_pos_dist_sq_thr=_mat_scalar(fields, "nonTrivPosDistSqThr",
                                             NON_TRIV_POS_DIST_SQ_THR_M2),
        root=os.fspath(root) if root is not None else str(path.parent), utm_zone=zone or None)


def _cell(strings):
    cell = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cell[i, 0] = s
    return cell


def listed_paths(split):
    """(database names, query names) as the split's source file lists them: `split.db_paths`
    without the folder and suffix its dataset layout added (`tf_netvlad.data.layouts`)."""
    layout = getattr(split, "layout", None)
    if layout is None:
        return list(split.db_paths), list(split.query_paths)
    return ([layout.db.listed(p) for p in split.db_paths],
            [layout.query.listed(p) for p in split.query_paths])


def write_mat(split, path, which_set=None):
    """Write `split` as a MAT v5 `dbStruct` in the official field order.

    Pittsburgh order (10 fields), or TokyoTM order (12 fields) when the split has time stamps,
    so both `PlaceSplit.from_mat` and the positional readers of the PyTorch ports read it. The
    names are written as the source file listed them (`listed_paths`), so a split read from a
    distributed dataset root is written back unchanged. A split with a `utm_zone` gets one more
    field after the official ones, `utmZone` (e.g. '17T'; positional readers never reach it).
    `which_set` defaults to the last `_`-separated part of `split.name` (e.g. "test").
    """
    import scipy.io

    db_names, query_names = listed_paths(split)
    values = {
        "whichSet": which_set or split.name.rsplit("_", 1)[-1],
        "dbImageFns": _cell(db_names),
        "utmDb": np.ascontiguousarray(split.db_utm.T),
        "qImageFns": _cell(query_names),
        "utmQ": np.ascontiguousarray(split.query_utm.T).reshape(2, split.num_queries),
        "numImages": float(split.num_db),
        "numQueries": float(split.num_queries),
        "posDistThr": float(split.pos_dist_thr),
        "posDistSqThr": float(split.pos_dist_thr) ** 2,
        "nonTrivPosDistSqThr": float(split.non_triv_pos_dist_sq_thr),
    }
    order = _MAT_FIELDS
    if split.has_timestamps:
        values["dbTimeStamp"] = split.db_timestamps.astype(np.float64).reshape(1, -1)
        values["qTimeStamp"] = split.query_timestamps.astype(np.float64).reshape(1, -1)
        order = _MAT_FIELDS_TM
    if getattr(split, "utm_zone", None):
        values["utmZone"] = split.utm_zone
        order = order + ("utmZone",)
    struct = {key: values[key] for key in order}
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"dbStruct": struct}, format="5", do_compression=False)
    data = bytearray(buf.getvalue())
    # the 116-byte descriptive header text carries a creation time; make the bytes reproducible
    data[:116] = b"MATLAB 5.0 MAT-file, written by tf_netvlad.data.places".ljust(116, b" ")
    _atomic_write(path, lambda f: f.write(bytes(data)), binary=True)
    return Path(path)


def _atomic_write(path, write_fn, binary):
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

    _atomic_write(path, write, binary=False)
    return Path(path)


# -------------------------------------------------------------------- folders
def parse_at_name(filename):
    """The fields of a VPR-datasets-downloader name, `@utm_east@utm_north@zone_number@zone_letter@
    lat@lon@pano_id@tile_num@heading@pitch@roll@height@timestamp@note@.jpg` (its `util.py`
    `get_dst_image_name`): a dict with easting, northing (float), zone ('17T', or '' if absent),
    lat, lon (float or None) and timestamp (int of its digits, or None)."""
    fields = os.path.basename(filename).split("@")
    try:
        easting, northing = float(fields[1]), float(fields[2])
    except (IndexError, ValueError):
        raise ValueError(f"Image name {filename!r} does not follow the "
                         "@utm_east@utm_north@zone@letter@lat@lon@...@.jpg convention.") from None
    try:
        zone = utm.normalize_utm_zone("".join(fields[3:5])) if len(fields) > 5 else ""
    except ValueError:
        zone = ""
    try:
        lat, lon = float(fields[5]), float(fields[6])
    except (IndexError, ValueError):
        lat = lon = None
    digits = re.sub(r"\D", "", fields[13] if len(fields) > 14 else "")
    return {"easting": easting, "northing": northing, "zone": zone, "lat": lat, "lon": lon,
            "timestamp": int(digits) if digits else None}


def parse_utm_filename(filename):
    """Parse an `@`-name (`parse_at_name`). Returns (easting, northing, zone, timestamp) where zone
    is a string like "17T" (or "") and timestamp an int or None."""
    d = parse_at_name(filename)
    return d["easting"], d["northing"], d["zone"], d["timestamp"]


def list_images(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Image folder {str(folder)!r} does not exist.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"Image folder {str(folder)!r} contains no .jpg/.jpeg/.png images.")
    return files


def _folder_positions(parsed, where, notes):
    """(N, 2) UTM of `parsed` @-names and their zone; names of several zones are re-projected
    into the most common one from their lat/lon, or refused when the names carry none."""
    xy = np.array([[d["easting"], d["northing"]] for d in parsed], np.float64).reshape(-1, 2)
    zones = [d["zone"] for d in parsed]
    known = collections.Counter(z for z in zones if z)
    if not known:
        return xy, None
    keys = {utm.projection_key(z) for z in known}
    zone = known.most_common(1)[0][0]
    if len(keys) == 1:
        notes.append(f"UTM zone {zone} (from the @-names)")
        return xy, zone
    other = [i for i, z in enumerate(zones) if z and utm.projection_key(z) != utm.projection_key(zone)]
    if any(parsed[i]["lat"] is None for i in other):
        raise ValueError(f"{where} span UTM zones {sorted(known)} and the names carry no "
                         "latitude/longitude to re-project them into one zone; split the dataset "
                         "by zone.")
    lat = [parsed[i]["lat"] for i in other]
    lon = [parsed[i]["lon"] for i in other]
    easting, northing, _ = project_latlon(lat, lon, zone)
    xy[other] = np.stack([easting, northing], axis=1)
    notes.append(f"UTM zone {zone} (from the @-names; {len(other)} images of zones "
                 f"{sorted(set(known) - {zone})} re-projected into it from their latitude/longitude)")
    return xy, zone


def read_folder(cls, db_dir, query_dir, root=None, name=None, **thresholds):
    db_files, q_files = list_images(db_dir), list_images(query_dir)
    root = Path(root) if root is not None else Path(os.path.commonpath(
        [Path(db_dir).resolve(), Path(query_dir).resolve()]))
    parsed = [parse_at_name(f.name) for f in db_files + q_files]
    rel = [os.path.relpath(f.resolve(), root.resolve()) for f in db_files + q_files]
    notes = []
    xy, zone = _folder_positions(
        parsed, f"Images in {os.fspath(db_dir)!r} / {os.fspath(query_dir)!r}", notes)
    stamps = [d["timestamp"] for d in parsed]
    use_ts = all(s is not None for s in stamps)
    n_db = len(db_files)
    return cls(name=name or Path(db_dir).resolve().parent.name,
               db_paths=rel[:n_db], db_utm=xy[:n_db], query_paths=rel[n_db:], query_utm=xy[n_db:],
               db_timestamps=stamps[:n_db] if use_ts else None,
               query_timestamps=stamps[n_db:] if use_ts else None, root=str(root),
               utm_zone=zone, notes=tuple(notes), **thresholds)
