"""On-disk layout of a retrieval index directory: inputs, JSON files, streamed descriptors.

The directory format is described in `tf_netvlad.retrieval.index`. This module holds the parts
that touch files: resolving the images to index, the atomic JSON writers, the progress marker of
a resumable build, the chunked extraction that appends descriptors to `descriptors.f32|f16`, and
the commit of a new faiss index generation.

File names read from `metadata.json` and `progress.json` (`descriptors_file`, `index_file`) must
be plain names of files inside the index folder (`fileio.confined_path`), and the descriptor file
is never written through a symbolic or hard link, so a folder someone hands you cannot make
`add` or a resumed build truncate or delete a file elsewhere. Writers hold the folder's
`tf_netvlad.data.locking.DirectoryLock` (taken by `build_retrieval_index` and
`RetrievalIndex.add`); the temp files of a killed writer are removed by the next one.

Importing this module does not import TensorFlow; `extract_into` does, to run the model.
"""

import errno
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from tf_netvlad.data.fileio import atomic_path, confined_path, write_json
from tf_netvlad.data.scratch import remove_orphans
from tf_netvlad.search import faiss_index as faiss_lib

logger = logging.getLogger("tf_netvlad.retrieval.index")

FORMAT = "tf_netvlad-retrieval-index"
# 2: exact kinds keep no faiss file (rebuilt from the descriptors at load);
# 3: an HNSW file holds the graph only (its vectors are re-attached from the descriptors)
FORMAT_VERSION = 3
METADATA_FILE = "metadata.json"
PROGRESS_FILE = "progress.json"
# Exact kinds whose faiss index is nothing but the descriptors: rebuilt from the descriptor file
# when the index is loaded instead of being stored a second time.
REBUILT_FACTORIES = ("flat", "SQfp16")


# --------------------------------------------------------------------------- inputs


def images_in_folder(folder):
    """Sorted image files under `folder` (recursive) and their positions if every name is
    `@utm_east@utm_north@...` (VPR-datasets-downloader), else None.

    Returns:
        `(relative_paths, positions (n, 2) float64 or None)`.
    """
    from tf_netvlad.data import image_folders

    folder = Path(folder)
    files = image_folders.list_images(folder)
    relative = [os.path.relpath(f, folder) for f in files]
    try:
        positions = np.array([image_folders.parse_utm_filename(f.name)[:2] for f in files], np.float64)
    except ValueError:
        positions = None
    return relative, positions


def as_positions(positions, count, name="positions"):
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


def resolve_images(images, positions, root):
    """`images` (PlaceSplit | split file | image folder | path list) -> (paths, positions, root)."""
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            paths, found = images_in_folder(path)
            return paths, as_positions(found if positions is None else positions,
                                       len(paths)), os.path.abspath(path)
        if not path.exists():
            raise FileNotFoundError(
                f"`images` {os.fspath(images)!r} does not exist: expected an image folder, a "
                ".mat/.csv split file, a PlaceSplit or a list of image paths."
            )
        from tf_netvlad.data.split_loading import load_split

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
    return paths, as_positions(positions, len(paths)), (
        None if root is None else os.path.abspath(root))


def refuse_duplicates(full_paths, indexed=(), directory=None):
    """ValueError when an image is listed twice, or (`indexed`: full paths already in the index at
    `directory`) is already indexed: a place must not be found twice in a ranking."""
    seen, twice = set(), []
    for path in full_paths:
        key = os.path.normcase(os.path.abspath(path))
        if key in seen:
            twice.append(path)
        seen.add(key)
    if twice:
        raise ValueError(f"{len(twice)} image(s) are listed more than once (first: {twice[0]}); "
                         "list each image once.")
    already = {os.path.normcase(os.path.abspath(p)) for p in indexed} & seen
    if already:
        first = next(p for p in full_paths if os.path.normcase(os.path.abspath(p)) in already)
        raise ValueError(f"{len(already)} of the images to add are already in the index {directory} "
                         f"(first: {first}); leave them out of the --add list.")


def inputs_sha256(paths, positions, root):
    digest = hashlib.sha256(json.dumps([root, paths]).encode())
    digest.update(np.ascontiguousarray(positions, np.float64).tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- files and generations


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


# File names an index's JSON files hold: each must name a file inside the folder.
NAME_KEYS = ("descriptors_file", "index_file")


def read_checked(path):
    """A metadata or progress JSON file whose file-name entries are plain names in its folder
    (`confined_path`); a one-line error naming `path` otherwise."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{os.fspath(path)!r} is not a tf_netvlad index file (no JSON object).")
    for key in NAME_KEYS:
        if data.get(key) is not None or (key == "descriptors_file" and key in data):
            confined_path(path.parent, data[key], path, key)
    return data


def check_unchanged(directory, metadata):
    """Refuses to write from a stale in-memory index: `metadata.json` must still be `metadata`'s
    generation (another process may have added images since this index was loaded)."""
    path = Path(directory) / METADATA_FILE
    on_disk = read_checked(path) if path.exists() else {}
    if on_disk.get("generation") != metadata.get("generation") or \
            on_disk.get("count") != metadata.get("count"):
        raise ValueError(
            f"{os.fspath(path)!r} changed since this index was loaded (generation "
            f"{metadata.get('generation')} with {metadata.get('count')} images then, "
            f"{on_disk.get('generation')} with {on_disk.get('count')} now): another writer "
            "updated it. Load it again (RetrievalIndex.load) and repeat the add."
        )


def positions_json(positions):
    return [None if not np.isfinite(p).all() else [float(p[0]), float(p[1])] for p in positions]


def positions_array(values):
    return np.array([[np.nan, np.nan] if v is None else v for v in values], np.float64).reshape(-1, 2)


def write_faiss(index, path, skip_storage=False):
    with atomic_path(path, ".faiss") as tmp:
        faiss_lib.write_index(index, tmp, skip_storage=skip_storage)


def open_descriptors(directory, metadata):
    path = confined_path(directory, metadata["descriptors_file"], Path(directory) / METADATA_FILE,
                         "descriptors_file")
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


def commit(directory, metadata, faiss_index):
    """Writes the next index generation, then the metadata pointing to it, then drops the old.

    An exact kind (`REBUILT_FACTORIES`) writes no faiss file: `index_file` is None and the index
    is rebuilt from the descriptor file at load, so the descriptors are on disk once. An HNSW
    index over raw vectors writes its graph only (`vectors_in_index_file` False): its vectors are
    the descriptor file, re-attached at load.
    """
    metadata["generation"] = int(metadata["generation"]) + 1
    metadata["format_version"] = FORMAT_VERSION
    if metadata["factory"] in REBUILT_FACTORIES:
        metadata["index_file"] = metadata["vectors_in_index_file"] = None
    else:
        metadata["index_file"] = f"index-{metadata['generation']}.faiss"
        graph_only = faiss_lib.has_flat_storage(faiss_index)
        metadata["vectors_in_index_file"] = not graph_only
        write_faiss(faiss_index, directory / metadata["index_file"], skip_storage=graph_only)
    write_json(metadata, directory / METADATA_FILE, allow_nan=False)
    remove(directory, [name for name in index_files(directory) if name != metadata["index_file"]])


def remove(directory, names):
    for name in names:
        path = directory / name
        if path.exists():
            path.unlink()


def index_files(directory):
    return [p.name for p in directory.glob("index-*.faiss")]


# --------------------------------------------------------------------------- resumable streaming extraction


def check_options(batch_size, chunk_size, on_error):
    """Validates the extraction options of a build or an add before any work starts."""
    from tf_netvlad.data import pipelines

    pipelines.check_batch_size(batch_size)
    pipelines.check_on_error(on_error)
    pipelines.check_positive_int(chunk_size, "chunk_size")


def pending_state(directory, expected, what):
    """Returns a resumable progress state matching `expected`, or None. Raises on a mismatch."""
    path = directory / PROGRESS_FILE
    if not path.exists():
        return None
    state = read_checked(path)
    for key, value in expected.items():
        if state.get(key) != value:
            raise ValueError(
                f"{os.fspath(directory)!r} holds an interrupted {state.get('operation')} "
                f"({state.get('images_done')} of {state.get('num_inputs')} images done) with a "
                f"different `{key}`: {state.get(key)!r} there, {value!r} now. Re-run it with the "
                f"same arguments to resume, pass --restart (Python: resume=False) to start the "
                f"{what} over, or use another directory."
            )
    return state


def extract_into(directory, state, model, full_paths, image_size, batch_size, chunk_size,
                 on_error, progress):
    """Appends descriptors of `full_paths[state.images_done:]` to the descriptor file, chunk by
    chunk, moving `progress.json` forward after each flushed chunk. Mutates and returns `state`.
    `image_size` is the parsed policy."""
    from tqdm.auto import tqdm

    from tf_netvlad.models import extract

    dtype = np.dtype(state["dtype"])
    row_bytes = state["dim"] * dtype.itemsize
    remove_orphans(directory, [".tmp-*"])  # atomic writes a killed writer left (we hold the lock)
    descriptors_path = confined_path(directory, state["descriptors_file"],
                                     directory / PROGRESS_FILE, "descriptors_file")
    with open_for_append(descriptors_path) as handle:  # drop a half-written chunk
        os.ftruncate(handle.fileno(), state["rows_done"] * row_bytes)
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
            with open_for_append(descriptors_path) as handle:
                handle.write(out[keep].astype(dtype).tobytes())
                handle.flush()
                os.fsync(handle.fileno())
            for i in skipped:
                reason = diagnose(chunk[i])
                logger.warning("Skipped image %s: %s", chunk[i], reason)
                state["skipped"].append({"input_index": int(start + i), "path": chunk[i],
                                         "reason": reason})
            state["images_done"] = start + len(chunk)
            state["rows_done"] += int(keep.sum())
            write_json(state, directory / PROGRESS_FILE, allow_nan=False)
            bar.update(len(chunk))
    return state


def open_for_append(path):
    """Opens the descriptor file for appending (created if missing), never through a link."""
    link = f"{os.fspath(path)!r} is a link to another file; tf_netvlad writes index files only " \
           "inside the index folder. Rebuild the index in a new folder."
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0),
                     0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError(link.replace("a link", "a symbolic link")) from None
        raise
    if os.fstat(fd).st_nlink > 1:
        os.close(fd)
        raise ValueError(link.replace("a link", "a hard link"))
    return os.fdopen(fd, "ab")


def diagnose(path):
    from tf_netvlad.data.images import diagnose_image

    return diagnose_image(path) or "could not be read or decoded"


def kept_input_indices(count, skipped):
    keep = np.ones(count, bool)
    keep[[s["input_index"] for s in skipped]] = False
    return np.flatnonzero(keep)
