"""hloc interop: NetVLAD global descriptors and retrieval pairs in the files hloc reads.

hloc (cvg/Hierarchical-Localization) puts a global descriptor in front of its localisation
pipelines: it retrieves, for each query, the database images to match local features against.
`export_hloc` writes what its retrieval step produces, from a tf_netvlad model or index, so a
pipeline can start from tf_netvlad descriptors: it finds the database and query images (a split,
a folder, a list of paths or an index), names them and reads their sizes as hloc does, extracts
the descriptors with the model (or takes the index's) and writes the files. The names, sizes and
files come from `tf_netvlad.retrieval.hloc_files`, whose docstring gives their layout as hloc's
code defines it. Bad input (arguments, images, names, existing files) is refused before a model
is loaded.

TensorFlow is imported only when `export_hloc` runs; h5py only by `hloc_files`, to read or
write a features file.
"""

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from tf_netvlad.data.fileio import resolve_paths
from tf_netvlad.data.image_size import parse_image_size
from tf_netvlad.defaults import EXTRACT_BATCH_SIZE
from tf_netvlad.retrieval.hloc_files import (
    MIN_SCORE,
    check_append,
    check_count,
    check_output,
    check_unique,
    hloc_names,
    original_size,
    read_features_info,
    retrieval_pairs,
    write_feature_blocks,
    write_pairs,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- from a model or an index


@dataclasses.dataclass(frozen=True, eq=False)
class _Images:
    """One side of the retrieval: full image paths, their hloc names and, once read, descriptors."""

    paths: list
    names: list
    descriptors: object = None


def _image_set(source, root, what):
    """`(full paths, base folder, the split's query paths or None)` of a split, a split file,
    an image folder or a list of paths."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            from tf_netvlad.data import image_folders

            return [os.fspath(f) for f in image_folders.list_images(path)], os.path.abspath(path), None
        if not path.exists():
            raise FileNotFoundError(
                f"`{what}` {os.fspath(source)!r} does not exist: expected an image folder, a "
                ".mat/.csv split file, a PlaceSplit or a list of image paths."
            )
        from tf_netvlad.data.split_loading import load_split

        source = load_split(path, root=root)
    queries = None
    if hasattr(source, "db_image_paths"):
        paths, queries = source.db_image_paths(root), source.query_image_paths(root)
        root = source.root if root is None else root
    elif source is None or isinstance(source, (bytes, dict)):
        raise TypeError(f"`{what}` must be a split, a folder or a list of image paths. "
                        f"Received: {source!r}")
    else:
        paths = resolve_paths(source, root)
    if not paths:
        raise ValueError(f"`{what}` holds no images.")
    return paths, _base(paths + list(queries or ()), root), queries


def _base(paths, root):
    folders = {os.path.dirname(os.path.abspath(p)) for p in paths}
    if root is not None:
        folders.add(os.path.abspath(root))
    return os.path.commonpath(sorted(folders))


def _extract(model, images, image_size, batch_size, on_error, progress):
    """`(images, skipped records)`: the readable `images` with their descriptors, the others left out."""
    from tf_netvlad.data.images import diagnose_image
    from tf_netvlad.models.extract import extract_descriptors

    paths, names = images.paths, images.names
    result = extract_descriptors(model, paths, image_size=image_size, batch_size=batch_size,
                                 progress=progress, on_error=on_error)
    descriptors, skipped = result if on_error == "skip" else (result, ())
    if not len(skipped):
        return _Images(paths, names, descriptors), []
    keep = np.setdiff1d(np.arange(len(paths)), skipped)
    records = []
    for i in skipped:
        reason = diagnose_image(paths[i]) or "could not be read or decoded"
        logger.warning("Skipped image %s: %s", paths[i], reason)
        records.append({"path": paths[i], "reason": reason})
    return _Images([paths[i] for i in keep], [names[i] for i in keep], descriptors[keep]), records


def _check_arguments(features, pairs, model, images, index, num_matched, min_score, batch_size,
                     on_error, overwrite, append):
    """Refuses the arguments `export_hloc` cannot use, before any input is read.

    Returns `min_score` as a float, or None.
    """
    from tf_netvlad.data import pipelines

    if features is None and pairs is None:
        raise ValueError("Nothing to write: give `features` (CLI --features FILE.h5) and/or "
                         "`pairs` (--pairs FILE.txt).")
    if pairs is not None:
        if num_matched is None:
            raise ValueError("Retrieval pairs need `num_matched` (CLI --num-matched K): the "
                             "database images kept per query.")
        check_count(num_matched)
    if min_score is not None:
        min_score = float(min_score)
    pipelines.check_batch_size(batch_size)
    pipelines.check_on_error(on_error)
    check_output(features, overwrite, append)
    check_output(pairs, overwrite, flag="--pairs")
    if (index is None) == (images is None):
        raise ValueError("Give exactly one source of database images: `index` (a tf_netvlad "
                         "index: its descriptors, nothing extracted; CLI --index) or `images` "
                         "with `model` (CLI --dataset or --images).")
    if images is not None and model is None:
        raise ValueError("Extracting descriptors of `images` needs `model` (CLI --model).")
    return min_score


def _source_paths(index, images, queries, root, image_size, model):
    """`(database paths, query paths, base folders, image-size policy)` of an export.

    The query paths are None when the database is its own query set (self-retrieval).
    """
    if index is not None:
        db_paths = [index.full_path(i) for i in range(index.count)]
        db_base, split_queries = _base(db_paths, index.root), None
        policy = index.image_size if image_size is None else parse_image_size(image_size)
    else:
        db_paths, db_base, split_queries = _image_set(images, root, "images")
        policy = parse_image_size(image_size)
    query_base = db_base
    if queries is not None:
        query_paths, query_base, from_split = _image_set(queries, root, "queries")
        query_paths = from_split if from_split is not None else query_paths
    else:
        query_paths = split_queries
    if index is not None and query_paths is not None and model is None:
        raise ValueError("The query images need the index's model to extract their descriptors: "
                         "pass `model` (CLI --model).")
    return db_paths, query_paths, [db_base, query_base], policy


def _checked_inputs(index, images, queries, root, image_dir, image_size, model, on_error):
    """`(index, database, queries, image_dir, image-size policy)`: every image found and named.

    The queries are None in self-retrieval. With `on_error="raise"` the image files to read are
    checked to exist. Nothing is extracted: all of this comes before a model is loaded.
    """
    from tf_netvlad.data import pipelines
    from tf_netvlad.retrieval.index import RetrievalIndex

    if index is not None:
        index = index if isinstance(index, RetrievalIndex) else RetrievalIndex.load(index)
    db_paths, query_paths, bases, policy = _source_paths(index, images, queries, root, image_size,
                                                         model)
    image_dir = os.path.abspath(image_dir) if image_dir is not None else os.path.commonpath(bases)
    db = _Images(db_paths, hloc_names(db_paths, image_dir))
    check_unique(db.names, "database")
    query = None
    if query_paths is not None:
        query = _Images(query_paths, hloc_names(query_paths, image_dir))
        check_unique(query.names, "query")
    to_read = ([] if index is not None else db.paths) + ([] if query is None else query.paths)
    if on_error == "raise":
        pipelines.check_files_exist(to_read)
    return index, db, query, image_dir, policy


def _load_model(model, index, features, append):
    """`(model or None, fingerprint dict of the descriptors' model)`.

    An append to an existing `features` file is checked once the model is known: descriptors of
    another dim or model are refused before any image is read.
    """
    from tf_netvlad.models.identity import load_descriptor_model, model_fingerprint

    existing = read_features_info(features) if features and append and os.path.exists(
        features) else None
    model_info = dict(index.metadata["model"]) if index is not None else None
    if model is not None:
        model, label = load_descriptor_model(model)
        if index is not None:
            index.check_model(model, label)
        else:
            model_info = dict(model_fingerprint(model), source=label)
    dim = index.dim if index is not None else int(model_info["descriptor_dim"])
    if existing is not None:
        check_append(existing, dim, model_info, features)
    return model, model_info


def _read_descriptors(model, index, db, query, policy, batch_size, on_error, progress):
    """`(database, queries, skipped records)` with descriptors: the index's, or the model's of the
    readable images. In self-retrieval (`query` None) the queries are the database."""
    from tf_netvlad.data import pipelines
    from tf_netvlad.models.identity import warn_if_not_training_size

    if index is None or query is not None:  # images are read with `model`
        warn_if_not_training_size(model, policy, "extracts the hloc descriptors")
    skipped = []
    if index is not None:
        db = _Images(db.paths, db.names, index.descriptors)
    else:
        db, skipped = _extract(model, db, policy, batch_size, on_error, progress)
        if not len(db.names):
            raise pipelines.ImageReadError(
                f"None of the {len(skipped)} database images could be read; nothing was written "
                f"({skipped[0]['path']}: {skipped[0]['reason']}).", path=skipped[0]["path"])
    if query is None:
        return db, db, skipped
    query, more = _extract(model, query, policy, batch_size, on_error, progress)
    return db, query, skipped + more


def _feature_blocks(db, query):
    """The features file's `(names, descriptors, image sizes)` blocks: the database, then the
    queries whose names are not in it."""
    blocks = [(db.names, db.descriptors, [original_size(p) for p in db.paths])]
    if query is not db:
        in_db = set(db.names)
        extra = [i for i, n in enumerate(query.names) if n not in in_db]
        blocks.append(([query.names[i] for i in extra], query.descriptors[extra],
                       [original_size(query.paths[i]) for i in extra]))
    return blocks


def export_hloc(features=None, pairs=None, model=None, images=None, queries=None, index=None,
                root=None, image_dir=None, num_matched=None, exclude_self=True,
                min_score=MIN_SCORE, image_size=None, as_half=True, append=False, overwrite=False,
                batch_size=EXTRACT_BATCH_SIZE, on_error="skip", progress=True):
    """Writes hloc's global-features file and/or retrieval pairs from a model or an index.

    Args:
        features: the `.h5` features file to write (database and query images), or None.
        pairs: the pairs `.txt` file to write, or None (at least one of the two).
        model: a descriptor model or `.keras` file; needed with `images`, and with `queries`
            of an index (it must be the index's model).
        images: the database images, read with `model`: a `PlaceSplit` or a `.mat`/`.csv`
            split file (its database; its queries are the queries), an image folder
            (recursive) or a list of paths (relative to `root` unless absolute).
        queries: the query images (a split or split file: its queries; a folder; a list).
            Default: the split's queries, else the database itself (self-retrieval, as hloc's
            pairs for a reconstruction).
        index: a `RetrievalIndex` or index directory instead of `images`: its stored descriptors
            are used, nothing is extracted (queries other than the database need `model`).
        root: image root of relative paths and of a split's images (default: the split's).
        image_dir: the folder hloc names are relative to (hloc's `image_dir`). Default: the
            common folder of the split/folder/index root and every image.
        num_matched: database images per query in the pairs (required with `pairs`).
        exclude_self: drop a query's own name from its retrievals (hloc always does).
        min_score: drop retrievals with a lower similarity (hloc: 0); None keeps all.
        image_size: resize policy of the extraction (default: the index's, else "keep").
        as_half: float16 descriptors in the features file (hloc's default); False: float32.
        append: add to an existing features file (same model; names there are replaced).
        overwrite: replace existing output files.
        batch_size, on_error, progress: as in `extract_descriptors`; with `on_error="skip"`
            unreadable images are left out of both files and listed in the summary.

    Returns:
        a summary dict: `features`, `pairs` (paths or None), `image_dir`, `num_db`,
        `num_queries`, `self_retrieval`, `num_pairs`, `dtype`, `replaced`, `skipped`.
    """
    min_score = _check_arguments(features, pairs, model, images, index, num_matched, min_score,
                                 batch_size, on_error, overwrite, append)
    # Every image, name and file is checked before a model is loaded.
    index, db, query, image_dir, policy = _checked_inputs(index, images, queries, root, image_dir,
                                                          image_size, model, on_error)
    self_retrieval = query is None
    model, model_info = _load_model(model, index, features, append)
    db, query, skipped = _read_descriptors(model, index, db, query, policy, batch_size, on_error,
                                           progress)

    summary = {"features": None, "pairs": None, "image_dir": image_dir, "num_db": len(db.names),
               "num_queries": len(query.names), "self_retrieval": self_retrieval,
               "num_pairs": None, "dtype": "float16" if as_half else "float32", "replaced": 0,
               "skipped": skipped}
    found_pairs = None
    if pairs is not None:  # computed first: a failure leaves no features file either
        found_pairs = retrieval_pairs(query.descriptors, db.descriptors, query.names, db.names,
                                      num_matched, exclude_self=exclude_self, min_score=min_score)
    if features is not None:
        written = write_feature_blocks(features, _feature_blocks(db, query), as_half, overwrite,
                                       append, model_info)
        summary.update(features=os.fspath(features), replaced=written["replaced"])
    if pairs is not None:
        write_pairs(pairs, found_pairs, overwrite=overwrite)
        summary.update(pairs=os.fspath(pairs), num_pairs=len(found_pairs))
    return summary


def format_summary(summary):
    """Lines for the CLI: what was written, from how many images, what was skipped."""
    lines = [f"images: {summary['num_db']} database, "
             + ("the same as queries (self-retrieval)" if summary["self_retrieval"]
                else f"{summary['num_queries']} queries")
             + f"; names relative to {summary['image_dir']}"]
    if summary["features"]:
        replaced = f", {summary['replaced']} replaced" if summary["replaced"] else ""
        lines.append(f"features: {summary['features']} ({summary['dtype']}{replaced})")
    if summary["pairs"]:
        lines.append(f"pairs: {summary['pairs']} ({summary['num_pairs']} pairs)")
    for record in summary["skipped"]:
        lines.append(f"skipped: {record['path']}: {record['reason']}")
    return "\n".join(lines)
