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
  when unknown), the UTM zone label of the positions (`utm_zone`, e.g. "17T", or null when
  unknown; `localize` then also answers in latitude/longitude), the model fingerprint, the resize policy, the index kind, the storage dtype, the
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

A build and an `add` hold the folder's writer lock (`tf_netvlad.data.locking`): a second writer
is refused at once naming the first; searching needs no lock. File names in the JSON files must
name files inside the folder (`storage.read_checked`). See docs/trust.md.

This module imports TensorFlow only when a model is loaded or images are extracted.
"""

import logging
import os
from pathlib import Path

import numpy as np

from tf_netvlad.data import utm
from tf_netvlad.data.fileio import resolve_paths, write_json
from tf_netvlad.data.image_size import format_image_size, parse_image_size
from tf_netvlad.data.locking import holds_writer_lock
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


@holds_writer_lock("out_dir", "retrieval index")
def build_retrieval_index(
    model_or_path, out_dir, images, positions=None, root=None, image_size=None, kind="flat",
    float16=False, batch_size=EXTRACT_BATCH_SIZE, chunk_size=INDEX_CHUNK_SIZE, on_error="skip",
    resume=True, overwrite=False, progress=True, seed=SEED, utm_zone=None,
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
        utm_zone: the UTM zone label of the positions ("17T": zone number and latitude band;
            `tf_netvlad.data.utm`). Default: the split's `utm_zone`, or the zone in the
            `@`-file names of a folder; None when unknown. Stored for `localize`.

    Returns:
        the loaded `RetrievalIndex`.
    """
    from tf_netvlad.data import pipelines

    image_size = parse_image_size(image_size)
    storage.check_options(batch_size, chunk_size, on_error)
    resolve_kind(kind, 1, 4)
    images, zone = _split_and_zone(images, root, utm_zone)
    paths, positions, root = storage.resolve_images(images, positions, root)
    zone = _positions_zone(zone, images, paths, positions, explicit=utm_zone is not None)
    full_paths = resolve_paths(paths, root)
    storage.refuse_duplicates(full_paths)
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
        fingerprint, source=label), seed, utm_zone=zone)
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


def _split_and_zone(images, root, utm_zone):
    """`(images, zone label or None)`: a split file is loaded here, so that its zone is known."""
    if isinstance(images, (str, os.PathLike)) and Path(images).is_file():
        from tf_netvlad.data.places import load_split

        images = load_split(images, root=root)
    found = getattr(images, "utm_zone", None)
    if utm_zone is not None and found is not None and not utm.same_projection(utm_zone, found):
        raise ValueError(f"utm_zone={utm_zone!r} (CLI --utm-zone) disagrees with the split, whose "
                         f"positions are in UTM zone {found}: leave it out.")
    return images, utm_zone if utm_zone is not None else found


def _positions_zone(zone, images, paths, positions, explicit):
    """The zone label of the positions, checked against them (`utm.check_zone_fits`); for a
    folder without one, the zone of its `@`-file names, refused when they name two zones.

    A label the caller gave (`explicit`) that does not fit is refused; one read from the data
    (made-up positions with a real label, say) is dropped with a warning: no lat/lon then."""
    if zone is None and isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        from tf_netvlad.data.split_files import parse_utm_filename

        try:
            labels = {parse_utm_filename(os.path.basename(p))[2] for p in paths} - {""}
        except ValueError:
            labels = set()
        if len({utm.projection_key(z) for z in labels}) > 1:
            raise ValueError(
                f"The images in {os.fspath(images)!r} lie in UTM zones {sorted(labels)}: "
                "eastings/northings of different zones cannot be compared. Index each zone "
                "separately, or pass positions re-projected into one zone "
                "(tf_netvlad.data.utm.latlon_to_utm(lat, lon, zone=...)) and `utm_zone`."
            )
        zone = min(labels) if labels else None
    if zone is None:
        return None
    try:
        return utm.check_zone_fits(positions, zone, "the image positions")
    except ValueError as error:
        if explicit:
            raise
        logger.warning("Not recording the UTM zone of the positions: %s", error)
        return None


def _finish_build(directory, state, paths, positions, root, kind, model_info, seed, utm_zone=None):
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
        "utm_zone": utm_zone,
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
        metadata = storage.read_checked(meta_path)  # file names confined to the folder
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

    @property
    def utm_zone(self):
        """The UTM zone label of `positions` ("17T"), or None when unknown (older indexes too)."""
        return self.metadata.get("utm_zone")

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
    @holds_writer_lock("self.directory", "retrieval index")
    def add(self, model_or_path, images, positions=None, root=None, batch_size=EXTRACT_BATCH_SIZE,
            chunk_size=INDEX_CHUNK_SIZE, on_error="skip", progress=True, utm_zone=None):
        """Extracts and appends images to this index (same model and resize policy required).

        Args:
            model_or_path: the index's model (`check_model` refuses any other).
            images, positions, root: as in `build_retrieval_index`. Paths under the index root
                are stored relative to it, others absolute.
            batch_size, chunk_size, on_error, progress: as in `build_retrieval_index`.
            utm_zone: the zone label of the added positions (default: the split's or the
                `@`-names'); positions of another zone than the index's are refused.

        An interrupted `add` of the same images resumes; one of other images is discarded.

        Returns:
            `self`, updated (new ids are `old count ... count - 1`, in input order minus skips).
        """
        storage.check_unchanged(self.directory, self.metadata)  # another writer may have added
        image_size = self.image_size
        storage.check_options(batch_size, chunk_size, on_error)
        images, zone = _split_and_zone(images, root, utm_zone)
        paths, positions, root = storage.resolve_images(images, positions, root)
        zone = _positions_zone(zone, images, paths, positions, explicit=utm_zone is not None)
        zone = self._merged_zone(zone, positions)
        full_paths = [os.path.abspath(p) for p in resolve_paths(paths, root)]
        storage.refuse_duplicates(full_paths, [self.full_path(i) for i in range(self.count)],
                                  self.directory)
        model, label = load_descriptor_model(model_or_path)
        self.check_model(model, label)
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
        metadata["utm_zone"] = zone
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

    def _merged_zone(self, zone, positions):
        """The index's zone after adding `positions` of zone `zone`; never mixes two zones."""
        ours = self.utm_zone
        if zone is None or not np.isfinite(positions).all(axis=1).any():
            return ours
        if ours is not None and utm.same_projection(ours, zone):
            return ours
        if ours is None and not np.isfinite(self.positions).all(axis=1).any():
            return zone
        held = f"positions in UTM zone {ours}" if ours else "positions of no recorded UTM zone"
        raise ValueError(
            f"Index {os.fspath(self.directory)!r} holds {held}, the images to add are in zone "
            f"{zone}: eastings/northings of two zones cannot be mixed. Build a separate index, "
            "or pass positions re-projected into the index's zone "
            "(tf_netvlad.data.utm.latlon_to_utm(lat, lon, zone=...))."
        )

    def _stored_path(self, full_path):
        root = self.root
        if root is not None and full_path.startswith(os.path.join(root, "")):
            return os.path.relpath(full_path, root)
        return full_path
