"""RetrievalIndex: an on-disk descriptor database with a faiss index, built resumably and growable.

An index directory holds:

* `descriptors.f32` (or `descriptors.f16` with `float16=True`): the raw row-major `(count, dim)`
  descriptor matrix, read back as a read-only `np.memmap`. Row `i` is faiss id `i`.
* `index-<generation>.faiss`: the faiss index ("flat" exact inner product by default, "ivfpq",
  "hnsw" or any faiss factory string). `add()` writes a new generation, then switches
  `metadata.json` to it, so an interruption never leaves the metadata pointing at a wrong file.
* `metadata.json`: image paths (relative to `root` unless absolute), positions (UTM metres, `null`
  when unknown), the model fingerprint, the resize policy, the index kind, the storage dtype, the
  count and the skipped images with the reason each could not be read.
* `progress.json`: present only while a build or an `add()` runs (or was interrupted). It records
  how many input images and descriptor rows are complete; a re-run with the same inputs truncates
  the descriptor file to the last complete chunk and continues from there.

Extraction streams `chunk_size` images at a time (one float32 chunk in memory, appended to the
file and flushed before the progress marker moves), so memory stays bounded for any database size.
Images that cannot be read are logged, recorded with their reason and left out of the index; the
others are indexed (`on_error="skip"`, the default here).

The model fingerprint is a SHA-256 of the model's architecture (its config with layer names
removed, the shapes of all weights, the descriptor dim); `weights_sha256` hashes the weight values.
Searching or adding with a model whose fingerprint, weights or dim differ from the index's is
refused, because its descriptors are not comparable with the stored ones.

This module imports TensorFlow only when a model is loaded or images are extracted.
"""

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from tf_netvlad import index as faiss_lib
from tf_netvlad.fileio import atomic_path, resolve_paths

logger = logging.getLogger(__name__)

FORMAT = "tf_netvlad-retrieval-index"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
PROGRESS_FILE = "progress.json"
KINDS = ("flat", "ivfpq", "hnsw")
DEFAULT_CHUNK_SIZE = 256
HNSW_NEIGHBOURS = 32
HNSW_EF_SEARCH = 128
IVF_MAX_NPROBE = 32
IVF_TRAIN_SIZE = 100_000
TRAIN_BYTES = 1 << 30  # float32 training sample cap (65k rows at 4096-D)
_NAME_KEYS = ("name", "keras_history", "backbone_name", "trainable")


# --------------------------------------------------------------------------- model identity


def _load_model(model_or_path):
    """Returns `(model, label)`: the `.keras` path, or the model's name for a model object."""
    from tf_netvlad.model import resolve_model

    model, path = resolve_model(model_or_path, any_keras_model=True)
    return model, path or f"model {model.name!r}"


def _descriptor_dim(model):
    dim = getattr(model, "descriptor_dim", None)
    if dim is None:
        shape = model.output_shape
        dim = shape[-1] if isinstance(shape, tuple) else None
    if not isinstance(dim, int):
        raise ValueError(f"Cannot tell the descriptor dim of {model.name!r}: output {dim!r}.")
    return int(dim)


def _strip_names(value):
    """Drops layer names (auto-numbered names differ between processes) from a Keras config."""
    if isinstance(value, dict):
        return {k: _strip_names(v) for k, v in value.items() if k not in _NAME_KEYS}
    if isinstance(value, (list, tuple)):
        return [_strip_names(v) for v in value]
    return value


def model_fingerprint(model):
    """Identity of a descriptor model: which index its descriptors can be compared with.

    Returns:
        dict with `fingerprint` (SHA-256 of the config without layer names, the weight shapes and
        the descriptor dim), `weights_sha256` (SHA-256 of all weight values), `descriptor_dim`
        and `name` (informational only).
    """
    dim = _descriptor_dim(model)
    try:
        config = _strip_names(model.get_config())
    except (NotImplementedError, TypeError):
        config = type(model).__name__
    weights = model.get_weights()
    architecture = json.dumps(
        {"config": config, "weight_shapes": [list(w.shape) for w in weights],
         "descriptor_dim": dim},
        sort_keys=True, default=str,
    )
    digest = hashlib.sha256()
    for weight in weights:
        digest.update(np.ascontiguousarray(weight).tobytes())
    return {
        "fingerprint": hashlib.sha256(architecture.encode()).hexdigest(),
        "weights_sha256": digest.hexdigest(),
        "descriptor_dim": dim,
        "name": str(model.name),
    }


# --------------------------------------------------------------------------- inputs


def images_in_folder(folder):
    """Sorted image files under `folder` (recursive) and their positions if every name is
    `@utm_east@utm_north@...` (VPR-datasets-downloader), else None.

    Returns:
        `(relative_paths, positions (n, 2) float64 or None)`.
    """
    from tf_netvlad import places

    folder = Path(folder)
    files = places._list_images(folder)
    relative = [os.path.relpath(f, folder) for f in files]
    try:
        positions = np.array([places.parse_utm_filename(f.name)[:2] for f in files], np.float64)
    except ValueError:
        positions = None
    return relative, positions


def _as_positions(positions, count, name="positions"):
    if positions is None:
        return np.full((count, 2), np.nan)
    array = np.asarray(positions, dtype=np.float64)
    if array.shape != (count, 2):
        raise ValueError(
            f"`{name}` must have shape ({count}, 2): one (easting, northing) per image. "
            f"Received shape {array.shape}"
        )
    if np.isinf(array).any():
        raise ValueError(f"`{name}` contains inf values; use NaN for unknown positions.")
    return array


def _resolve_images(images, positions, root):
    """`images` (PlaceSplit | split file | image folder | path list) -> (paths, positions, root)."""
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            paths, found = images_in_folder(path)
            return paths, _as_positions(found if positions is None else positions,
                                        len(paths)), os.path.abspath(path)
        if not path.exists():
            raise FileNotFoundError(
                f"`images` {os.fspath(images)!r} does not exist: expected an image folder, a "
                ".mat/.csv split file, a PlaceSplit or a list of image paths."
            )
        from tf_netvlad.places import load_split

        images = load_split(path, root=root)
    if hasattr(images, "db_paths") and hasattr(images, "db_utm"):
        root = images.root if root is None else root
        positions = images.db_utm if positions is None else positions
        images = images.db_paths
    if images is None or isinstance(images, (bytes, dict)):
        raise TypeError(f"`images` must be a split or a list of image paths. Received: {images!r}")
    paths = [os.fspath(p) for p in images]
    if not paths:
        raise ValueError("`images` is empty: need at least one image to index.")
    return paths, _as_positions(positions, len(paths)), (
        None if root is None else os.path.abspath(root))


def _inputs_sha256(paths, positions, root):
    digest = hashlib.sha256(json.dumps([root, paths]).encode())
    digest.update(np.ascontiguousarray(positions, np.float64).tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- kinds


def _largest_divisor(n, at_most):
    return max(d for d in range(1, max(1, at_most) + 1) if n % d == 0)


def resolve_kind(kind, count, dim, float16=False):
    """Maps "flat" | "ivfpq" | "hnsw" | factory string to `(factory, search_params)`.

    "flat": exact inner product (`IndexFlatIP`); with `float16` storage "SQfp16", an exact search
    over the float16 values that holds half the memory.
    "ivfpq": `IVF{nlist},PQ{m}x{nbits}` with nlist ~ 4·sqrt(count) (at least 39 training points
    per cell), m the largest divisor of dim <= min(64, dim/4), nbits 8 (fewer below 9984 images,
    keeping 39 training points per PQ centroid);
    searched with nprobe = min(nlist, 32). "hnsw": `HNSW32`, efSearch 128.
    """
    if kind == "flat":
        return ("SQfp16" if float16 else "flat"), {}
    if kind == "ivfpq":
        nlist = int(max(1, min(round(4 * math.sqrt(count)), count // 39)))
        nbits = int(max(1, min(8, math.floor(math.log2(max(count, 39) / 39)))))
        m = _largest_divisor(dim, min(64, dim // 4))
        return f"IVF{nlist},PQ{m}x{nbits}", {"nprobe": min(nlist, IVF_MAX_NPROBE)}
    if kind == "hnsw":
        return f"HNSW{HNSW_NEIGHBOURS}", {"efSearch": HNSW_EF_SEARCH}
    if isinstance(kind, str) and kind.strip():
        return kind.strip(), {}
    raise ValueError(
        f"`kind` must be one of {KINDS} or a faiss index_factory string such as 'IVF256,PQ32'. "
        f"Received: kind={kind!r}"
    )


def _apply_search_params(index, params):
    faiss = faiss_lib._faiss()
    if "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    if "efSearch" in params and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(params["efSearch"])


# --------------------------------------------------------------------------- files


def _write_json(data, path):
    text = json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n"
    with atomic_path(path, ".json") as tmp:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


def _read_json(path):
    with open(path) as handle:
        return json.load(handle)


def _positions_json(positions):
    return [None if not np.isfinite(p).all() else [float(p[0]), float(p[1])] for p in positions]


def _positions_array(values):
    return np.array([[np.nan, np.nan] if v is None else v for v in values], np.float64).reshape(-1, 2)


def _write_faiss(index, path):
    faiss = faiss_lib._faiss()
    with atomic_path(path, ".faiss") as tmp:
        faiss.write_index(index, tmp)


# --------------------------------------------------------------------------- streaming extraction


def _extract_into(directory, state, model, full_paths, image_size, batch_size, chunk_size,
                  on_error, progress):
    """Appends descriptors of `full_paths[state.images_done:]` to the descriptor file, chunk by
    chunk, moving `progress.json` forward after each flushed chunk. Mutates and returns `state`."""
    from tqdm.auto import tqdm

    from tf_netvlad import extract

    dtype = np.dtype(state["dtype"])
    row_bytes = state["dim"] * dtype.itemsize
    descriptors_path = directory / state["descriptors_file"]
    with open(descriptors_path, "ab"):
        pass
    os.truncate(descriptors_path, state["rows_done"] * row_bytes)  # drop a half-written chunk
    buffer = np.empty((min(chunk_size, len(full_paths)), state["dim"]), np.float32)
    total, done = len(full_paths), state["images_done"]
    with tqdm(total=total, initial=done, desc="indexing", unit="img", disable=not progress,
              dynamic_ncols=True) as bar:
        for start in range(done, total, chunk_size):
            chunk = full_paths[start : start + chunk_size]
            out = buffer[: len(chunk)]
            result = extract.extract_descriptors(
                model, chunk, image_size=image_size, batch_size=batch_size, progress=False,
                on_error=on_error, out=out,
            )
            skipped = result[1] if on_error == "skip" else np.zeros(0, np.int64)
            keep = np.ones(len(chunk), bool)
            keep[skipped] = False
            with open(descriptors_path, "ab") as handle:
                handle.write(out[keep].astype(dtype).tobytes())
                handle.flush()
                os.fsync(handle.fileno())
            for i in skipped:
                reason = _diagnose(chunk[i])
                logger.warning("Skipped image %s: %s", chunk[i], reason)
                state["skipped"].append({"input_index": int(start + i), "path": chunk[i],
                                         "reason": reason})
            state["images_done"] = start + len(chunk)
            state["rows_done"] += int(keep.sum())
            _write_json(state, directory / PROGRESS_FILE)
            bar.update(len(chunk))
    return state


def _diagnose(path):
    from tf_netvlad import data

    return data.diagnose_image(path) or "could not be read or decoded"


def _kept_input_indices(count, skipped):
    keep = np.ones(count, bool)
    keep[[s["input_index"] for s in skipped]] = False
    return np.flatnonzero(keep)


def _check_options(image_size, batch_size, chunk_size, on_error):
    from tf_netvlad import data

    image_size = data.parse_image_size(image_size)
    data.check_batch_size(batch_size)
    data.check_on_error(on_error)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
            or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int. Received: chunk_size={chunk_size!r}")
    return image_size


def _pending_state(directory, expected, what):
    """Returns a resumable progress state matching `expected`, or None. Raises on a mismatch."""
    path = directory / PROGRESS_FILE
    if not path.exists():
        return None
    state = _read_json(path)
    for key, value in expected.items():
        if state.get(key) != value:
            raise ValueError(
                f"{os.fspath(directory)!r} holds an interrupted {state.get('operation')} "
                f"({state.get('images_done')} of {state.get('num_inputs')} images done) with a "
                f"different `{key}`: {state.get(key)!r} there, {value!r} now. Re-run it with the "
                f"same arguments to resume, pass resume=False to start the {what} over, or use "
                "another directory."
            )
    return state


def _remove(directory, names):
    for name in names:
        path = directory / name
        if path.exists():
            path.unlink()


def _index_files(directory):
    return [p.name for p in directory.glob("index-*.faiss")]


# --------------------------------------------------------------------------- build


def build_retrieval_index(
    model_or_path, out_dir, images, positions=None, root=None, image_size=None, kind="flat",
    float16=False, batch_size=8, chunk_size=DEFAULT_CHUNK_SIZE, on_error="skip", resume=True,
    overwrite=False, progress=True, seed=43,
):
    """Extracts descriptors of database images into `out_dir` and builds a faiss index over them.

    Args:
        model_or_path: a descriptor `keras.Model` or a `.keras` file.
        out_dir: index directory (created; see the module docstring for its files).
        images: a `PlaceSplit` (its database images and `db_utm`), a `.mat`/`.csv` split file,
            a folder of images (recursive; positions from `@utm_east@utm_north@` names if every
            name has them), or a sequence of image paths (relative to `root` unless absolute).
        positions: optional `(n, 2)` UTM positions (easting, northing), NaN where unknown;
            overrides the split's/folder's.
        root: image root for relative paths (default: the split's root).
        image_size: resize policy (None/"keep", max side, or (H, W)); stored and reused by
            `localize`.
        kind: "flat" (exact inner product, default), "ivfpq", "hnsw" or a faiss factory string;
            see `resolve_kind`. Approximate kinds are trained on a seeded random sample of up
            to 100k stored descriptors (and at most 1 GiB as float32).
        float16: store descriptors as float16 (half the disk; a "flat" index then stores
            float16 too and searches them exactly).
        batch_size: images per model call.
        chunk_size: images per streamed chunk (memory holds one float32 chunk of descriptors).
        on_error: "skip" (default) logs, records and leaves out unreadable images; "raise" stops
            with `ImageReadError` naming the file (the partial build is kept and resumes).
        resume: continue an interrupted build of the same inputs/model/policy/dtype in `out_dir`;
            False discards it.
        overwrite: replace a complete index in `out_dir` (otherwise refused; see `add`).
        progress: show a tqdm bar.
        seed: RNG seed of the training subsample of approximate kinds.

    Returns:
        the loaded `RetrievalIndex`.
    """
    from tf_netvlad import data

    image_size = _check_options(image_size, batch_size, chunk_size, on_error)
    resolve_kind(kind, 1, 4)
    paths, positions, root = _resolve_images(images, positions, root)
    full_paths = resolve_paths(paths, root)
    if on_error == "raise":
        data.check_files_exist(full_paths)
    model, label = _load_model(model_or_path)
    fingerprint = model_fingerprint(model)
    dim = fingerprint["descriptor_dim"]
    if kind not in KINDS:
        _check_factory(kind, dim)
    directory = _prepare_directory(out_dir, overwrite)
    dtype = "float16" if float16 else "float32"
    expected = {
        "operation": "build", "inputs_sha256": _inputs_sha256(paths, positions, root),
        "model": {k: fingerprint[k] for k in ("fingerprint", "weights_sha256", "descriptor_dim")},
        "image_size": data.format_image_size(image_size), "dtype": dtype,
    }
    state = _pending_state(directory, expected, "build") if resume else None
    descriptors_file = "descriptors.f16" if float16 else "descriptors.f32"
    if state is None:
        _remove(directory, [PROGRESS_FILE, "descriptors.f32", "descriptors.f16"])
        state = dict(expected, num_inputs=len(paths), dim=dim, descriptors_file=descriptors_file,
                     images_done=0, rows_done=0, skipped=[])
        directory.mkdir(parents=True, exist_ok=True)
        _write_json(state, directory / PROGRESS_FILE)
    elif state["images_done"]:
        logger.info("Resuming the build in %s at image %d of %d.", directory,
                    state["images_done"], len(paths))
    state = _extract_into(directory, state, model, full_paths, image_size, batch_size, chunk_size,
                          on_error, progress)
    metadata = _finish_build(directory, state, paths, positions, root, kind, dict(
        fingerprint, source=label), seed)
    logger.info("Indexed %d of %d images in %s (%s, %s); %d skipped.", metadata["count"],
                len(paths), directory, metadata["factory"], dtype, len(metadata["skipped"]))
    return RetrievalIndex.load(directory)


def _prepare_directory(out_dir, overwrite):
    directory = Path(out_dir)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"`out_dir` {os.fspath(out_dir)!r} is a file, not a directory.")
    if (directory / METADATA_FILE).exists():
        if not overwrite:
            raise FileExistsError(
                f"{os.fspath(out_dir)!r} already holds a complete retrieval index. Use "
                "RetrievalIndex.load(...).add(...) (CLI: --add) to append images, "
                "overwrite=True to replace it, or another directory."
            )
        _remove(directory, [METADATA_FILE, PROGRESS_FILE, "descriptors.f32", "descriptors.f16",
                            *_index_files(directory)])
    return directory


def _finish_build(directory, state, paths, positions, root, kind, model_info, seed):
    """Metadata and faiss index for a completed extraction; removes the progress marker."""
    from tf_netvlad import data

    kept = _kept_input_indices(len(paths), state["skipped"])
    if not len(kept):
        _remove(directory, [PROGRESS_FILE, state["descriptors_file"]])
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in state["skipped"][:3])
        raise data.ImageReadError(
            f"None of the {len(paths)} images could be read, nothing was indexed ({reasons}).",
            path=state["skipped"][0]["path"],
        )
    dim, float16 = state["dim"], state["dtype"] == "float16"
    metadata = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "count": int(len(kept)), "dim": dim,
        "dtype": state["dtype"], "descriptors_file": state["descriptors_file"], "metric": "ip",
        "kind": kind, "image_size": state["image_size"], "root": root,
        "paths": [paths[i] for i in kept], "positions": _positions_json(positions[kept]),
        "model": model_info,
        "skipped": [{"path": paths[s["input_index"]], "reason": s["reason"]}
                    for s in state["skipped"]],
        "generation": -1,
    }
    db = _open_descriptors(directory, metadata)
    factory, params = resolve_kind(kind, len(db), dim, float16)
    train_size = min(len(db), IVF_TRAIN_SIZE, max(1, TRAIN_BYTES // (4 * dim)))
    try:
        faiss_index = faiss_lib.build_index(db, kind=factory, train_size=train_size, seed=seed)
    except RuntimeError as error:
        raise ValueError(
            f"faiss could not build a {factory!r} index over {len(db)} descriptors ({error}). "
            "Use kind='flat' for small databases; the extracted descriptors are kept, so a "
            "re-run with another kind resumes without extracting again."
        ) from error
    _apply_search_params(faiss_index, params)
    metadata.update(factory=factory, search_params=params)
    del db
    _commit(directory, metadata, faiss_index)
    _remove(directory, [PROGRESS_FILE])
    return metadata


def _check_factory(kind, dim):
    faiss = faiss_lib._faiss()
    try:
        faiss.index_factory(int(dim), kind, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ValueError(
            f"`kind` must be one of {KINDS} or a valid faiss index_factory string for "
            f"{dim}-D descriptors. Received: kind={kind!r}"
        ) from error


def _open_descriptors(directory, metadata):
    path = directory / metadata["descriptors_file"]
    dtype = np.dtype(metadata["dtype"])
    shape = (int(metadata["count"]), int(metadata["dim"]))
    needed = shape[0] * shape[1] * dtype.itemsize
    size = path.stat().st_size if path.exists() else -1
    if size < needed:
        raise ValueError(
            f"Descriptor file {os.fspath(path)!r} has {max(size, 0)} bytes but the metadata "
            f"needs {needed} ({shape[0]} x {shape[1]} {dtype.name}): the index is damaged; "
            "rebuild it."
        )
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


def _commit(directory, metadata, faiss_index):
    """Writes the next index generation, then the metadata pointing to it, then drops the old."""
    old = metadata.get("index_file")
    metadata["generation"] = int(metadata["generation"]) + 1
    metadata["index_file"] = f"index-{metadata['generation']}.faiss"
    _write_faiss(faiss_index, directory / metadata["index_file"])
    _write_json(metadata, directory / METADATA_FILE)
    stale = [name for name in _index_files(directory) if name != metadata["index_file"]]
    if old and old not in stale and old != metadata["index_file"]:
        stale.append(old)
    _remove(directory, stale)


# --------------------------------------------------------------------------- the index


class ModelMismatchError(ValueError):
    """A model's descriptors are not comparable with those stored in an index."""


class RetrievalIndex:
    """A built index directory: descriptors (memmap), faiss index and metadata.

    Load with `RetrievalIndex.load(directory)`; build with `build_retrieval_index`.

    Attributes:
        directory: the index directory (`Path`).
        metadata: the parsed `metadata.json` dict.
        count, dim: number of indexed images and descriptor dim.
        paths: indexed image paths (relative to `root` unless absolute), faiss id order.
        positions: `(count, 2)` float64 UTM positions, NaN where unknown.
        image_size: the resize policy the descriptors were extracted with.
        descriptors: read-only `np.memmap (count, dim)` float32 or float16.
        faiss_index: the faiss index (ids are rows of `descriptors`).

    Example:
    >>> index = RetrievalIndex.load("pitts_index")
    >>> scores, ids = index.search(query_descriptors, k=5)
    >>> [index.full_path(i) for i in ids[0]]
    """

    def __init__(self, directory, metadata, faiss_index):
        self.directory = Path(directory)
        self.metadata = metadata
        self.faiss_index = faiss_index
        self.positions = _positions_array(metadata["positions"])
        self.descriptors = _open_descriptors(self.directory, metadata)

    @classmethod
    def load(cls, directory):
        """Opens an index directory; clear errors for a missing, foreign or unfinished one."""
        directory = Path(directory)
        meta_path = directory / METADATA_FILE
        if not meta_path.exists():
            if (directory / PROGRESS_FILE).exists():
                state = _read_json(directory / PROGRESS_FILE)
                raise ValueError(
                    f"{os.fspath(directory)!r} holds an unfinished index build "
                    f"({state.get('images_done')} of {state.get('num_inputs')} images "
                    "extracted): re-run the build with the same arguments to resume it."
                )
            raise FileNotFoundError(
                f"{os.fspath(directory)!r} is not a tf_netvlad retrieval index (no "
                f"{METADATA_FILE}). Build one with `tf_netvlad index`."
            )
        metadata = _read_json(meta_path)
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{os.fspath(meta_path)!r} is not a {FORMAT} metadata file.")
        if metadata.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{os.fspath(directory)!r} uses index format version "
                f"{metadata['format_version']}; this tf_netvlad reads up to {FORMAT_VERSION}."
            )
        faiss = faiss_lib._faiss()
        faiss_index = faiss.read_index(os.fspath(directory / metadata["index_file"]))
        if faiss_index.ntotal != metadata["count"] or faiss_index.d != metadata["dim"]:
            raise ValueError(
                f"{os.fspath(directory)!r}: the faiss index holds {faiss_index.ntotal} vectors "
                f"of dim {faiss_index.d} but the metadata says {metadata['count']} of dim "
                f"{metadata['dim']}: the index is damaged; rebuild it."
            )
        _apply_search_params(faiss_index, metadata.get("search_params") or {})
        return cls(directory, metadata, faiss_index)

    # ------------------------------------------------------------------ basics
    @property
    def count(self):
        return int(self.metadata["count"])

    @property
    def dim(self):
        return int(self.metadata["dim"])

    @property
    def paths(self):
        return self.metadata["paths"]

    @property
    def root(self):
        return self.metadata["root"]

    @property
    def image_size(self):
        from tf_netvlad import data

        return data.parse_image_size(self.metadata["image_size"])

    def full_path(self, i):
        """Path of indexed image `i`, joined onto the index root when relative."""
        return resolve_paths([self.paths[int(i)]], self.root)[0]

    def __len__(self):
        return self.count

    def __repr__(self):
        return (f"RetrievalIndex({os.fspath(self.directory)!r}, count={self.count}, "
                f"dim={self.dim}, factory={self.metadata['factory']!r}, "
                f"dtype={self.metadata['dtype']})")

    def search(self, descriptors, k=5):
        """Top-k inner-product search. Returns `(scores float32 (Q, k'), ids int64 (Q, k'))`,
        best first, `k' = min(k, count)`; ids index `paths`/`positions` (-1 = no result, which
        approximate kinds can return)."""
        return faiss_lib.search(self.faiss_index, descriptors, k)

    def check_model(self, model, label=None):
        """Raises `ModelMismatchError` if `model`'s descriptors are not comparable with ours."""
        found = model_fingerprint(model)
        stored = self.metadata["model"]
        label = label or f"model {found['name']!r}"
        where = (f"Index {os.fspath(self.directory)!r} was built with {stored.get('source')} "
                 f"(model name {stored['name']!r})")
        if found["descriptor_dim"] != self.dim:
            raise ModelMismatchError(
                f"{where}, which gives {self.dim}-D descriptors, but {label} gives "
                f"{found['descriptor_dim']}-D descriptors. Use the index's model or build a new "
                "index with this one."
            )
        if found["fingerprint"] != stored["fingerprint"]:
            raise ModelMismatchError(
                f"{where}; {label} has a different architecture (fingerprint "
                f"{found['fingerprint'][:12]} vs {stored['fingerprint'][:12]}). Its descriptors "
                "are not comparable: use the index's model or build a new index."
            )
        if found["weights_sha256"] != stored["weights_sha256"]:
            raise ModelMismatchError(
                f"{where}; {label} has the same architecture but different weights (retrained, "
                "re-initialised or re-whitened?). Its descriptors are not comparable: use the "
                "index's model or build a new index with this one."
            )

    # ------------------------------------------------------------------ growing
    def add(self, model_or_path, images, positions=None, root=None, batch_size=8,
            chunk_size=DEFAULT_CHUNK_SIZE, on_error="skip", progress=True):
        """Extracts and appends images to this index (same model and resize policy required).

        Args:
            model_or_path: the index's model (`check_model` refuses any other).
            images, positions, root: as in `build_retrieval_index`. Paths under the index root
                are stored relative to it, others absolute.
            batch_size, chunk_size, on_error, progress: as in `build_retrieval_index`.

        An interrupted `add` of the same images resumes; one of other images is discarded.

        Returns:
            `self`, updated (new ids are `old count ... count - 1`, in input order minus skips).
        """
        _check_options(self.metadata["image_size"], batch_size, chunk_size, on_error)
        model, label = _load_model(model_or_path)
        self.check_model(model, label)
        paths, positions, root = _resolve_images(images, positions, root)
        full_paths = [os.path.abspath(p) for p in resolve_paths(paths, root)]
        if on_error == "raise":
            from tf_netvlad import data

            data.check_files_exist(full_paths)
        stored_paths = [self._stored_path(p) for p in full_paths]
        expected = {"operation": "add", "inputs_sha256": _inputs_sha256(full_paths, positions, None),
                    "base_count": self.count, "generation": self.metadata["generation"]}
        try:
            state = _pending_state(self.directory, expected, "add")
        except ValueError as error:
            logger.warning("Discarding an unfinished operation: %s", error)
            state = None
        if state is None:
            state = dict(expected, num_inputs=len(paths), dim=self.dim, dtype=self.metadata["dtype"],
                         descriptors_file=self.metadata["descriptors_file"], images_done=0,
                         rows_done=self.count, skipped=[])
            _write_json(state, self.directory / PROGRESS_FILE)
        state = _extract_into(self.directory, state, model, full_paths, self.image_size,
                              batch_size, chunk_size, on_error, progress)
        kept = _kept_input_indices(len(paths), state["skipped"])
        metadata = dict(self.metadata)
        metadata["count"] = self.count + len(kept)
        metadata["paths"] = self.paths + [stored_paths[i] for i in kept]
        metadata["positions"] = self.metadata["positions"] + _positions_json(positions[kept])
        metadata["skipped"] = self.metadata["skipped"] + [
            {"path": stored_paths[s["input_index"]], "reason": s["reason"]}
            for s in state["skipped"]]
        db = _open_descriptors(self.directory, metadata)
        for start in range(self.count, len(db), faiss_lib.DEFAULT_CHUNK_SIZE):
            stop = min(len(db), start + faiss_lib.DEFAULT_CHUNK_SIZE)
            self.faiss_index.add(faiss_lib._as_float32(db[start:stop], "descriptors", start))
        del db
        _commit(self.directory, metadata, self.faiss_index)
        _remove(self.directory, [PROGRESS_FILE])
        logger.info("Added %d of %d images to %s (now %d); %d skipped.", len(kept), len(paths),
                    self.directory, metadata["count"], len(state["skipped"]))
        self.__init__(self.directory, metadata, self.faiss_index)
        return self

    def _stored_path(self, full_path):
        root = self.root
        if root is not None and full_path.startswith(os.path.join(root, "")):
            return os.path.relpath(full_path, root)
        return full_path
