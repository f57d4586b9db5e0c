"""Ground truth of Oxford5k / Paris6k style retrieval benchmarks: ok/junk lists per query.

Both formats load into one `RetrievalGroundTruth` (database names, query names, query boxes and,
per protocol, each query's positive and junk database ids):

* revisited (Radenović et al., CVPR 2018, "Revisiting Oxford and Paris"): `gnd_roxford5k.pkl` /
  `gnd_rparis6k.pkl` (`load_revisited_gnd`), with three protocols
  - easy: positives = easy, junk = junk + hard;
  - medium: positives = easy + hard, junk = junk;
  - hard: positives = hard, junk = junk + easy;
* original (Philbin et al.): a folder of `<query>_{good,ok,junk,query}.txt` files
  (`load_oxford_gt`), one protocol "original": positives = good + ok, junk = junk, as MATLAB
  NetVLAD's `dbVGG.m` reads it.

The metrics are in `tf_netvlad.evaluation.oxford_paris`. Importing this module does not import TensorFlow.
"""

import logging
import os
import pickle
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

REVISITED_PROTOCOLS = ("easy", "medium", "hard")
ORIGINAL_PROTOCOL = "original"


@dataclass(frozen=True, eq=False)
class RetrievalGroundTruth:
    """Database and query image names, query boxes and per-protocol positive/junk ids.

    Attributes:
        name: dataset name ("roxford5k", "oxford5k", ...).
        db_names: database image names without extension (may contain sub-folders).
        query_names: query image names without extension (the queries are database images).
        query_boxes: float64 `(Q, 4)` boxes `[x1, y1, x2, y2]` in pixels of the query image, or
            None when the ground truth has none.
        protocols: protocol name -> `(positives, junk)`, each a tuple of Q sorted int64 arrays of
            database ids.
    """

    name: str
    db_names: tuple
    query_names: tuple
    query_boxes: object
    protocols: dict

    @property
    def num_db(self):
        return len(self.db_names)

    @property
    def num_queries(self):
        return len(self.query_names)

    def lists(self, protocol):
        """`(positives, junk)` of one protocol; a clear error names the available ones."""
        if protocol not in self.protocols:
            raise ValueError(
                f"Protocol {protocol!r} is not defined for {self.name!r}; available: "
                f"{sorted(self.protocols)}."
            )
        return self.protocols[protocol]

    def image_paths(self, images_dir, ext=".jpg", which="db"):
        """Paths `images_dir/<name><ext>` of the database (`which="db"`) or query images."""
        names = self.db_names if which == "db" else self.query_names
        return [os.path.join(os.fspath(images_dir), name + ext) for name in names]


def index_array(values, num_db, where):
    array = np.asarray(values if values is not None else [])
    if array.size == 0:
        return np.zeros(0, np.int64)
    if array.ndim != 1 or not (
        np.issubdtype(array.dtype, np.integer)
        or (np.issubdtype(array.dtype, np.floating) and np.all(array == np.round(array)))
    ):
        raise ValueError(f"{where} must be a 1-D list of integer database ids. "
                         f"Received: {values!r}")
    array = array.astype(np.int64)
    bad = array[(array < 0) | (array >= num_db)]
    if len(bad):
        raise ValueError(
            f"{where} holds database id {int(bad[0])}, outside [0, {num_db}) for {num_db} "
            "database images."
        )
    return np.unique(array)


def check_box(box, where):
    values = np.asarray(box, np.float64).ravel() if box is not None else np.zeros(0)
    if values.shape != (4,) or not np.isfinite(values).all():
        raise ValueError(f"{where} must be 4 numbers [x1, y1, x2, y2]. Received: {box!r}")
    if values[2] <= values[0] or values[3] <= values[1]:
        raise ValueError(f"{where} must have x2 > x1 and y2 > y1. Received: {box!r}")
    return values


def revisited_lists(easy, hard, junk):
    """`{protocol: (positives, junk)}` of one query from its easy / hard / junk id arrays."""
    union = lambda *parts: np.unique(np.concatenate(parts)).astype(np.int64)  # noqa: E731
    return {
        "easy": (union(easy), union(junk, hard)),
        "medium": (union(easy, hard), union(junk)),
        "hard": (union(hard), union(junk, easy)),
    }


def ground_truth_from_revisited(cfg, name="revisited"):
    """Validates a ground-truth dict (`imlist`, `qimlist`, `gnd`) and converts it.

    Entries of `gnd` with "easy", "hard", "junk" give the three revisited protocols; entries with
    "ok" and "junk" (cirtorch's `gnd_oxford5k.pkl` / `gnd_paris6k.pkl`) give "original".
    """
    if not isinstance(cfg, dict) or not {"imlist", "qimlist", "gnd"} <= set(cfg):
        keys = sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__
        raise ValueError(
            f"{name}: not a revisited Oxford/Paris ground truth (a dict with keys 'imlist', "
            f"'qimlist', 'gnd', as gnd_roxford5k.pkl / gnd_rparis6k.pkl). Received: {keys}"
        )
    db_names = tuple(str(n) for n in cfg["imlist"])
    query_names = tuple(str(n) for n in cfg["qimlist"])
    gnd = list(cfg["gnd"])
    if len(gnd) != len(query_names):
        raise ValueError(
            f"{name}: 'gnd' has {len(gnd)} entries for {len(query_names)} query names in 'qimlist'."
        )
    original = bool(gnd) and isinstance(gnd[0], dict) and "ok" in gnd[0] and "easy" not in gnd[0]
    kinds = ("ok", "junk") if original else ("easy", "hard", "junk")
    names = (ORIGINAL_PROTOCOL,) if original else REVISITED_PROTOCOLS
    boxes, per_protocol = [], {p: ([], []) for p in names}
    for q, entry in enumerate(gnd):
        missing = [k for k in ("bbx",) + kinds if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise ValueError(f"{name}: gnd[{q}] lacks the key(s) {missing} (needs 'bbx', "
                             f"{', '.join(repr(k) for k in kinds)}).")
        boxes.append(check_box(entry["bbx"], f"{name}: gnd[{q}]['bbx']"))
        ids = {k: index_array(entry[k], len(db_names), f"{name}: gnd[{q}][{k!r}]") for k in kinds}
        lists = ({ORIGINAL_PROTOCOL: (ids["ok"], ids["junk"])} if original
                 else revisited_lists(ids["easy"], ids["hard"], ids["junk"]))
        for protocol, (pos, junk) in lists.items():
            per_protocol[protocol][0].append(pos)
            per_protocol[protocol][1].append(junk)
    protocols = {p: (tuple(pos), tuple(junk)) for p, (pos, junk) in per_protocol.items()}
    box_array = np.asarray(boxes, np.float64).reshape(len(boxes), 4)
    return RetrievalGroundTruth(name, db_names, query_names, box_array, protocols)


# What a ground-truth pickle may build: containers, numbers and strings (the pickle protocol's own
# opcodes, no lookup needed) and NumPy arrays. Any other global (os.system, builtins.eval, a class
# whose __reduce__ runs code) is refused, so loading a crafted file runs nothing.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
    ("_codecs", "encode"), ("builtins", "bytes"), ("__builtin__", "bytes"),  # array bytes, protocol 2
}


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"it refers to {module}.{name}; a ground-truth pickle holds only lists, dicts, numbers, "
            "strings and NumPy arrays, so nothing else is loaded (and no code from the file runs)")


def load_revisited_gnd(path):
    """Loads `gnd_roxford5k.pkl` / `gnd_rparis6k.pkl` (or cirtorch's `gnd_oxford5k.pkl`).

    The file is a pickle, read with an unpickler that builds only containers, numbers, strings
    and NumPy arrays: a crafted file is refused instead of running code. The name is taken from
    the file name without the "gnd_" prefix ("roxford5k").
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Ground-truth file {path!r} does not exist.")
    try:
        with open(path, "rb") as handle:
            try:
                cfg = _DataOnlyUnpickler(handle).load()
            except UnicodeDecodeError:  # a Python 2 pickle
                handle.seek(0)
                cfg = _DataOnlyUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as error:
        raise ValueError(
            f"{path!r} is not a readable pickle ({type(error).__name__}: {error}); expected a "
            "revisited ground truth such as gnd_roxford5k.pkl."
        ) from error
    stem = os.path.splitext(os.path.basename(path))[0]
    return ground_truth_from_revisited(cfg, name=stem[4:] if stem.startswith("gnd_") else stem)


def _read_names(path):
    with open(path) as handle:
        return [line.strip() for line in handle if line.strip()]


def _list_images(images_dir, ext):
    names = []
    for folder, _, files in os.walk(images_dir):
        for file in files:
            if file.lower().endswith(ext.lower()):
                rel = os.path.relpath(os.path.join(folder, file), images_dir)
                names.append(rel[: -len(ext)].replace(os.sep, "/"))
    return sorted(names)


def _parse_query_file(path):
    lines = _read_names(path)
    fields = lines[0].split() if len(lines) == 1 else []
    if len(fields) != 5:
        raise ValueError(f"{path!r} must hold one line 'image x1 y1 x2 y2'. Received: {lines}")
    image = fields[0][5:] if fields[0].startswith("oxc1_") else fields[0]
    try:
        box = [float(v) for v in fields[1:]]
    except ValueError as error:
        raise ValueError(f"{path!r}: the box must be 4 numbers. Received: {fields[1:]}") from error
    return image, check_box(box, f"the box in {path!r}")


def load_oxford_gt(gt_dir, images_dir=None, db_names=None, ext=".jpg", on_missing="raise"):
    """Loads the original Oxford5k / Paris6k text ground truth (protocol "original").

    `gt_dir` holds, per query, `<q>_query.txt` ("oxc1_<image> x1 y1 x2 y2"; the "oxc1_" prefix of
    Oxford is dropped) and `<q>_good.txt`, `<q>_ok.txt`, `<q>_junk.txt` (one image name per line).
    Queries are sorted by `<q>`, as MATLAB's `dbVGG.m` does. Positives = good + ok, junk = junk.

    Args:
        gt_dir: the ground-truth folder.
        images_dir: image folder listed recursively for the database (Paris keeps its images in
            sub-folders); names are relative paths without `ext`, matched to the lists by file name.
        db_names: the database names instead of a listing (names without extension).
        ext: image file extension.
        on_missing: "raise" (default) when a list names an image absent from the database, or
            "drop" to leave such names out with a warning (Paris' 20 corrupt images).
    """
    gt_dir = os.fspath(gt_dir)
    if on_missing not in ("raise", "drop"):
        raise ValueError(f"`on_missing` must be 'raise' or 'drop'. Received: {on_missing!r}")
    if not os.path.isdir(gt_dir):
        raise FileNotFoundError(f"Ground-truth folder {gt_dir!r} does not exist.")
    if db_names is None:
        if images_dir is None:
            raise ValueError("Pass `images_dir` (listed for the database) or `db_names`: the text "
                             "ground truth does not list the distractor images.")
        db_names = _list_images(os.fspath(images_dir), ext)
    db_names = tuple(str(n) for n in db_names)
    if not db_names:
        raise ValueError(f"The database is empty: no '*{ext}' image in {images_dir!r}.")
    by_stem = {}
    for i, name in enumerate(db_names):
        stem = name.rsplit("/", 1)[-1]
        if stem in by_stem:
            raise ValueError(f"Two database images share the file name {stem!r}: "
                             f"{db_names[by_stem[stem]]!r} and {name!r}.")
        by_stem[stem] = i
    suffix = "_query.txt"
    queries = sorted(f[: -len(suffix)] for f in os.listdir(gt_dir) if f.endswith(suffix))
    if not queries:
        raise ValueError(f"No '*_query.txt' file in {gt_dir!r}: not an Oxford/Paris gt folder.")
    dropped, positives, junk, query_names, boxes = [], [], [], [], []
    for q in queries:
        lists = {}
        for kind in ("good", "ok", "junk"):
            path = os.path.join(gt_dir, f"{q}_{kind}.txt")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Ground-truth file {path!r} is missing (query {q!r}).")
            ids = []
            for name in _read_names(path):
                if name in by_stem:
                    ids.append(by_stem[name])
                elif on_missing == "raise":
                    raise ValueError(f"{path!r} names {name!r}, which is not a database image "
                                     "(use on_missing='drop' to leave such names out).")
                else:
                    dropped.append(name)
            lists[kind] = np.asarray(ids, np.int64)
        image, box = _parse_query_file(os.path.join(gt_dir, f"{q}_query.txt"))
        if image not in by_stem:
            raise ValueError(f"Query {q!r}: its image {image!r} is not a database image.")
        query_names.append(db_names[by_stem[image]])
        boxes.append(box)
        positives.append(np.unique(np.concatenate([lists["good"], lists["ok"]])))
        junk.append(np.unique(lists["junk"]))
    if dropped:
        logger.warning("Dropped %d ground-truth names absent from the database (first: %r).",
                       len(dropped), dropped[0])
    name = os.path.basename(os.path.normpath(gt_dir))
    return RetrievalGroundTruth(name, db_names, tuple(query_names), np.asarray(boxes),
                                {ORIGINAL_PROTOCOL: (tuple(positives), tuple(junk))})


def load_ground_truth(path, images_dir=None, ext=".jpg", on_missing="raise"):
    """A revisited pickle (file) or an original text ground-truth folder (directory)."""
    if os.path.isdir(os.fspath(path)):
        return load_oxford_gt(path, images_dir=images_dir, ext=ext, on_missing=on_missing)
    return load_revisited_gnd(path)
