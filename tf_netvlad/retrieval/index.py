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

`build_retrieval_index` (`tf_netvlad.retrieval.build`) builds an index directory; `RetrievalIndex`
here opens, searches and grows one. The build parses `image_size` once and stores its text
(`format_image_size`); `RetrievalIndex.image_size` parses the stored text back, and `add`
extracts with it. The UTM zone of the positions follows `tf_netvlad.retrieval.zones`.

A build and an `add` hold the folder's writer lock (`tf_netvlad.data.locking`): a second writer
is refused at once naming the first; searching needs no lock. File names in the JSON files must
name files inside the folder (`storage.read_checked`). See docs/trust.md.

This module imports TensorFlow only when a model is loaded or images are extracted.
"""

import logging
import os
from pathlib import Path

from tf_netvlad.data.fileio import resolve_paths, write_json
from tf_netvlad.data.image_size import parse_image_size
from tf_netvlad.data.locking import holds_writer_lock
from tf_netvlad.defaults import EXTRACT_BATCH_SIZE, INDEX_CHUNK_SIZE
from tf_netvlad.models.identity import check_compatible, load_descriptor_model
from tf_netvlad.retrieval import storage, zones
from tf_netvlad.retrieval.storage import FORMAT, FORMAT_VERSION, METADATA_FILE, PROGRESS_FILE
from tf_netvlad.search import faiss_index as faiss_lib
from tf_netvlad.search.index_kinds import apply_search_params

logger = logging.getLogger(__name__)


class RetrievalIndex:
    """A built index directory: descriptors (memmap), faiss index and metadata.

    Load with `RetrievalIndex.load(directory)`; build with `build_retrieval_index`
    (`tf_netvlad.retrieval.build`).

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
        paths, positions, full_paths, zone = self._images_to_add(images, positions, root, utm_zone)
        model, label = load_descriptor_model(model_or_path)
        self.check_model(model, label)
        if on_error == "raise":
            from tf_netvlad.data import pipelines

            pipelines.check_files_exist(full_paths)
        stored_paths = [self._stored_path(p) for p in full_paths]
        state = self._progress_state(full_paths, positions)
        state = storage.extract_into(self.directory, state, model, full_paths, image_size,
                                     batch_size, chunk_size, on_error, progress)
        kept = storage.kept_input_indices(len(paths), state["skipped"])
        metadata = self._grown_metadata(kept, stored_paths, positions, zone, state["skipped"])
        db = storage.open_descriptors(self.directory, metadata)
        faiss_lib.add_vectors(self.faiss_index, db, start=self.count)
        del db
        storage.commit(self.directory, metadata, self.faiss_index)
        storage.remove(self.directory, [PROGRESS_FILE])
        logger.info("Added %d of %d images to %s (now %d); %d skipped.", len(kept), len(paths),
                    self.directory, metadata["count"], len(state["skipped"]))
        self.__init__(self.directory, metadata, self.faiss_index)
        return self

    def _images_to_add(self, images, positions, root, utm_zone):
        """`(paths, positions, full paths, zone)` of the images to add; refuses images already
        indexed and positions of another UTM zone than the index's."""
        paths, positions, root, zone = zones.images_and_zone(images, positions, root, utm_zone)
        zone = zones.merged_zone(self.directory, self.utm_zone, self.positions, zone, positions)
        full_paths = [os.path.abspath(p) for p in resolve_paths(paths, root)]
        storage.refuse_duplicates(full_paths, [self.full_path(i) for i in range(self.count)],
                                  self.directory)
        return paths, positions, full_paths, zone

    def _progress_state(self, full_paths, positions):
        """The progress state to extract into: the interrupted add of the same images, or a new
        one (written to `progress.json`; an unfinished operation of other inputs is discarded)."""
        expected = {"operation": "add",
                    "inputs_sha256": storage.inputs_sha256(full_paths, positions, None),
                    "base_count": self.count, "generation": self.metadata["generation"]}
        try:
            state = storage.pending_state(self.directory, expected, "add")
        except ValueError as error:
            logger.warning("Discarding an unfinished operation: %s", error)
            state = None
        if state is None:
            state = dict(expected, num_inputs=len(full_paths), dim=self.dim,
                         dtype=self.metadata["dtype"],
                         descriptors_file=self.metadata["descriptors_file"], images_done=0,
                         rows_done=self.count, skipped=[])
            write_json(state, self.directory / PROGRESS_FILE, allow_nan=False)
        return state

    def _grown_metadata(self, kept, stored_paths, positions, zone, skipped):
        """The metadata after appending the inputs `kept` (and listing the `skipped` ones)."""
        metadata = dict(self.metadata)
        metadata["count"] = self.count + len(kept)
        metadata["paths"] = self.paths + [stored_paths[i] for i in kept]
        metadata["positions"] = self.metadata["positions"] + storage.positions_json(positions[kept])
        metadata["utm_zone"] = zone
        metadata["skipped"] = self.metadata["skipped"] + [
            {"path": stored_paths[s["input_index"]], "reason": s["reason"]} for s in skipped]
        return metadata

    def _stored_path(self, full_path):
        root = self.root
        if root is not None and full_path.startswith(os.path.join(root, "")):
            return os.path.relpath(full_path, root)
        return full_path
