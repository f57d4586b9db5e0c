"""Ground truth for place recognition: image lists, metric positions and positives.

Pure NumPy/SciPy (no TensorFlow). A `PlaceSplit` is read from the official NetVLAD
`dbStruct` `.mat` files (Pittsburgh, Tokyo 24/7, TokyoTM), from a CSV manifest, or from a
VPR-datasets-downloader folder (`@utm_east@utm_north@zone@letter@lat@lon@...@.jpg` names).
Positives are radius searches on UTM coordinates with a KD-tree.
"""

import csv
import dataclasses
import functools
import io
import math
import os
import re
from pathlib import Path

import numpy as np

from tf_netvlad.fileio import atomic_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# Official dbStruct field order (Pittsburgh / Tokyo 24/7); TokyoTM inserts the time stamps.
_MAT_FIELDS = ("whichSet", "dbImageFns", "utmDb", "qImageFns", "utmQ", "numImages",
               "numQueries", "posDistThr", "posDistSqThr", "nonTrivPosDistSqThr")
_MAT_FIELDS_TM = ("whichSet", "dbImageFns", "utmDb", "dbTimeStamp", "qImageFns", "utmQ",
                  "qTimeStamp", "numImages", "numQueries", "posDistThr", "posDistSqThr",
                  "nonTrivPosDistSqThr")
_MAT_REQUIRED = ("dbImageFns", "utmDb", "qImageFns", "utmQ")


def _as_paths(value, what):
    paths = tuple(str(p) for p in np.asarray(value, dtype=object).reshape(-1))
    if any(not p for p in paths):
        raise ValueError(f"`{what}` contains an empty path.")
    return paths


def _as_utm(value, n, what):
    utm = np.array(value, dtype=np.float64)
    if utm.ndim != 2 or utm.shape[1] != 2:
        raise ValueError(f"`{what}` must have shape (N, 2) (easting, northing), "
                         f"received shape {utm.shape}.")
    if utm.shape[0] != n:
        raise ValueError(f"`{what}` has {utm.shape[0]} rows but there are {n} image paths.")
    if not np.all(np.isfinite(utm)):
        raise ValueError(f"`{what}` contains non-finite coordinates.")
    utm.setflags(write=False)
    return utm


def _as_timestamps(value, n, what):
    if value is None:
        return None
    ts = np.asarray(value).reshape(-1)
    if ts.shape[0] != n:
        raise ValueError(f"`{what}` has {ts.shape[0]} entries but there are {n} images.")
    if ts.dtype.kind == "f" and not np.all(ts == np.round(ts)):
        raise ValueError(f"`{what}` must hold integers, received non-integer values.")
    ts = ts.astype(np.int64)
    ts.setflags(write=False)
    return ts


@dataclasses.dataclass(frozen=True, eq=False)
class PlaceSplit:
    """One split (database + queries) of a place-recognition dataset with metric positions.

    Args:
        name: split name, e.g. `"pitts30k_test"`.
        db_paths: database image paths, relative to `root` (sequence of str, length N_db).
        db_utm: float64 (N_db, 2) UTM easting, northing in metres.
        query_paths: query image paths, relative to `root` (length N_q).
        query_utm: float64 (N_q, 2) UTM easting, northing in metres.
        db_timestamps, query_timestamps: optional int arrays (TokyoTM style capture times).
            When present, `non_trivial_positives` skips db images taken at the query's time.
        pos_dist_thr: radius in metres of the positives used for evaluation (25).
        non_triv_pos_dist_sq_thr: squared radius in m² of training positives (100 = 10 m).
        root: optional default image root that the relative paths are joined to.
        query_conditions: optional per-query condition strings (e.g. `"night;winter"`).

    Example:
        >>> split = PlaceSplit("toy", ["a.jpg", "b.jpg"], [[0, 0], [100, 0]],
        ...                    ["q.jpg"], [[3, 4]])
        >>> [p.tolist() for p in split.positives()]
        [[0]]
    """

    name: str
    db_paths: tuple
    db_utm: np.ndarray = dataclasses.field(repr=False)
    query_paths: tuple = dataclasses.field(repr=False)
    query_utm: np.ndarray = dataclasses.field(repr=False)
    db_timestamps: np.ndarray = dataclasses.field(default=None, repr=False)
    query_timestamps: np.ndarray = dataclasses.field(default=None, repr=False)
    pos_dist_thr: float = 25.0
    non_triv_pos_dist_sq_thr: float = 100.0
    root: str = None
    query_conditions: tuple = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        put = functools.partial(object.__setattr__, self)
        put("name", str(self.name))
        put("db_paths", _as_paths(self.db_paths, "db_paths"))
        put("query_paths", _as_paths(self.query_paths, "query_paths"))
        if not self.db_paths:
            raise ValueError(f"Split {self.name!r}: `db_paths` is empty; a split needs "
                             "at least one database image.")
        put("db_utm", _as_utm(self.db_utm, len(self.db_paths), "db_utm"))
        put("query_utm", _as_utm(self.query_utm, len(self.query_paths), "query_utm"))
        put("db_timestamps", _as_timestamps(self.db_timestamps, self.num_db, "db_timestamps"))
        put("query_timestamps",
            _as_timestamps(self.query_timestamps, self.num_queries, "query_timestamps"))
        if (self.db_timestamps is None) != (self.query_timestamps is None):
            raise ValueError("`db_timestamps` and `query_timestamps` must be given together, "
                             f"received db={self.db_timestamps is not None}, "
                             f"query={self.query_timestamps is not None}.")
        for arg in ("pos_dist_thr", "non_triv_pos_dist_sq_thr"):
            value = float(getattr(self, arg))
            if not value > 0 or not math.isfinite(value):
                raise ValueError(f"`{arg}` must be a positive number, received {value!r}.")
            put(arg, value)
        if self.root is not None:
            put("root", os.fspath(self.root))
        if self.query_conditions is not None:
            cond = tuple(str(c) for c in self.query_conditions)
            if len(cond) != self.num_queries:
                raise ValueError(f"`query_conditions` has {len(cond)} entries but there are "
                                 f"{self.num_queries} queries.")
            put("query_conditions", cond)

    # ------------------------------------------------------------------ basics
    @property
    def num_db(self):
        return len(self.db_paths)

    @property
    def num_queries(self):
        return len(self.query_paths)

    @property
    def has_timestamps(self):
        return self.db_timestamps is not None

    def _join(self, paths, root):
        root = self.root if root is None else os.fspath(root)
        if root is None:
            raise ValueError(f"Split {self.name!r} has no image root: pass `root=`.")
        return [os.path.join(root, p) for p in paths]

    def db_image_paths(self, root=None):
        """Database image paths joined to `root` (default: `self.root`)."""
        return self._join(self.db_paths, root)

    def query_image_paths(self, root=None):
        """Query image paths joined to `root` (default: `self.root`)."""
        return self._join(self.query_paths, root)

    def subset_queries(self, idx):
        """A split with only the queries `idx` (int indices or boolean mask); db unchanged."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (self.num_queries,):
                raise ValueError(f"Boolean query mask must have shape ({self.num_queries},), "
                                 f"received {idx.shape}.")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.num_queries or idx.max() >= self.num_queries):
            raise IndexError(f"Query indices must be in [0, {self.num_queries}), received "
                             f"min {idx.min()}, max {idx.max()}.")
        pick = lambda seq: None if seq is None else [seq[i] for i in idx]  # noqa: E731
        return dataclasses.replace(
            self, query_paths=pick(self.query_paths), query_utm=self.query_utm[idx],
            query_timestamps=None if self.query_timestamps is None else self.query_timestamps[idx],
            query_conditions=pick(self.query_conditions))

    # ------------------------------------------------------------- positives
    @functools.cached_property
    def _db_tree(self):
        from scipy.spatial import cKDTree
        return cKDTree(self.db_utm)

    def _radius_search(self, radius):
        """(flat db ids, flat squared distances, per-query counts), sorted by distance."""
        hits = self._db_tree.query_ball_point(self.query_utm, r=radius, workers=-1)
        counts = np.fromiter((len(h) for h in hits), np.int64, count=len(hits))
        flat = np.fromiter((i for h in hits for i in h), np.int64, count=int(counts.sum()))
        qid = np.repeat(np.arange(self.num_queries), counts)
        d2 = np.sum((self.db_utm[flat] - self.query_utm[qid]) ** 2, axis=1)
        order = np.lexsort((flat, d2, qid))
        return flat[order], d2[order], qid[order], counts

    def positives(self, radius=None):
        """Db indices within `radius` metres (default `pos_dist_thr`) of each query.

        Returns a list of `num_queries` int64 arrays, each sorted by distance (ties by index).
        """
        radius = self.pos_dist_thr if radius is None else float(radius)
        if not radius >= 0:
            raise ValueError(f"`radius` must be >= 0, received {radius!r}.")
        flat, _, _, counts = self._radius_search(radius)
        return np.split(flat, np.cumsum(counts)[:-1]) if self.num_queries else []

    def non_trivial_positives(self, exclude_trivial_m2=None, exclude_same_timestamp=True):
        """Training positives: db images with d² <= `non_triv_pos_dist_sq_thr`.

        Args:
            exclude_trivial_m2: also drop db images with d² <= this many m². The MATLAB code
                uses 1.0; Nanne/pytorch-NetVlad and the benchmark use no exclusion (None).
            exclude_same_timestamp: drop db images whose time stamp equals the query's
                (TokyoTM rule), when the split has time stamps.

        Returns a list of int64 arrays sorted by distance.
        """
        thr = self.non_triv_pos_dist_sq_thr
        flat, d2, qid, _ = self._radius_search(math.sqrt(thr) * (1 + 1e-9))
        keep = d2 <= thr
        if exclude_trivial_m2 is not None:
            keep &= d2 > float(exclude_trivial_m2)
        if exclude_same_timestamp and self.has_timestamps:
            keep &= self.db_timestamps[flat] != self.query_timestamps[qid]
        counts = np.bincount(qid[keep], minlength=self.num_queries)
        return np.split(flat[keep], np.cumsum(counts)[:-1]) if self.num_queries else []

    def queries_without_positives(self, radius=None):
        """Indices (int64) of queries with no db image within `radius` (default 25 m)."""
        radius = self.pos_dist_thr if radius is None else float(radius)
        if not self.num_queries:
            return np.zeros(0, np.int64)
        counts = self._db_tree.query_ball_point(self.query_utm, r=radius, workers=-1,
                                                return_length=True)
        return np.flatnonzero(np.asarray(counts) == 0).astype(np.int64)

    def same_timestamp_db(self):
        """Per query, the db indices taken at the query's time stamp (TokyoTM evaluation drops
        them from the ranking). Empty arrays when the split has no time stamps."""
        if not self.has_timestamps:
            return [np.zeros(0, np.int64) for _ in range(self.num_queries)]
        order = np.argsort(self.db_timestamps, kind="stable")
        sorted_ts = self.db_timestamps[order]
        lo = np.searchsorted(sorted_ts, self.query_timestamps, side="left")
        hi = np.searchsorted(sorted_ts, self.query_timestamps, side="right")
        return [np.sort(order[a:b]) for a, b in zip(lo, hi)]

    def summary(self):
        """A dict of counts and radii to log (see also `describe()`)."""
        n_pos = np.array([len(p) for p in self.positives()], np.int64)
        n_triv = np.array([len(p) for p in self.non_trivial_positives()], np.int64)
        return {
            "name": self.name,
            "num_db": self.num_db,
            "num_queries": self.num_queries,
            "pos_dist_thr_m": self.pos_dist_thr,
            "non_triv_pos_dist_thr_m": math.sqrt(self.non_triv_pos_dist_sq_thr),
            "queries_without_positives": int(np.sum(n_pos == 0)),
            "queries_without_non_trivial_positives": int(np.sum(n_triv == 0)),
            "mean_positives_per_query": float(n_pos.mean()) if n_pos.size else 0.0,
            "has_timestamps": self.has_timestamps,
            "root": self.root,
        }

    def describe(self):
        """One-line human-readable summary."""
        s = self.summary()
        return (f"{s['name']}: {s['num_db']} db, {s['num_queries']} queries; "
                f"{s['queries_without_positives']} queries without a positive within "
                f"{s['pos_dist_thr_m']:g} m, {s['queries_without_non_trivial_positives']} without "
                f"one within {s['non_triv_pos_dist_thr_m']:g} m; "
                f"{s['mean_positives_per_query']:.1f} positives per query on average")

    # ----------------------------------------------------------------- readers
    @classmethod
    def from_mat(cls, path, root=None, name=None):
        """Read a NetVLAD `dbStruct` .mat file (MAT v5/v7) by field name."""
        return _read_mat(cls, path, root=root, name=name)

    @classmethod
    def from_csv(cls, path, root=None, name=None, pos_dist_thr=25.0,
                 non_triv_pos_dist_sq_thr=100.0):
        """Read a CSV manifest with columns `path, role, easting, northing` (or
        `path, role, latitude, longitude`), optional `timestamp` and `conditions`."""
        return _read_csv(cls, path, root=root, name=name, pos_dist_thr=pos_dist_thr,
                         non_triv_pos_dist_sq_thr=non_triv_pos_dist_sq_thr)

    @classmethod
    def from_folder(cls, db_dir, query_dir, root=None, name=None, pos_dist_thr=25.0,
                    non_triv_pos_dist_sq_thr=100.0):
        """Read VPR-datasets-downloader folders of `@utm_east@utm_north@...@.jpg` images."""
        return _read_folder(cls, db_dir, query_dir, root=root, name=name,
                            pos_dist_thr=pos_dist_thr,
                            non_triv_pos_dist_sq_thr=non_triv_pos_dist_sq_thr)


def load_split(path, root=None, **kwargs):
    """Load a `PlaceSplit` from a `.mat` dbStruct, a `.csv` manifest or a folder.

    A folder must contain `database/` and `queries/` subfolders of `@`-named images. `root`
    defaults to the directory holding the file (the folder itself for folders).
    """
    path = Path(path)
    if path.is_dir():
        db_dir, q_dir = path / "database", path / "queries"
        if not (db_dir.is_dir() and q_dir.is_dir()):
            raise ValueError(f"Folder {str(path)!r} must contain `database/` and `queries/` "
                             "subfolders of @utm_east@utm_north@...@.jpg images.")
        return PlaceSplit.from_folder(db_dir, q_dir, root=root, **kwargs)
    if not path.exists():
        raise FileNotFoundError(f"Split file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return PlaceSplit.from_mat(path, root=root, **kwargs)
    if suffix == ".csv":
        return PlaceSplit.from_csv(path, root=root, **kwargs)
    raise ValueError(f"Cannot load a split from {str(path)!r}: expected a .mat dbStruct, a "
                     ".csv manifest or a folder with database/ and queries/, "
                     f"received suffix {suffix!r}.")


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


def _read_mat(cls, path, root=None, name=None):
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
        sq = _mat_scalar(fields, "posDistSqThr", 625.0)
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
        non_triv_pos_dist_sq_thr=_mat_scalar(fields, "nonTrivPosDistSqThr", 100.0),
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
    data[:116] = b"MATLAB 5.0 MAT-file, written by tf_netvlad.places".ljust(116, b" ")
    _atomic_write(path, lambda f: f.write(bytes(data)), binary=True)
    return Path(path)


def _atomic_write(path, write_fn, binary):
    with atomic_path(path, Path(path).suffix) as tmp:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write_fn(f)


# ----------------------------------------------------------------------- CSV
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


def _read_csv(cls, path, root=None, name=None, **thresholds):
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


def _list_images(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Image folder {str(folder)!r} does not exist.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"Image folder {str(folder)!r} contains no .jpg/.jpeg/.png images.")
    return files


def _read_folder(cls, db_dir, query_dir, root=None, name=None, **thresholds):
    db_files, q_files = _list_images(db_dir), _list_images(query_dir)
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
