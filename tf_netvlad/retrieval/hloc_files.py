"""hloc's file formats: the global-features `.h5` file and the retrieval-pairs `.txt` file.

hloc (cvg/Hierarchical-Localization) puts a global descriptor in front of its localisation
pipelines: it retrieves, for each query, the database images to match local features against.
This module reads and writes the two files of that retrieval step, and gives the image names
and sizes they hold (`tf_netvlad.retrieval.hloc` fills them from a model or an index). The
layout follows hloc's own code:

* **Features file** (`hloc/extract_features.py`, `main`): HDF5 with one group per image *name*,
  created by `create_group(name)`, so a name with `/` is a chain of nested groups. In the group,
  the extractor's outputs (the NetVLAD extractor `hloc/extractors/netvlad.py` returns one
  `global_descriptor`, shape `(D,)`) and `image_size`, the original `(width, height)` as int64.
  With `as_half=True` (the default of `main`, which hloc's pipelines use) every float32 array is
  stored as float16; its command line's `--as_half` is off by default (float32). Here
  `as_half=True` is the default too (CLI `--float32` keeps float32).
* **Names**: the image path relative to the image folder with `/` separators
  (`Path(p).relative_to(root).as_posix()`), e.g. `db/1234.jpg`, `query/night/5678.jpg`.
* **Reading** (`hloc/utils/io.py` `list_h5_names`, `hloc/pairs_from_retrieval.py`
  `get_descriptors`): `visititems` over the datasets, each dataset's parent group path without
  the leading `/` is an image name; descriptors are `fd[name]["global_descriptor"]` as float32.
* **Pairs** (`pairs_from_retrieval.main` / `pairs_from_score_matrix`): similarity = inner
  product; a query never retrieves the database image of the same name (self-matching masked);
  scores below `min_score=0` are dropped; `torch.topk(num_matched)` gives each query's
  database images by descending similarity; the file is `"name0 name1"` lines joined by `\\n`
  (no final newline), read back by `hloc/utils/parsers.py` `parse_retrieval`.

Differences, on purpose: `num_matched` larger than the database returns the whole database
(hloc's `torch.topk` fails); equal scores keep the lower database id. Names that contain
whitespace are refused (hloc's pairs and list files split on whitespace). The file also carries
a root attribute `tf_netvlad_model` (the model's fingerprint, JSON), which hloc's readers never
visit; `append=True` uses it to refuse descriptors of another model.

h5py is imported only when a features file is read or written; TensorFlow never.
"""

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from tf_netvlad.data.fileio import atomic_path
from tf_netvlad.evaluation import ranking

logger = logging.getLogger(__name__)

GLOBAL_KEY = "global_descriptor"
SIZE_KEY = "image_size"
MODEL_ATTR = "tf_netvlad_model"
# hloc's pairs_from_retrieval.main drops retrievals whose similarity is below 0.
MIN_SCORE = 0.0
_SCORE_BLOCK = 64  # queries per block when scoring the retrieved pairs


# --------------------------------------------------------------------------- names and images


def hloc_names(paths, image_dir):
    """hloc image names: `paths` relative to `image_dir`, with `/` separators.

    Raises ValueError for a path outside `image_dir` or a name with whitespace.
    """
    image_dir = os.path.abspath(image_dir)
    names = []
    for path in paths:
        relative = os.path.relpath(os.path.abspath(path), image_dir)
        if relative == os.curdir or relative.split(os.sep)[0] == os.pardir:
            raise ValueError(
                f"Image {os.fspath(path)!r} is not inside {image_dir!r}, the folder hloc's image "
                "names are relative to: pass image_dir (CLI --image-dir) a folder that holds "
                "every image (hloc's --image_dir)."
            )
        names.append(check_name(Path(relative).as_posix()))
    return names


def check_name(name):
    """Returns `name` if hloc can use it: relative, `/`-separated, no `.`/`..` parts, no whitespace."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"An hloc image name must be a non-empty string. Received: {name!r}")
    if any(c.isspace() for c in name):
        raise ValueError(
            f"Image name {name!r} contains whitespace: hloc's pairs and image-list files "
            "separate names by whitespace, so hloc could not read it back. Rename the file."
        )
    if name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"Image name {name!r} is not a relative path like 'db/0001.jpg' (no "
                         "leading '/', no empty, '.' or '..' parts).")
    return name


def check_unique(names, what):
    """Raises ValueError naming the first image name listed twice among the `what` images."""
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"Image {name!r} is listed twice among the {what} images: hloc "
                             "names must be unique.")
        seen.add(name)


def original_size(path):
    """`(width, height)` of an image as hloc records it (after the EXIF orientation, which
    `cv2.imread` applies), read from the header; None when the file cannot be opened."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError):
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


# --------------------------------------------------------------------------- features file


def read_features_info(path):
    """Names, descriptor dim and recorded model of an hloc global-features file.

    Names are found as hloc finds them (the parent group of every dataset). Raises ValueError
    for a file that is not HDF5 or a group without a 1-D `global_descriptor` (a local-features
    file, say).

    Returns:
        dict with `names` (list), `dim` (int or None for an empty file) and `model` (the
        `tf_netvlad_model` attribute as a dict, or None when hloc or another tool wrote it).
    """
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{os.fspath(path)!r} is not an HDF5 features file ({error}).") from None
    with handle:
        names = set()
        handle.visititems(lambda _, obj: names.add(obj.parent.name.strip("/"))
                          if isinstance(obj, h5py.Dataset) else None)
        dims = set()
        for name in sorted(names):
            item = handle[name].get(GLOBAL_KEY)
            if not isinstance(item, h5py.Dataset) or item.ndim != 1:
                raise ValueError(
                    f"{os.fspath(path)!r} is not an hloc global-features file: group {name!r} "
                    f"has no 1-D {GLOBAL_KEY!r} dataset."
                )
            dims.add(int(item.shape[0]))
        if len(dims) > 1:
            raise ValueError(f"{os.fspath(path)!r} mixes descriptor dims {sorted(dims)}.")
        model = handle.attrs.get(MODEL_ATTR)
    return {"names": sorted(names), "dim": dims.pop() if dims else None,
            "model": json.loads(model) if model is not None else None}


def check_output(path, overwrite, append=False, flag="--features"):
    """Refuses an output `path` that is a directory, or that exists unless `overwrite` or `append`."""
    if path is None or not os.path.exists(path) or overwrite or append:
        if path is not None and os.path.isdir(path):
            raise IsADirectoryError(f"{os.fspath(path)!r} is a directory; give a file name.")
        return
    extra = ", --append to add to it" if flag == "--features" else ""
    raise FileExistsError(f"{os.fspath(path)!r} already exists; pass --overwrite (overwrite=True) "
                          f"to replace it{extra}.")


def check_append(existing, dim, model_info, path):
    """Refuses appending `dim`-D descriptors of `model_info` to `existing` ones of another dim or model."""
    if existing["dim"] is not None and existing["dim"] != dim:
        raise ValueError(
            f"{os.fspath(path)!r} holds {existing['dim']}-D descriptors; this model gives "
            f"{dim}-D ones. Append only descriptors of the model that wrote the file."
        )
    stored = existing["model"]
    if stored is None:
        if existing["names"]:
            logger.warning("%s was not written by tf_netvlad: cannot check that its %d "
                           "descriptors come from the same model.", path, len(existing["names"]))
        return
    keys = ("fingerprint", "weights_sha256")
    if model_info is not None and any(stored.get(k) != model_info.get(k) for k in keys):
        raise ValueError(
            f"{os.fspath(path)!r} holds descriptors of another model ({stored.get('source')}, "
            f"fingerprint {str(stored.get('fingerprint'))[:12]}); they are not comparable with "
            f"those of {model_info.get('source')}. Write a new file or use that model."
        )


def write_features(path, names, descriptors, image_sizes=None, as_half=True, overwrite=False,
                   append=False, model_info=None):
    """Writes global descriptors as an hloc features file (see the module docstring).

    Args:
        path: the `.h5` file, written atomically (a failure leaves the old file or none).
        names: hloc image names (`hloc_names`), one per row.
        descriptors: `(N, D)` array-like (an `np.memmap` too), float32 or float16.
        image_sizes: optional `(width, height)` per row, or None rows, for `image_size`.
        as_half: store float16 as hloc's `extract_features.main` does by default; False keeps
            float32.
        overwrite: replace an existing file.
        append: add to an existing file (names already there are replaced); refused when the
            file's descriptors have another dim or come from another model (`model_info`).
        model_info: the model's fingerprint dict, stored as the `tf_netvlad_model` attribute.

    Returns:
        `{"written": N, "replaced": names that were already in the file, "total": names}`.
    """
    return write_feature_blocks(path, [(list(names), descriptors, image_sizes)], as_half,
                                 overwrite, append, model_info)


def write_feature_blocks(path, blocks, as_half, overwrite, append, model_info):
    """`write_features` of several `(names, descriptors, image sizes)` blocks into one file."""
    import h5py

    check_output(path, overwrite, append)
    dims = {int(np.shape(d)[1]) for _, d, _ in blocks if len(np.shape(d)) == 2}
    for names, descriptors, sizes in blocks:
        if len(np.shape(descriptors)) != 2 or len(descriptors) != len(names):
            raise ValueError(f"Need `(N, D)` descriptors, one row per name: {len(names)} names, "
                             f"descriptors of shape {np.shape(descriptors)}.")
        if sizes is not None and len(sizes) != len(names):
            raise ValueError(f"Need one image size per name: {len(names)} names, {len(sizes)} sizes.")
    if len(dims) > 1:
        raise ValueError(f"Descriptor blocks have different dims {sorted(dims)}.")
    names_all = [n for names, _, _ in blocks for n in names]
    check_unique(names_all, "written")
    for name in names_all:
        check_name(name)
    existing = read_features_info(path) if append and os.path.exists(path) else None
    if existing is not None and dims:
        check_append(existing, dims.pop(), model_info, path)
    dtype = np.float16 if as_half else np.float32
    replaced = 0
    with atomic_path(path, ".h5") as tmp:
        if existing is not None:
            shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a" if existing is not None else "w") as handle:
            for names, descriptors, sizes in blocks:
                for i, name in enumerate(names):
                    if name in handle:
                        del handle[name]
                        replaced += 1
                    group = handle.create_group(name)
                    row = np.asarray(descriptors[i], np.float32).astype(dtype)
                    group.create_dataset(GLOBAL_KEY, data=row)
                    if sizes is not None and sizes[i] is not None:
                        group.create_dataset(SIZE_KEY, data=np.asarray(sizes[i], np.int64))
            if model_info is not None and (existing is None or existing["model"] is not None
                                           or not existing["names"]):
                handle.attrs[MODEL_ATTR] = json.dumps(model_info, sort_keys=True)
    total = len(set(names_all) | set(existing["names"] if existing else ()))
    return {"written": len(names_all), "replaced": replaced, "total": total}


# --------------------------------------------------------------------------- pairs


def retrieval_pairs(query_descriptors, db_descriptors, query_names, db_names, num_matched,
                    exclude_self=True, min_score=MIN_SCORE):
    """hloc retrieval pairs: each query's `num_matched` most similar database images.

    Args:
        query_descriptors, db_descriptors: `(Q, D)` and `(N, D)` L2-normalised descriptors
            (arrays or `np.memmap`, float32 or float16); search is exact and streamed.
        query_names, db_names: their hloc names (database names unique).
        num_matched: database images per query (all of them when it exceeds the database).
        exclude_self: a query does not retrieve the database image of the same name (hloc
            always masks it: queries and database are often the same set).
        min_score: retrievals with a lower inner product are dropped (hloc: 0); None keeps all.

    Returns:
        a list of `(query_name, db_name)`, queries in input order, each query's database images
        by descending similarity (ties: lower database index first).
    """
    check_count(num_matched)
    query_descriptors, db_descriptors = (
        x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x, np.float32)
        for x in (query_descriptors, db_descriptors))
    if query_descriptors.ndim != 2 or db_descriptors.ndim != 2:
        raise ValueError("Descriptors must be 2-D `(n, D)` arrays. Received shapes "
                         f"{query_descriptors.shape} and {db_descriptors.shape}.")
    if len(query_descriptors) != len(query_names) or len(db_descriptors) != len(db_names):
        raise ValueError(
            f"Need one name per descriptor: {len(query_names)} query names for "
            f"{len(query_descriptors)} descriptors, {len(db_names)} database names for "
            f"{len(db_descriptors)}."
        )
    if not len(db_names):
        raise ValueError("The database is empty: no pairs can be retrieved.")
    if len(query_names) and query_descriptors.shape[1] != db_descriptors.shape[1]:
        raise ValueError(f"Query descriptors are {query_descriptors.shape[1]}-D, database "
                         f"descriptors {db_descriptors.shape[1]}-D.")
    db_id = {name: i for i, name in enumerate(db_names)}
    if len(db_id) != len(db_names):
        check_unique(db_names, "database")
    if not len(query_names):
        return []
    exclude = None
    if exclude_self:
        exclude = [np.array([db_id[n]] if n in db_id else [], np.int64) for n in query_names]
    ids = ranking.ranked_ids(lambda k: ranking.exact_topk(db_descriptors, query_descriptors, k),
                             num_matched, exclude)
    pairs = []
    for start in range(0, len(ids), _SCORE_BLOCK):
        block = ids[start : start + _SCORE_BLOCK]
        queries = np.asarray(query_descriptors[start : start + _SCORE_BLOCK], np.float32)
        rows = np.asarray(db_descriptors[np.clip(block, 0, None).ravel()], np.float32)
        scores = np.einsum("qd,qkd->qk", queries, rows.reshape(block.shape + (-1,)))
        for row, (found, score) in enumerate(zip(block, scores)):
            keep = (found >= 0) & (True if min_score is None else score >= float(min_score))
            pairs.extend((query_names[start + row], db_names[j]) for j in found[keep])
    return pairs


def check_count(num_matched):
    """Refuses a `num_matched` that is not a positive int."""
    if isinstance(num_matched, (bool, np.bool_)) or not isinstance(num_matched, (int, np.integer)) \
            or num_matched < 1:
        raise ValueError("`num_matched` (CLI --num-matched) must be a positive int. Received: "
                         f"num_matched={num_matched!r}")


def write_pairs(path, pairs, overwrite=False):
    """Writes `(name0, name1)` pairs as hloc does: `"name0 name1"` lines joined by `\\n`."""
    check_output(path, overwrite, flag="--pairs")
    text = "\n".join(f"{a} {b}" for a, b in pairs)
    with atomic_path(path, ".txt") as tmp:
        with open(tmp, "w") as handle:
            handle.write(text)
    return os.fspath(path)
