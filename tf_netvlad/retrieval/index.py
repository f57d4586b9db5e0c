"""RetrievalIndex: an on-disk descriptor database with a faiss index, built resumably and growable.

An index directory holds:

* `descriptors.f32` (or `descriptors.f16` with `float16=True`): the raw row-major `(count, dim)`
  descriptor matrix, read back as a read-only `np.memmap`. Row `i` is faiss id `i`.
* `index-<generation>.faiss`: the trained faiss index of an approximate kind ("ivfpq", "hnsw" or
  a faiss factory string). `add()` writes a new generation, then switches `metadata.json` to it,
  so an interruption never leaves the metadata pointing at a wrong file. The exact kinds ("flat"
  inner product, the default, and its float16 form) store no faiss file: their index is rebuilt
  from the descriptor file at load; an HNSW file holds only the graph, and its vectors are
  re-attached from the descriptor file at load. So the descriptors are on disk only once.
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

The model fingerprint (`tf_netvlad.models.identity`) is a SHA-256 of the model's architecture and
one of its weight values. Searching or adding with a model whose fingerprint, weights or dim
differ from the index's is refused, because its descriptors are not comparable with the stored
ones.

`build_retrieval_index` parses `image_size` once and stores its text (`format_image_size`);
`RetrievalIndex.image_size` parses the stored text back, and `add` extracts with it.

This module imports TensorFlow only when a model is loaded or images are extracted.
"""

import logging
import os
from pathlib import Path

from tf_netvlad.data.fileio import resolve_paths, write_json
from tf_netvlad.data.image_size import format_image_size, parse_image_size
from tf_netvlad.defaults import EXTRACT_BATCH_SIZE, INDEX_CHUNK_SIZE, SEED
from tf_netvlad.models.identity import check_compatible, load_descriptor_model, model_fingerprint
from tf_netvlad.retrieval import storage
from tf_netvlad.retrieval.storage import FORMAT, FORMAT_VERSION, METADATA_FILE, PROGRESS_FILE
from tf_netvlad.search import faiss_index as faiss_lib
from tf_netvlad.search.index_kinds import (
    IVF_TRAIN_SIZE,
    KINDS,
    TRAIN_BYTES,
    apply_search_params,
    check_factory,
    resolve_kind,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- build


def build_retrieval_index(
    model_or_path, out_dir, images, positions=None, root=None, image_size=None, kind="flat",
    float16=False, batch_size=EXTRACT_BATCH_SIZE, chunk_size=INDEX_CHUNK_SIZE, on_error="skip",
    resume=True, overwrite=False, progress=True, seed=SEED,
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
        image_size: resize policy (None/"keep", max side int or "640", (H, W) or "480x640");
            stored and reused by `add` and `localize`.
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
    from tf_netvlad.data import pipelines

    image_size = parse_image_size(image_size)
    storage.check_options(batch_size, chunk_size, on_error)
    resolve_kind(kind, 1, 4)
    paths, positions, root = storage.resolve_images(images, positions, root)
    full_paths = resolve_paths(paths, root)
    if on_error == "raise":
        pipelines.check_files_exist(full_paths)
    model, label = load_descriptor_model(model_or_path)
    fingerprint = model_fingerprint(model)
    dim = fingerprint["descriptor_dim"]
    if kind not in KINDS:
        check_factory(kind, dim)
    directory = _prepare_directory(out_dir, overwrite)
    dtype = "float16" if float16 else "float32"
    expected = {
        "operation": "build", "inputs_sha256": storage.inputs_sha256(paths, positions, root),
        "model": {k: fingerprint[k] for k in ("fingerprint", "weights_sha256", "descriptor_dim")},
        "image_size": format_image_size(image_size), "dtype": dtype,
    }
    state = storage.pending_state(directory, expected, "build") if resume else None
    descriptors_file = "descriptors.f16" if float16 else "descriptors.f32"
    if state is None:
        storage.remove(directory, [PROGRESS_FILE, "descriptors.f32", "descriptors.f16"])
        state = dict(expected, num_inputs=len(paths), dim=dim, descriptors_file=descriptors_file,
                     images_done=0, rows_done=0, skipped=[])
        directory.mkdir(parents=True, exist_ok=True)
        write_json(state, directory / PROGRESS_FILE, allow_nan=False)
    elif state["images_done"]:
        logger.info("Resuming the build in %s at image %d of %d.", directory,
                    state["images_done"], len(paths))
    state = storage.extract_into(directory, state, model, full_paths, image_size, batch_size,
                                 chunk_size, on_error, progress)
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
                "overwrite=True (CLI: --overwrite) to replace it, or another directory."
            )
        storage.remove(directory, [METADATA_FILE, PROGRESS_FILE, "descriptors.f32",
                                   "descriptors.f16", *storage.index_files(directory)])
    return directory


def _finish_build(directory, state, paths, positions, root, kind, model_info, seed):
    """Metadata and faiss index for a completed extraction; removes the progress marker."""
    from tf_netvlad.data import pipelines

    kept = storage.kept_input_indices(len(paths), state["skipped"])
    if not len(kept):
        storage.remove(directory, [PROGRESS_FILE, state["descriptors_file"]])
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in state["skipped"][:3])
        raise pipelines.ImageReadError(
            f"None of the {len(paths)} images could be read, nothing was indexed ({reasons}).",
            path=state["skipped"][0]["path"],
        )
    dim, float16 = state["dim"], state["dtype"] == "float16"
    metadata = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "count": int(len(kept)), "dim": dim,
        "dtype": state["dtype"], "descriptors_file": state["descriptors_file"], "metric": "ip",
        "kind": kind, "image_size": state["image_size"], "root": root,
        "paths": [paths[i] for i in kept], "positions": storage.positions_json(positions[kept]),
        "model": model_info,
        "skipped": [{"path": paths[s["input_index"]], "reason": s["reason"]}
                    for s in state["skipped"]],
        "generation": -1,
    }
    db = storage.open_descriptors(directory, metadata)
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
    apply_search_params(faiss_index, params)
    metadata.update(factory=factory, search_params=params)
    del db
    storage.commit(directory, metadata, faiss_index)
    storage.remove(directory, [PROGRESS_FILE])
    return metadata


# --------------------------------------------------------------------------- the index




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
        self.positions = storage.positions_array(metadata["positions"])
        self.descriptors = storage.open_descriptors(self.directory, metadata)

    @classmethod
    def load(cls, directory):
        """Opens an index directory; clear errors for a missing, foreign or unfinished one."""
        directory = Path(directory)
        meta_path = directory / METADATA_FILE
        if not meta_path.exists():
            if (directory / PROGRESS_FILE).exists():
                state = storage.read_json(directory / PROGRESS_FILE)
                raise ValueError(
                    f"{os.fspath(directory)!r} holds an unfinished index build "
                    f"({state.get('images_done')} of {state.get('num_inputs')} images "
                    "extracted): re-run the build with the same arguments to resume it."
                )
            raise FileNotFoundError(
                f"{os.fspath(directory)!r} is not a tf_netvlad retrieval index (no "
                f"{METADATA_FILE}). Build one with `tf_netvlad index`."
            )
        metadata = storage.read_json(meta_path)
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{os.fspath(meta_path)!r} is not a {FORMAT} metadata file.")
        if metadata.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{os.fspath(directory)!r} uses index format version "
                f"{metadata['format_version']}; this tf_netvlad reads up to {FORMAT_VERSION}."
            )
        if metadata.get("index_file") is None:  # exact kind: the descriptors are the index
            descriptors = storage.open_descriptors(directory, metadata)
            faiss_index = faiss_lib.build_index(descriptors, kind=metadata["factory"])
            del descriptors
        elif metadata.get("vectors_in_index_file") is False:  # an HNSW graph: vectors re-attached
            descriptors = storage.open_descriptors(directory, metadata)
            faiss_index = faiss_lib.read_index(directory / metadata["index_file"], db=descriptors)
            del descriptors
        else:  # formats 1-2 and the other kinds: the file holds the vectors (or codes)
            faiss_index = faiss_lib.read_index(directory / metadata["index_file"])
        if faiss_index.ntotal != metadata["count"] or faiss_index.d != metadata["dim"]:
            raise ValueError(
                f"{os.fspath(directory)!r}: the faiss index holds {faiss_index.ntotal} vectors "
                f"of dim {faiss_index.d} but the metadata says {metadata['count']} of dim "
                f"{metadata['dim']}: the index is damaged; rebuild it."
            )
        apply_search_params(faiss_index, metadata.get("search_params") or {})
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
        """The parsed resize policy the descriptors were extracted with (from the metadata)."""
        return parse_image_size(self.metadata["image_size"])

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
        check_compatible(model, self.metadata["model"], f"Index {os.fspath(self.directory)!r}", label)

    # ------------------------------------------------------------------ growing
    def add(self, model_or_path, images, positions=None, root=None, batch_size=EXTRACT_BATCH_SIZE,
            chunk_size=INDEX_CHUNK_SIZE, on_error="skip", progress=True):
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
        image_size = self.image_size
        storage.check_options(batch_size, chunk_size, on_error)
        model, label = load_descriptor_model(model_or_path)
        self.check_model(model, label)
        paths, positions, root = storage.resolve_images(images, positions, root)
        full_paths = [os.path.abspath(p) for p in resolve_paths(paths, root)]
        if on_error == "raise":
            from tf_netvlad.data import pipelines

            pipelines.check_files_exist(full_paths)
        stored_paths = [self._stored_path(p) for p in full_paths]
        expected = {"operation": "add",
                    "inputs_sha256": storage.inputs_sha256(full_paths, positions, None),
                    "base_count": self.count, "generation": self.metadata["generation"]}
        try:
            state = storage.pending_state(self.directory, expected, "add")
        except ValueError as error:
            logger.warning("Discarding an unfinished operation: %s", error)
            state = None
        if state is None:
            state = dict(expected, num_inputs=len(paths), dim=self.dim, dtype=self.metadata["dtype"],
                         descriptors_file=self.metadata["descriptors_file"], images_done=0,
                         rows_done=self.count, skipped=[])
            write_json(state, self.directory / PROGRESS_FILE, allow_nan=False)
        state = storage.extract_into(self.directory, state, model, full_paths, image_size,
                                     batch_size, chunk_size, on_error, progress)
        kept = storage.kept_input_indices(len(paths), state["skipped"])
        metadata = dict(self.metadata)
        metadata["count"] = self.count + len(kept)
        metadata["paths"] = self.paths + [stored_paths[i] for i in kept]
        metadata["positions"] = self.metadata["positions"] + storage.positions_json(positions[kept])
        metadata["skipped"] = self.metadata["skipped"] + [
            {"path": stored_paths[s["input_index"]], "reason": s["reason"]}
            for s in state["skipped"]]
        db = storage.open_descriptors(self.directory, metadata)
        faiss_lib.add_vectors(self.faiss_index, db, start=self.count)
        del db
        storage.commit(self.directory, metadata, self.faiss_index)
        storage.remove(self.directory, [PROGRESS_FILE])
        logger.info("Added %d of %d images to %s (now %d); %d skipped.", len(kept), len(paths),
                    self.directory, metadata["count"], len(state["skipped"]))
        self.__init__(self.directory, metadata, self.faiss_index)
        return self

    def _stored_path(self, full_path):
        root = self.root
        if root is not None and full_path.startswith(os.path.join(root, "")):
            return os.path.relpath(full_path, root)
        return full_path
