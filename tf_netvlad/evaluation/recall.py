"""Place-recognition evaluation: recall@N over GPS ground truth under the reference protocols.

recall@N is the fraction of queries with at least one true positive (a database image within the
split's positive radius, 25 m by default) among their top N retrieved database images, retrieval
being exhaustive nearest-neighbour search on the descriptors (MATLAB `yael_nn`, faiss here).

Queries without any positive cannot be scored: they are **excluded** from the denominator and
their count is reported (`num_queries_without_positives`, plus a log warning), instead of being
counted as failures (which would make a perfect model score below 1).

Protocols (`tf_netvlad.evaluation.protocols`): Pittsburgh (plain ranking), TokyoTM (same-time-stamp database
images dropped), Tokyo 24/7 (panorama non-max suppression, day/sunset/night recall, queries at
640x480). Memory: database descriptors stay float32 (or float16, or an `np.memmap`) and are
searched block by block (`tf_netvlad.evaluation.ranking`), never copied whole or converted to float64; the
positives come from a KD-tree over the UTM positions. An approximate IVF-PQ index can be scored
beside the exact search (`approximate=`).

`evaluate` parses `image_size` and `query_image_size` once and records their text in the results.
Importing this module does not import TensorFlow; `evaluate` imports `extract` lazily.
"""

import logging

import numpy as np

from tf_netvlad.data.image_size import format_image_size, parse_image_size
from tf_netvlad.defaults import EXTRACT_BATCH_SIZE, SEED
from tf_netvlad.evaluation import protocols, ranking, recall_metrics
from tf_netvlad.models import identity
from tf_netvlad.search import faiss_index

logger = logging.getLogger(__name__)

def _score(ids, positives, ns, protocol, conditions, num_db, prefix, warn):
    """Protocol post-processing (panorama NMS) and recall@N, overall and per condition."""
    if protocol == "tokyo247":
        cutouts = protocols.TOKYO247_CUTOUTS_PER_PANORAMA
        ids = protocols.panorama_nms(ids, min(ns[-1], num_db // cutouts), cutouts)
    else:
        ids = ids[:, : ns[-1]]
    ranks = recall_metrics.first_correct_rank(ids, positives)
    recalls = recall_metrics.recalls_from_ranks(ranks, ns, log=warn)
    results = {f"{prefix}recall@{n}": recalls[n] for n in ns}
    if conditions is not None:
        for name in dict.fromkeys(conditions):  # first-seen order
            subset = ranks[conditions == name]
            if prefix == "":
                results[f"num_queries/{name}"] = int(len(subset))
            if (subset >= 0).any():
                sub = recall_metrics.recalls_from_ranks(subset, ns, log=False)
                results.update({f"{prefix}recall@{n}/{name}": sub[n] for n in ns})
    return results, ids, ranks


def _check_conditions(conditions, num_queries):
    if conditions is None:
        return None
    conditions = np.asarray([str(c) for c in conditions])
    if conditions.shape != (num_queries,):
        raise ValueError(
            f"`conditions` must hold one label per query: got {conditions.size} for "
            f"{num_queries} queries."
        )
    return conditions


def evaluate_descriptors(
    db_desc, query_desc, positives, ns=recall_metrics.DEFAULT_RECALL_NS,
    chunk_size=faiss_index.DEFAULT_CHUNK_SIZE, return_ids=False, exclude=None, protocol="pitts", conditions=None, approximate=None,
    approx_train_size=None, approx_nprobe=None, seed=SEED, db_chunk_rows=None,
):
    """recall@N from precomputed descriptors (exact faiss inner-product search, streamed).

    N larger than the database is allowed: every database image is then retrieved, so
    recall@N equals recall@num_db.

    Args:
        db_desc: `(num_db, D)` float32 or float16 array or `np.memmap`; read block by block,
            never converted as a whole.
        query_desc: `(Q, D)` float array.
        positives: Q int arrays of database ids within the positive radius (`split.positives()`).
        ns: N values of recall@N.
        exclude: optional, one int array per query, removed from that query's ranking and
            positives, e.g. TokyoTM's same-time-stamp images (`split.same_timestamp_db()`).
        protocol: "pitts" (plain ranking), "tokyotm" (needs `exclude`) or "tokyo247" (panorama
            NMS over 12 cutouts, per-condition recall); see `tf_netvlad.evaluation.protocols`.
        conditions: optional per-query labels; adds `recall@N/<label>`. Tokyo 24/7 defaults to
            day/sunset/night by query index.
        approximate: None (exact only), "auto" (or True) for `protocols.default_approx_factory`,
            or a faiss factory string such as "IVF1024,PQ64": recall with that index is added as
            `approx/recall@N` beside the exact recall.
        approx_train_size: rows (random, `seed`) the approximate index is trained on (default
            `protocols.approx_train_size`); approx_nprobe: IVF cells visited per query.
        chunk_size: queries (and rows converted to float32) per faiss call; db_chunk_rows:
            database rows per exact-search block.

    Returns:
        dict with `"recall@N"` for each N (fractions), `num_queries`,
        `num_queries_without_positives`, `num_db`, `descriptor_dim`, `protocol`; with conditions
        `recall@N/<label>` and `num_queries/<label>`; with `approximate` the `approx/...` keys
        plus `approx_index`, `approx_train_size`, `approx_nprobe`. With `return_ids=True`, a tuple
        `(results, ids)`: int64 `(Q, min(max(ns), num_db))` ids after exclusion (and panorama NMS
        for Tokyo 24/7, ids then up to the number of panoramas), -1 in empty slots.
    """
    ns = recall_metrics.check_ns(ns)
    if db_desc.ndim != 2 or query_desc.ndim != 2 or db_desc.shape[1] != query_desc.shape[1]:
        raise ValueError(
            "`db_desc` and `query_desc` must be 2-D with the same dim. Received shapes "
            f"{tuple(db_desc.shape)} and {tuple(query_desc.shape)}"
        )
    num_queries, num_db = len(query_desc), len(db_desc)
    if len(positives) != num_queries:
        raise ValueError(
            f"`positives` has {len(positives)} entries but there are {num_queries} "
            "query descriptors."
        )
    protocol = protocols.resolve_protocol(protocol)
    if protocol == "tokyotm" and exclude is None:
        raise ValueError("protocol='tokyotm' needs `exclude` (e.g. `split.same_timestamp_db()`).")
    conditions = _check_conditions(conditions, num_queries)
    k = ns[-1]
    if protocol == "tokyo247":
        protocols.check_panorama_layout(num_db)
        k *= protocols.TOKYO247_CUTOUTS_PER_PANORAMA
        if conditions is None:
            conditions = protocols.tokyo247_conditions(num_queries)
    if exclude is not None:
        if len(exclude) != num_queries:
            raise ValueError(f"`exclude` has {len(exclude)} entries for {num_queries} queries.")
        positives = [np.setdiff1d(p, e) for p, e in zip(positives, exclude)]
    ids = ranking.ranked_ids(
        lambda kk: ranking.exact_topk(db_desc, query_desc, kk, chunk_size, db_chunk_rows),
        k, exclude,
    )
    results, ids, ranks = _score(ids, positives, ns, protocol, conditions, num_db, "", True)
    results.update(
        num_queries=int(num_queries),
        num_queries_without_positives=int((ranks < 0).sum()),
        num_db=int(num_db),
        descriptor_dim=int(db_desc.shape[1]),
        protocol=protocol,
    )
    if approximate:
        results.update(_approximate_recall(
            db_desc, query_desc, positives, ns, k, exclude, protocol, conditions, approximate,
            approx_train_size, approx_nprobe, seed, chunk_size,
        ))
    return (results, ids) if return_ids else results


def _extract(extract, model, paths, root, image_size, batch_size, progress, on_error, out, images=None):
    """Descriptors and the int64 indices of unreadable images (always empty for "raise")."""
    if images is not None and images.image_size != image_size:
        images = None  # e.g. Tokyo 24/7 queries at their own size: read from the files
    result = extract.extract_descriptors(model, paths, root=root, image_size=image_size,
                                         batch_size=batch_size, progress=progress,
                                         on_error=on_error, out=out, images=images)
    if on_error == "raise":
        return result, np.zeros(0, np.int64)
    descriptors, skipped = result
    if len(skipped) == len(paths):
        raise ValueError(f"None of the {len(paths)} images could be read (first: {paths[0]!r}); "
                         "check the image root (--root) and the files.")
    if len(skipped):
        logger.warning("Evaluation: %d of %d images could not be read and are left out (%s%s).",
                       len(skipped), len(paths), paths[skipped[0]],
                       ", ..." if len(skipped) > 1 else "")
    return descriptors, skipped


def _reason(path, root):
    from tf_netvlad.data.fileio import resolve_paths
    from tf_netvlad.data.images import diagnose_image

    full = resolve_paths([path], root)[0]
    return diagnose_image(full) or "could not be read or decoded"


def _approximate_recall(db_desc, query_desc, positives, ns, k, exclude, protocol, conditions,
                        factory, train_size, nprobe, seed, chunk_size):
    index, info = ranking.approximate_index(db_desc, factory, train_size, nprobe, seed, chunk_size)
    ids = ranking.ranked_ids(
        lambda kk: faiss_index.search(index, query_desc, kk, chunk_size=chunk_size)[1],
        k, exclude,
    )
    results, _, _ = _score(ids, positives, ns, protocol, conditions, len(db_desc), "approx/",
                           False)
    results.update(info)
    return results


def _descriptor_buffer(model, count, dtype, memmap_dir, stack, tag):
    """None (extract returns float32 in RAM), or a float16 array / `.npy` memmap to fill."""
    from tf_netvlad.data.scratch import scratch_file
    from tf_netvlad.models import extract

    if dtype not in ("float32", "float16"):
        raise ValueError(f"`descriptor_dtype` must be 'float32' or 'float16'. Received: {dtype!r}")
    if dtype == "float32" and memmap_dir is None:
        return None
    dim = extract.static_output_dim(model)
    if dim is None:
        raise ValueError(
            f"Model {model.name!r} has no static output dim, so descriptor_dtype={dtype!r} / "
            "memmap_dir cannot preallocate the database descriptors."
        )
    if memmap_dir is None:
        return np.empty((count, dim), dtype)
    # removed at the end, on SIGTERM too; a killed run's file is removed by the next run here
    path = stack.enter_context(scratch_file(memmap_dir, tag, ".npy"))
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(count, dim))


def evaluate(
    model, split, root=None, image_size=None, ns=recall_metrics.DEFAULT_RECALL_NS,
    batch_size=EXTRACT_BATCH_SIZE, progress=True,
    return_ids=False, protocol="auto", query_image_size="auto", approximate=None,
    approx_train_size=None, approx_nprobe=None, descriptor_dtype="float32", memmap_dir=None,
    on_error="raise", images=None,
):
    """Extracts database and query descriptors with `model` and computes recall@N on `split`.

    Args:
        model: `keras.Model`, float32 images `[B, H, W, 3]` (0..255 RGB) -> descriptors `[B, D]`.
        split: a `places.PlaceSplit` (`db_paths`, `query_paths`, `positives()`, `root`, `name`).
        root: image root; defaults to `split.root`.
        image_size: resize policy of the database images, and of the queries unless
            `query_image_size` says otherwise (`None`/"keep" = full resolution, as MATLAB; a max
            side 640 or "640"; `(H, W)` or "480x640").
        ns: N values; `REFERENCE_RECALL_NS` gives MATLAB's [1:5, 10:5:100].
        batch_size, progress: passed to `extract.extract_descriptors`.
        return_ids: also return the retrieved db ids `(Q, max N)` (-1 in empty slots).
        protocol: "auto" (from the split: Tokyo 24/7 by name, TokyoTM by time stamps, else
            Pittsburgh), "pitts", "tokyo247" or "tokyotm"; see `tf_netvlad.evaluation.protocols`.
        query_image_size: "auto" (= `image_size`, but at most 640 on the longer side for Tokyo
            24/7, see `protocols.query_image_size`) or an explicit policy (as `image_size`).
        approximate, approx_train_size, approx_nprobe: IVF-PQ recall beside the exact one, see
            `evaluate_descriptors`.
        descriptor_dtype: "float32" (default) or "float16" (half the memory) for the database
            descriptors; memmap_dir: if set, they are written to a temporary `.npy` memmap there
            (removed afterwards, on SIGTERM too; a killed run's file is removed by the next run
            in that folder) instead of RAM. Queries stay float32 in RAM.
        on_error: "raise" stops with `data.ImageReadError` naming the first unreadable image;
            "skip" evaluates without it: an unreadable database image is removed from every
            ranking and positive list, an unreadable query is left out of recall (its `ids` row
            is all -1). Both are counted (`num_db_unreadable`, `num_queries_unreadable`) and
            listed with the reason (`unreadable`).
        images: optional `data.decoded.DecodedImages` holding the split's images decoded at a
            fixed `image_size` (training's validation, every refresh cycle): read from memory.
            A part extracted at another size (`query_image_size`) reads its files.

    Returns:
        `evaluate_descriptors`' dict plus `split`, `image_size` and `query_image_size` (or
        `(results, ids)` with `return_ids=True`). `num_queries` counts the evaluated queries.
    """
    import contextlib

    from tf_netvlad.data import pipelines
    from tf_netvlad.models import extract

    image_size = parse_image_size(image_size)
    if not protocols.is_auto(query_image_size):
        query_image_size = parse_image_size(query_image_size)
    ns = recall_metrics.check_ns(ns)
    protocol = protocols.resolve_protocol(protocol, split)
    query_size = protocols.query_image_size(protocol, image_size, query_image_size)
    identity.warn_if_not_training_size(model, image_size, "is evaluated")
    root = getattr(split, "root", None) if root is None else root
    positives = split.positives()
    exclude = split.same_timestamp_db() if protocol == "tokyotm" else None
    if protocol == "tokyo247":
        protocols.check_panorama_layout(len(split.db_paths))
    pipelines.check_on_error(on_error)
    dim = extract.static_output_dim(model)
    if approximate and dim is not None:  # fail before the extraction, not after it
        ranking.check_approximate(len(split.db_paths), dim, approximate, approx_train_size,
                                  approx_nprobe)
    with contextlib.ExitStack() as stack:
        out = _descriptor_buffer(model, len(split.db_paths), descriptor_dtype, memmap_dir, stack,
                                 "db_descriptors")
        db_desc, bad_db = _extract(extract, model, split.db_paths, root, image_size, batch_size,
                                   progress, on_error, out, images)
        query_desc, bad_q = _extract(extract, model, split.query_paths, root, query_size,
                                     batch_size, progress, on_error, None, images)
        db_desc[bad_db] = 0  # never ranked: excluded for every query below
        keep = np.setdiff1d(np.arange(len(query_desc)), bad_q)
        conditions = None
        if protocol == "tokyo247" and len(bad_q):  # conditions follow the original query order
            conditions = protocols.tokyo247_conditions(len(query_desc))[keep]
        if len(bad_db):
            exclude = [np.union1d(e, bad_db) for e in exclude] if exclude is not None \
                else [bad_db] * len(query_desc)
        results, kept_ids = evaluate_descriptors(
            db_desc, query_desc[keep], [positives[q] for q in keep], ns, return_ids=True,
            exclude=None if exclude is None else [exclude[q] for q in keep], protocol=protocol,
            conditions=conditions, approximate=approximate, approx_train_size=approx_train_size,
            approx_nprobe=approx_nprobe,
        )
        del db_desc, out
    ids = np.full((len(query_desc), kept_ids.shape[1]), -1, np.int64)
    ids[keep] = kept_ids
    results.update(num_db_unreadable=int(len(bad_db)), num_queries_unreadable=int(len(bad_q)))
    if on_error == "skip":
        results["unreadable"] = (
            [{"kind": "db", "path": split.db_paths[i], "reason": _reason(split.db_paths[i], root)}
             for i in bad_db]
            + [{"kind": "query", "path": split.query_paths[q],
                "reason": _reason(split.query_paths[q], root)} for q in bad_q])
    results["split"] = str(getattr(split, "name", ""))
    results["image_size"] = format_image_size(image_size)
    results["query_image_size"] = format_image_size(query_size)
    return (results, ids) if return_ids else results
