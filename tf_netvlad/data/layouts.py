"""Where a split's images are on disk: dataset roots laid out as their authors ship them.

Pure Python (no NumPy needed). The official `dbStruct` files list the database and the query names
relative to *different* folders: Relja/netvlad `datasets/dbBase.m` reads `[db.dbPath,
dbImageFns{i}]` and `[db.qPath, qImageFns{i}]`, with the folders set per dataset class. Under one
dataset root the known layouts are:

| layout | database names under | query names under | source |
|---|---|---|---|
| as listed | the root | the root | tf_netvlad's own files, CSV manifests |
| Pittsburgh (MATLAB) | `images/` | `queries/` | Relja/netvlad `datasets/dbPitts.m` |
| Tokyo 24/7 (MATLAB) | `images/` | `query/` | Relja/netvlad `datasets/dbTokyo247.m` |
| TokyoTM (MATLAB) | `images/` | `images/` | Relja/netvlad `datasets/dbTokyoTimeMachine.m` |
| Pittsburgh as distributed | the root (`000/`...) | `queries_real/` | Nanne/pytorch-NetVlad `pittsburgh.py` |

`resolve` finds, for the database and the query side separately, the first candidate folder that
holds a few sampled names (or most of them; so mixed layouts work too), and falls back to the `.png` twin of a
`.jpg` name: the Tokyo 24/7 `dbStruct` lists `.jpg` database names while the distributed database
tarballs hold `.png` files (gmberton/VPR-datasets-downloader `format_tokyo247.py` reads them with
`.replace('.jpg', '.png')`). A `Layout` records the outcome on the split; `missing_files` checks
every path quickly (one directory listing per folder, not one `stat` per image).
"""

import dataclasses
import os

# Candidate folders under a dataset root, in the order they are tried.
DB_FOLDERS = ("", "images")
QUERY_FOLDERS = ("", "queries", "query", "images", "queries_real")
# A listed suffix -> the suffixes tried on disk when the listed name is not found.
SUFFIX_TWINS = {".jpg": (".png",), ".jpeg": (".png",), ".png": (".jpg",)}

KNOWN_LAYOUTS = {
    ("", ""): "as listed (database and queries relative to the root)",
    ("images", "queries"): "Pittsburgh, Relja/netvlad (datasets/dbPitts.m: images/ + queries/)",
    ("images", "query"): "Tokyo 24/7, Relja/netvlad (datasets/dbTokyo247.m: images/ + query/)",
    ("images", "images"): "TokyoTM, Relja/netvlad (datasets/dbTokyoTimeMachine.m: images/ for both)",
    ("", "queries_real"): "Pittsburgh as distributed, Nanne/pytorch-NetVlad (pittsburgh.py: "
                          "database at the root + queries_real/)",
}


@dataclasses.dataclass(frozen=True)
class Side:
    """Where one side (database or queries) of a split lives.

    Args:
        folder: the folder the listed names are relative to: relative to the split's root, or
            absolute ("" = the root itself).
        suffix: `(listed, on_disk)` when the files carry another suffix than the listed names
            (e.g. `(".jpg", ".png")`), else None.
        found: False when no candidate folder held the sampled names (the names are then joined
            to the root as listed, and `tried` says where they were looked for).
        tried: the absolute folders that were tried, for error messages.
        given: the folder came from the caller (`--db-root` / `--query-root`), not detection.
    """

    folder: str = ""
    suffix: tuple = None
    found: bool = True
    tried: tuple = ()
    given: bool = False

    def apply(self, name):
        """A listed name -> the path stored in the split (relative to the root, or absolute)."""
        if self.suffix is not None and name.endswith(self.suffix[0]):
            name = name[: -len(self.suffix[0])] + self.suffix[1]
        return os.path.join(self.folder, name) if self.folder else name

    def listed(self, path):
        """The inverse of `apply`: the name as the split file lists it."""
        folder = self.folder.rstrip("/" + os.sep)
        if folder:
            for sep in {os.sep, "/"}:
                if path.startswith(folder + sep):
                    path = path[len(folder) + 1:]
                    break
        if self.suffix is not None and path.endswith(self.suffix[1]):
            path = path[: -len(self.suffix[1])] + self.suffix[0]
        return path


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a split's listed names map to files under its root: one `Side` per image list.

    `kind` names layouts that are not folder pairs (e.g. an `@`-named folder dataset).
    """

    db: Side = Side()
    query: Side = Side()
    kind: str = None

    @property
    def name(self):
        if self.kind:
            return self.kind
        lost = [what for what, side in (("database", self.db), ("query", self.query))
                if not side.found]
        if lost:
            return f"no known layout holds the {' and '.join(lost)} images"
        if self.db.given or self.query.given:
            return "given folders (--db-root / --query-root)"
        return KNOWN_LAYOUTS.get((self.db.folder, self.query.folder), "custom")

    def describe(self, root):
        """One line: the layout's name and the absolute database and query folders."""
        def where(side):
            if not side.found:
                return f"not found (tried {', '.join(side.tried)})"
            text = _absolute(root, side.folder)
            if side.suffix is not None:
                text += f" (listed {side.suffix[0]} names read as {side.suffix[1]})"
            return text

        if self.kind:
            return f"layout: {self.kind} under {root}"
        return f"layout: {self.name}; database {where(self.db)}, queries {where(self.query)}"


AS_LISTED = Layout()


def _sample(names, count=4):
    """A few names spread over the list (first, last and between): enough to tell layouts apart."""
    n = len(names)
    picks = sorted({0, n - 1, *(i * (n - 1) // max(count - 1, 1) for i in range(count))})
    return [names[i] for i in picks if 0 <= i < n]


def _absolute(root, folder):
    return os.path.abspath(os.path.join(root, folder)) if root is not None else os.path.abspath(folder)


def relative_folder(folder, root):
    """`folder` relative to `root` when it lies inside it, else absolute ("" for the root)."""
    folder = os.path.abspath(folder)
    if root is not None:
        base = os.path.abspath(root)
        if folder == base:
            return ""
        if folder.startswith(os.path.join(base, "")):
            return os.path.relpath(folder, base)
    return folder


def _suffixes(sample):
    listed = {os.path.splitext(name)[1] for name in sample}
    if len(listed) != 1:
        return [None]
    (suffix,) = listed
    return [None] + [(suffix, twin) for twin in SUFFIX_TWINS.get(suffix.lower(), ())]


def resolve_side(names, root, candidates, given=None):
    """The `Side` of `names` under `root`: the first candidate folder (or the `given` one) holding
    all sampled names, first as listed, then with the suffix twin (`.jpg` -> `.png`); else the one
    holding most of them; else not found."""
    if given is not None:
        candidates = (relative_folder(given, root),)
    if not names:
        return Side(folder=candidates[0] if given is not None else "", given=given is not None)
    sample = _sample(list(names))
    base = _absolute(root, "")
    best, best_count = None, 0
    for suffix in _suffixes(sample):
        for folder in candidates:
            side = Side(folder=folder, suffix=suffix, given=given is not None)
            count = sum(os.path.isfile(os.path.join(base, side.apply(name))) for name in sample)
            if count == len(sample):
                return side
            if count > best_count:
                best, best_count = side, count
    if best is not None:  # a partly copied dataset: `check_images` lists what is missing
        return best
    tried = tuple(dict.fromkeys(_absolute(root, folder) for folder in candidates))
    return Side(folder=candidates[0] if given is not None else "", found=False, tried=tried,
                given=given is not None)


def resolve(db_names, query_names, roots, db_root=None, query_root=None):
    """The (root, Layout) under which the most sides are found, trying each root of `roots` in
    order (database found counts most); the first root when nothing is found."""
    best = None
    for root in roots:
        layout = Layout(resolve_side(db_names, root, DB_FOLDERS, db_root),
                        resolve_side(query_names, root, QUERY_FOLDERS, query_root))
        score = 2 * layout.db.found + layout.query.found
        if best is None or score > best[0]:
            best = (score, root, layout)
        if score == 3:
            break
    return best[1], best[2]


def missing_files(paths):
    """The paths of `paths` that are not existing files, in order.

    One directory listing per folder (a Pitts250k database is 250k names in 11 folders), with a
    `stat` only for names the listing does not show (case-insensitive file systems, odd entries).
    """
    listings = {}
    missing = []
    for path in paths:
        folder, name = os.path.split(os.path.abspath(path))
        if folder not in listings:
            try:
                with os.scandir(folder) as entries:
                    listings[folder] = {e.name for e in entries if e.is_file()}
            except OSError:
                listings[folder] = None
        names = listings[folder]
        if (names is None or name not in names) and not os.path.isfile(path):
            missing.append(path)
    return missing
