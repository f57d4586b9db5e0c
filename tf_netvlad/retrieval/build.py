"""Building a retrieval index: `build_retrieval_index` extracts descriptors of database images into
a new index directory and builds its faiss index over them.

The directory and its files are described in `tf_netvlad.retrieval.index`, whose
`RetrievalIndex` opens, searches and grows a built index. The steps of a build, in order:

1. the options, the kind and every input (images, positions, UTM zone: `tf_netvlad.retrieval.zones`)
   are checked: nothing is written and no model is loaded before they pass;
2. the model is loaded and fingerprinted, and a faiss factory string is checked for its dim;
3. the directory is prepared (a complete index is replaced only with `overwrite`), and an
   interrupted build of the same inputs is resumed (`progress.json`);
4. the descriptors are extracted chunk by chunk (`storage.extract_into`);
5. the faiss index of `kind` is built (approximate kinds trained on a seeded sample) and the
   metadata committed (`storage.commit`).

A build holds the folder's writer lock (`tf_netvlad.data.locking`). This module imports
TensorFlow only when a model is loaded or images are extracted.
"""

import logging
import os
from pathlib import Path

from tf_netvlad.data.fileio import resolve_paths, write_json
from tf_netvlad.data.image_size import format_image_size, parse_image_size
from tf_netvlad.data.locking import holds_writer_lock
from tf_netvlad.defaults import EXTRACT_BATCH_SIZE, INDEX_CHUNK_SIZE, SEED
from tf_netvlad.models.identity import load_descriptor_model, model_fingerprint, warn_if_not_training_size
from tf_netvlad.retrieval import storage, zones
from tf_netvlad.retrieval.index import RetrievalIndex
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

# The records keep the name they had when the build was part of `tf_netvlad.retrieval.index`
# (the CLI prints `%(name)s`).
logger = logging.getLogger("tf_netvlad.retrieval.index")


@holds_writer_lock("out_dir", "retrieval index")
def build_retrieval_index(
    model_or_path, out_dir, images, positions=None, root=None, image_size=None, kind="flat",
    float16=False, batch_size=EXTRACT_BATCH_SIZE, chunk_size=INDEX_CHUNK_SIZE, on_error="skip",
    resume=True, overwrite=False, progress=True, seed=SEED, utm_zone=None,
):
    """Extracts descriptors of database images into `out_dir` and builds a faiss index over them.

    Args:
        model_or_path: a descriptor `keras.Model` or a `.keras` file.
        out_dir: index directory (created; see `tf_netvlad.retrieval.index` for its files).
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
    paths, positions, root, zone = zones.images_and_zone(images, positions, root, utm_zone)
    full_paths = resolve_paths(paths, root)
    storage.refuse_duplicates(full_paths)
    if on_error == "raise":
        pipelines.check_files_exist(full_paths)
    model, label = load_descriptor_model(model_or_path)
    warn_if_not_training_size(model, image_size, "indexes the images")
    fingerprint = model_fingerprint(model)
    if kind not in KINDS:
        check_factory(kind, fingerprint["descriptor_dim"])
    directory = _prepare_directory(out_dir, overwrite)
    state = _progress_state(directory, paths, positions, root, fingerprint, image_size, float16,
                            resume)
    state = storage.extract_into(directory, state, model, full_paths, image_size, batch_size,
                                 chunk_size, on_error, progress)
    metadata = _finish_build(directory, state, paths, positions, root, kind, dict(
        fingerprint, source=label), seed, utm_zone=zone)
    logger.info("Indexed %d of %d images in %s (%s, %s); %d skipped.", metadata["count"],
                len(paths), directory, metadata["factory"], metadata["dtype"],
                len(metadata["skipped"]))
    return RetrievalIndex.load(directory)


def _prepare_directory(out_dir, overwrite):
    """The index directory `out_dir`, with a complete index in it removed only if `overwrite`."""
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


def _progress_state(directory, paths, positions, root, fingerprint, image_size, float16, resume):
    """The progress state to extract into: the interrupted build of the same inputs, model,
    policy and dtype (`resume`), or a new one (written to `progress.json`)."""
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
        state = dict(expected, num_inputs=len(paths), dim=fingerprint["descriptor_dim"],
                     descriptors_file=descriptors_file, images_done=0, rows_done=0, skipped=[])
        directory.mkdir(parents=True, exist_ok=True)
        write_json(state, directory / PROGRESS_FILE, allow_nan=False)
    elif state["images_done"]:
        logger.info("Resuming the build in %s at image %d of %d.", directory,
                    state["images_done"], len(paths))
    return state


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
    metadata = _metadata(state, kept, paths, positions, root, kind, model_info, utm_zone)
    db = storage.open_descriptors(directory, metadata)
    faiss_index, factory, params = _faiss_index(db, kind, state["dim"],
                                                state["dtype"] == "float16", seed)
    metadata.update(factory=factory, search_params=params)
    del db
    storage.commit(directory, metadata, faiss_index)
    storage.remove(directory, [PROGRESS_FILE])
    return metadata


def _metadata(state, kept, paths, positions, root, kind, model_info, utm_zone):
    """The metadata of a build that kept the inputs `kept`, before its faiss factory is known."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "count": int(len(kept)),
        "dim": state["dim"], "dtype": state["dtype"], "descriptors_file": state["descriptors_file"],
        "metric": "ip", "kind": kind, "image_size": state["image_size"], "root": root,
        "paths": [paths[i] for i in kept], "positions": storage.positions_json(positions[kept]),
        "utm_zone": utm_zone,
        "model": model_info,
        "skipped": [{"path": paths[s["input_index"]], "reason": s["reason"]}
                    for s in state["skipped"]],
        "generation": -1,
    }


def _faiss_index(db, kind, dim, float16, seed):
    """`(faiss index, factory, search params)` of `kind` over `db`; approximate kinds are trained
    on a seeded sample of at most `IVF_TRAIN_SIZE` rows and `TRAIN_BYTES` as float32."""
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
    return faiss_index, factory, params
