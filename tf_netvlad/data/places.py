"""Ground truth for place recognition: image lists, metric positions and positives (`PlaceSplit`).

Pure NumPy/SciPy (no TensorFlow). A `PlaceSplit` is read from the official NetVLAD
`dbStruct` `.mat` files (Pittsburgh, Tokyo 24/7, TokyoTM; `tf_netvlad.data.dbstruct`), from a CSV
manifest (`tf_netvlad.data.split_files`), or from a VPR-datasets-downloader folder
(`@utm_east@utm_north@zone@letter@lat@lon@...@.jpg` names; `tf_netvlad.data.image_folders`).
Positives are radius searches on UTM coordinates with a KD-tree; the radii default to the
reference's 25 m (evaluation) and 10 m (training), `defaults.POS_DIST_THR_M` and
`defaults.NON_TRIV_POS_DIST_SQ_THR_M2`.

`split_loading.load_split` takes the dataset root as its authors ship it and detects where the
database and the query images are under it (`tf_netvlad.data.layouts`); `split_loading.check_images`
checks every image a command will read before any expensive work.
"""

import dataclasses
import functools
import math
import os

import numpy as np

from tf_netvlad.data import dbstruct, image_folders, layouts, split_files, utm
from tf_netvlad.defaults import NON_TRIV_POS_DIST_SQ_THR_M2, POS_DIST_THR_M


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


def _refuse_duplicates(paths, name):
    if len(set(paths)) == len(paths):
        return
    seen, dups = set(), []
    for p in paths:
        if p in seen:
            dups.append(p)
        seen.add(p)
    raise ValueError(f"Split {name!r} lists {len(dups)} database path(s) more than once, e.g. "
                     f"{dups[0]!r}: each database image must appear once (remove the repeated "
                     "rows/entries).")


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
        utm_zone: optional UTM zone of the coordinates, zone number + latitude band letter
            (e.g. `"17T"`; northern hemisphere iff the letter is 'N' or later), so positions can
            be turned back into latitude/longitude.
        layout: optional `layouts.Layout`: the folders (and suffix) `split_loading.load_split`
            joined to the names the source file lists (`split_files.listed_paths` undoes it).
            None: as listed.
        notes: human-readable lines on how the split was read (columns used, layout, UTM zone).

    Database paths must be unique (a duplicate would count one place twice in recall@N and in
    mining): a split listing one twice is refused.

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
    pos_dist_thr: float = POS_DIST_THR_M
    non_triv_pos_dist_sq_thr: float = NON_TRIV_POS_DIST_SQ_THR_M2
    root: str = None
    query_conditions: tuple = dataclasses.field(default=None, repr=False)
    utm_zone: str = None
    layout: layouts.Layout = dataclasses.field(default=None, repr=False)
    notes: tuple = dataclasses.field(default=(), repr=False)

    def __post_init__(self):
        put = functools.partial(object.__setattr__, self)
        put("name", str(self.name))
        put("db_paths", _as_paths(self.db_paths, "db_paths"))
        put("query_paths", _as_paths(self.query_paths, "query_paths"))
        if not self.db_paths:
            raise ValueError(f"Split {self.name!r}: `db_paths` is empty; a split needs "
                             "at least one database image.")
        _refuse_duplicates(self.db_paths, self.name)
        if self.utm_zone is not None:
            put("utm_zone", utm.normalize_utm_zone(self.utm_zone))
        put("notes", tuple(str(n) for n in self.notes))
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

    def with_database_queries(self):
        """This split with every database image also a query, for training (`TrainConfig.db_queries`).

        Positions are the only labels, and database images have them too: a database image used as
        a query trains with the other database images within 10 m as positives (viewpoint change
        along the street) and those beyond 25 m as negatives. It must never be its own positive, so
        it carries the capture time stamp of its database entry and `non_trivial_positives` leaves
        out database images taken at the query's time. A split without time stamps gets one per
        database image (its index; the split's own queries get -1, a time no database image has),
        so only the image itself is left out. The database is unchanged; queries come first, then
        the database images in database order (conditions "database").
        """
        n_db = self.num_db
        if self.has_timestamps:
            db_times, own_times = self.db_timestamps, self.query_timestamps
        else:
            db_times, own_times = np.arange(n_db, dtype=np.int64), np.full(self.num_queries, -1, np.int64)
        conditions = (None if self.query_conditions is None
                      else tuple(self.query_conditions) + ("database",) * n_db)
        return dataclasses.replace(
            self, name=f"{self.name}+db", query_paths=tuple(self.query_paths) + tuple(self.db_paths),
            query_utm=np.concatenate([self.query_utm, self.db_utm]), db_timestamps=db_times,
            query_timestamps=np.concatenate([np.asarray(own_times, np.int64), np.asarray(db_times, np.int64)]),
            query_conditions=conditions, layout=None,
            notes=tuple(self.notes) + (f"the {n_db} database images are also training queries",))

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
            "layout": (self.layout or layouts.AS_LISTED).name,
            "utm_zone": self.utm_zone,
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
        return dbstruct.read_mat(cls, path, root=root, name=name)

    @classmethod
    def from_csv(cls, path, root=None, name=None, pos_dist_thr=POS_DIST_THR_M,
                 non_triv_pos_dist_sq_thr=NON_TRIV_POS_DIST_SQ_THR_M2):
        """Read a CSV manifest with columns `path, role, easting, northing` (or
        `path, role, latitude, longitude`), optional `timestamp` and `conditions`."""
        return split_files.read_csv(cls, path, root=root, name=name, pos_dist_thr=pos_dist_thr,
                                    non_triv_pos_dist_sq_thr=non_triv_pos_dist_sq_thr)

    @classmethod
    def from_folder(cls, db_dir, query_dir, root=None, name=None, pos_dist_thr=POS_DIST_THR_M,
                    non_triv_pos_dist_sq_thr=NON_TRIV_POS_DIST_SQ_THR_M2):
        """Read VPR-datasets-downloader folders of `@utm_east@utm_north@...@.jpg` images."""
        return image_folders.read_folder(cls, db_dir, query_dir, root=root, name=name,
                                         pos_dist_thr=pos_dist_thr,
                                         non_triv_pos_dist_sq_thr=non_triv_pos_dist_sq_thr)
