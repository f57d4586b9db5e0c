"""Split files: NetVLAD `dbStruct` `.mat` (read and write), CSV manifests and `@`-named folders.

Pure NumPy/SciPy. The readers take the class to build (`PlaceSplit`) as their first argument, so
this module does not import `tf_netvlad.data.places`; use them through `PlaceSplit.from_mat`,
`from_csv`, `from_folder` or `places.load_split`.
"""

import csv
import io
import math
import os
import re
from pathlib import Path

import numpy as np

from tf_netvlad.data.fileio import atomic_path
from tf_netvlad.data.utm import latlon_to_utm
from tf_netvlad.defaults import NON_TRIV_POS_DIST_SQ_THR_M2, POS_DIST_THR_M

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


def read_mat(cls, path, root=None, name=None):
    import scipy.io
    from scipy.io.matlab import matfile_version

    path = Path(path)
    if matfile_version(str(path)) == (2, 0):
        raise ValueError(
            f"{str(path)!r} is a MATLAB v7.3 (HDF5) file, which scipy cannot read. Re-save it "
            "as v7 in MATLAB/Octave: `load(in); save(out, 'dbStruct', '-v7')`.")
    mat = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=True)
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
    return cls(
        name=name or path.stem,
        db_paths=db_paths, db_utm=_mat_utm(fields["utmDb"], len(db_paths), "utmDb"),
        query_paths=q_paths, query_utm=_mat_utm(fields["utmQ"], len(q_paths), "utmQ"),
        db_timestamps=times.get("dbTimeStamp"), query_timestamps=times.get("qTimeStamp"),
        pos_dist_thr=pos_thr,
        non_triv_pos_dist_sq_thr=_mat_scalar(fields, "nonTrivPosDistSqThr",
                                             NON_TRIV_POS_DIST_SQ_THR_M2),
        root=os.fspath(root) if root is not None else str(path.parent))


def _cell(strings):
    cell = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cell[i, 0] = s
    return cell


def write_mat(split, path, which_set=None):
    """Write `split` as a MAT v5 `dbStruct` in the official field order.

    Pittsburgh order (10 fields), or TokyoTM order (12 fields) when the split has time stamps,
    so both `PlaceSplit.from_mat` and the positional readers of the PyTorch ports read it.
    `which_set` defaults to the last `_`-separated part of `split.name` (e.g. "test").
    """
    import scipy.io

    values = {
        "whichSet": which_set or split.name.rsplit("_", 1)[-1],
        "dbImageFns": _cell(split.db_paths),
        "utmDb": np.ascontiguousarray(split.db_utm.T),
        "qImageFns": _cell(split.query_paths),
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



# ----------------------------------------------------------------------- CSV
def read_csv(cls, path, root=None, name=None, **thresholds):
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"CSV manifest {str(path)!r} is empty.") from None
        rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    col = {h: i for i, h in enumerate(header)}
    if {"easting", "northing"} <= col.keys():
        xy_cols, geo = ("easting", "northing"), False
    elif {"latitude", "longitude"} <= col.keys():
        xy_cols, geo = ("latitude", "longitude"), True
    else:
        raise ValueError(f"CSV manifest {str(path)!r}: header must have columns `path, role, "
                         f"easting, northing` or `path, role, latitude, longitude`; found "
                         f"{header}.")
    for required in ("path", "role"):
        if required not in col:
            raise ValueError(f"CSV manifest {str(path)!r}: missing column {required!r}; "
                             f"found {header}.")
    has_ts, has_cond = "timestamp" in col, "conditions" in col
    sides = {"db": ([], [], [], []), "query": ([], [], [], [])}
    for line, row in rows:
        def field(key):
            i = col[key]
            if i >= len(row):
                raise ValueError(f"{str(path)!r} line {line}: missing value for {key!r} "
                                 f"(row has {len(row)} columns, header has {len(header)}).")
            return row[i].strip()
        role = field("role").lower()
        if role not in sides:
            raise ValueError(f"{str(path)!r} line {line}: role must be 'db' or 'query', "
                             f"received {role!r}.")
        try:
            xy = [float(field(c)) for c in xy_cols]
            ts = int(field("timestamp")) if has_ts else None
        except ValueError as err:
            if "line" in str(err):
                raise
            raise ValueError(f"{str(path)!r} line {line}: could not parse "
                             f"{[field(c) for c in xy_cols]} / timestamp as numbers "
                             f"({err}).") from None
        if not all(map(math.isfinite, xy)):
            raise ValueError(f"{str(path)!r} line {line}: non-finite coordinate {xy}.")
        if not field("path"):
            raise ValueError(f"{str(path)!r} line {line}: empty path.")
        paths, coords, stamps, conds = sides[role]
        paths.append(field("path"))
        coords.append(xy)
        stamps.append(ts)
        conds.append(field("conditions") if has_cond and col["conditions"] < len(row) else "")
    if not sides["db"][0]:
        raise ValueError(f"CSV manifest {str(path)!r} has no rows with role 'db'.")
    utm = {}
    if geo:
        all_xy = np.array(sides["db"][1] + sides["query"][1], np.float64).reshape(-1, 2)
        e, n, _, _ = latlon_to_utm(all_xy[:, 0], all_xy[:, 1])
        en = np.stack([e, n], axis=1)
        utm["db"], utm["query"] = en[:len(sides["db"][1])], en[len(sides["db"][1]):]
    else:
        for role, (_, coords, _, _) in sides.items():
            utm[role] = np.array(coords, np.float64).reshape(-1, 2)
    return cls(
        name=name or path.stem, db_paths=sides["db"][0], db_utm=utm["db"],
        query_paths=sides["query"][0], query_utm=utm["query"],
        db_timestamps=sides["db"][2] if has_ts else None,
        query_timestamps=sides["query"][2] if has_ts else None,
        query_conditions=sides["query"][3] if has_cond else None,
        root=os.fspath(root) if root is not None else str(path.parent), **thresholds)


def write_csv(split, path):
    """Write `split` as a CSV manifest (`path, role, easting, northing[, timestamp]
    [, conditions]`) that `PlaceSplit.from_csv` reads back exactly."""
    header = ["path", "role", "easting", "northing"]
    if split.has_timestamps:
        header.append("timestamp")
    if split.query_conditions is not None:
        header.append("conditions")

    def rows():
        for role, paths, utm, ts in (("db", split.db_paths, split.db_utm, split.db_timestamps),
                                     ("query", split.query_paths, split.query_utm,
                                      split.query_timestamps)):
            for i, p in enumerate(paths):
                row = [p, role, repr(float(utm[i, 0])), repr(float(utm[i, 1]))]
                if ts is not None:
                    row.append(str(int(ts[i])))
                if split.query_conditions is not None:
                    row.append(split.query_conditions[i] if role == "query" else "")
                yield row

    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows())

    _atomic_write(path, write, binary=False)
    return Path(path)


# -------------------------------------------------------------------- folders
def parse_utm_filename(filename):
    """Parse `@utm_east@utm_north@zone@letter@lat@lon@pano@tile@heading@pitch@roll@height@
    timestamp@note@.jpg` (VPR-datasets-downloader). Returns (easting, northing, zone, timestamp)
    where zone is a string like "17T" (or "") and timestamp an int or None."""
    fields = os.path.basename(filename).split("@")
    try:
        easting, northing = float(fields[1]), float(fields[2])
    except (IndexError, ValueError):
        raise ValueError(f"Image name {filename!r} does not follow the "
                         "@utm_east@utm_north@zone@letter@lat@lon@...@.jpg convention.") from None
    zone = "".join(fields[3:5]) if len(fields) > 5 else ""
    stamp = fields[13] if len(fields) > 14 else ""
    digits = re.sub(r"\D", "", stamp)
    return easting, northing, zone, int(digits) if digits else None


def list_images(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Image folder {str(folder)!r} does not exist.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"Image folder {str(folder)!r} contains no .jpg/.jpeg/.png images.")
    return files


def read_folder(cls, db_dir, query_dir, root=None, name=None, **thresholds):
    db_files, q_files = list_images(db_dir), list_images(query_dir)
    root = Path(root) if root is not None else Path(os.path.commonpath(
        [Path(db_dir).resolve(), Path(query_dir).resolve()]))
    parsed = {}
    for role, files in (("db", db_files), ("query", q_files)):
        rows = [parse_utm_filename(f.name) for f in files]
        rel = [os.path.relpath(f.resolve(), root.resolve()) for f in files]
        parsed[role] = (rel, np.array([r[:2] for r in rows], np.float64), rows)
    zones = {r[2] for role in parsed for r in parsed[role][2] if r[2]}
    if len(zones) > 1:
        raise ValueError(f"Images in {os.fspath(db_dir)!r} / {os.fspath(query_dir)!r} span "
                         f"several UTM zones {sorted(zones)}; a split must lie in one zone.")
    stamps = [r[3] for role in parsed for r in parsed[role][2]]
    use_ts = all(s is not None for s in stamps)
    ts = {role: [r[3] for r in parsed[role][2]] if use_ts else None for role in parsed}
    return cls(name=name or Path(db_dir).resolve().parent.name,
               db_paths=parsed["db"][0], db_utm=parsed["db"][1],
               query_paths=parsed["query"][0], query_utm=parsed["query"][1],
               db_timestamps=ts["db"], query_timestamps=ts["query"], root=str(root),
               **thresholds)
