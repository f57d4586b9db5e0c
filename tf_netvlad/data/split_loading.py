"""Loading a `PlaceSplit` from a dataset root as its authors ship it, and checking its images.

Pure NumPy/SciPy (no TensorFlow). `load_split` reads a `.mat` dbStruct (`tf_netvlad.data.dbstruct`),
a `.csv` manifest (`tf_netvlad.data.split_files`) or a folder of `@`-named images
(`tf_netvlad.data.image_folders`) and detects where the database and the query images are under
the root (`tf_netvlad.data.layouts`); `check_images` checks every image a command will read before
any expensive work, and `load_split_checked` does both.
"""

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from tf_netvlad.data import layouts, utm
from tf_netvlad.data.places import PlaceSplit

# The name these records had before loading left `places`; the CLI prints it, so it stays.
logger = logging.getLogger("tf_netvlad.data.places")

# How errors name the root overrides: the Python arguments (the CLI passes its flags).
PYTHON_ROOT_ARGS = ("root=", "db_root=", "query_root=")


def _read(reader, path, *args, **kwargs):
    """`reader(*args, **kwargs)`, with the file named in a ValueError that does not name it."""
    try:
        return reader(*args, **kwargs)
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{str(path)!r}: {err}") from None


def _locate_images(split, path, root, db_root, query_root):
    """`split` (names as listed) with its database and query folders detected under the dataset
    root (`layouts.resolve`): the root given, else the file's folder, then its parent."""
    if root is not None:
        roots = [os.fspath(root)]
    else:
        roots = list(dict.fromkeys([str(path.parent), str(path.parent.parent)]))
    new_root, layout = layouts.resolve(split.db_paths, split.query_paths, roots,
                                       db_root=db_root, query_root=query_root)
    return dataclasses.replace(
        split, db_paths=[layout.db.apply(p) for p in split.db_paths],
        query_paths=[layout.query.apply(p) for p in split.query_paths], root=new_root,
        layout=layout, notes=split.notes + (layout.describe(new_root),))


def _with_zone(split, zone, path):
    zone = utm.normalize_utm_zone(zone)
    if split.utm_zone and not utm.same_projection(split.utm_zone, zone):
        raise ValueError(f"{str(path)!r}: utm_zone={zone!r} was given but the file's positions are "
                         f"in UTM zone {split.utm_zone}.")
    utm.check_zone_fits(np.concatenate([split.db_utm, split.query_utm]), zone,
                        f"the positions of {str(path)!r}")
    return dataclasses.replace(split, utm_zone=zone, notes=split.notes + (f"UTM zone {zone} (given)",))


def load_split(path, root=None, db_root=None, query_root=None, utm_zone=None, **kwargs):
    """Load a `PlaceSplit` from a `.mat` dbStruct, a `.csv` manifest or a folder.

    Args:
        path: a `.mat` dbStruct, a `.csv` manifest, or a folder with `database/` and `queries/`
            subfolders of `@`-named images (VPR-datasets-downloader's `images/test`).
        root: the dataset root as its authors ship it. Default: the file's folder, else its
            parent (the official files sit in the root's `datasets/` subfolder). The database
            and query folders under it are detected from the first few names (`layouts`:
            `images/` + `queries/`, `images/` + `query/`, `images/`, `queries_real/`, or as
            listed); the detected layout is in `split.layout` and `split.notes`.
        db_root, query_root: the folders the database / query names are relative to, instead
            of detecting them (.mat and .csv only).
        utm_zone: the UTM zone of the positions (e.g. "17T") when the file does not say it.
        **kwargs: passed to the reader (`name`, and the radii for CSV and folders).

    Nothing here requires the images to exist (`check_images` checks them).
    """
    path = Path(path)
    if path.is_dir():
        db_dir, q_dir = path / "database", path / "queries"
        if not (db_dir.is_dir() and q_dir.is_dir()):
            raise ValueError(f"Folder {str(path)!r} must contain `database/` and `queries/` "
                             "subfolders of @utm_east@utm_north@...@.jpg images.")
        if db_root is not None or query_root is not None:
            raise ValueError(f"Folder {str(path)!r} lists its own images in database/ and queries/; "
                             "db_root/query_root (--db-root/--query-root) apply to .mat and .csv "
                             "splits.")
        split = _read(PlaceSplit.from_folder, path, db_dir, q_dir, root=root, **kwargs)
        layout = layouts.Layout(kind="VPR-datasets-downloader folder (database/ + queries/ of "
                                     "@-named images)")
        split = dataclasses.replace(split, layout=layout,
                                    notes=(layout.describe(split.root),) + split.notes)
    else:
        if not path.exists():
            raise FileNotFoundError(f"Split file {str(path)!r} does not exist.")
        suffix = path.suffix.lower()
        readers = {".mat": PlaceSplit.from_mat, ".csv": PlaceSplit.from_csv}
        if suffix not in readers:
            raise ValueError(f"Cannot load a split from {str(path)!r}: expected a .mat dbStruct, a "
                             ".csv manifest or a folder with database/ and queries/, "
                             f"received suffix {suffix!r}.")
        split = _read(readers[suffix], path, path, root=root, **kwargs)
        split = _read(_locate_images, path, split, path, root, db_root, query_root)
    if utm_zone is not None:
        split = _with_zone(split, utm_zone, path)
    for note in split.notes:
        logger.info("%s: %s", path, note)
    return split


def check_images(split, parts=("db", "query"), root=None, flags=PYTHON_ROOT_ARGS, source=None):
    """Checks that every image of `parts` ("db", "query") of `split` is a file, before any
    expensive work (one directory listing per folder, so a Pitts250k database takes seconds).

    Args:
        root: image root (default `split.root`).
        flags: how the message names the dataset root, database-folder and query-folder
            overrides (the CLI passes `("--root", "--db-root", "--query-root")`).
        source: what the message names (default: the split's name), e.g. the dataset file.

    Raises:
        FileNotFoundError: one line with, per side, how many images are missing of how many, the
            folders looked in (all candidates when no known layout matched), the first few
            missing paths and the flags to use.
    """
    root = split.root if root is None else os.fspath(root)
    layout = split.layout or layouts.AS_LISTED
    sides = {"db": ("database", layout.db, split.db_image_paths, flags[1]),
             "query": ("query", layout.query, split.query_image_paths, flags[2])}
    problems = []
    for part in parts:
        if part not in sides:
            raise ValueError(f"`parts` entries must be 'db' or 'query'. Received: {part!r}")
        what, side, image_paths, flag = sides[part]
        full = image_paths(root)
        missing = layouts.missing_files(full)
        if not missing:
            continue
        folders = side.tried or (os.path.abspath(os.path.join(root, side.folder)),)
        problems.append(
            f"{len(missing)} of {len(full)} {what} images not found"
            f"{'' if side.found else ', no known dataset layout matched'} (looked in "
            f"{', '.join(folders)}; e.g. {', '.join(repr(m) for m in missing[:3])}); give the "
            f"dataset root with {flags[0]} or the {what} folder with {flag}")
    if problems:
        raise FileNotFoundError(f"{source or split.name}: " + "; ".join(problems) + ".")


def load_split_checked(dataset, root=None, db_root=None, query_root=None, parts=("db", "query"),
                       flags=PYTHON_ROOT_ARGS):
    """`load_split`, then refuses a split without queries (when `parts` has "query") and checks
    every image of `parts` (`check_images`): all before any model is loaded."""
    split = load_split(dataset, root=root, db_root=db_root, query_root=query_root)
    if "query" in parts and split.num_queries == 0:
        raise ValueError(f"Dataset {dataset} has no queries: nothing to evaluate or train on.")
    check_images(split, parts, flags=flags, source=str(dataset))
    return split
