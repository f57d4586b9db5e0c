"""Oxford5k / Paris6k retrieval mAP with ok/junk lists: the original and the revisited protocols.

Ground truth (`RetrievalGroundTruth`: the revisited easy/medium/hard protocols or the original
good+ok/junk one) is loaded by `tf_netvlad.retrieval_gt`.

AP (`average_precision`, `compute_map`): junk images are removed from the ranking (they do not count
and do not take a rank); with r_j the 0-based rank of the j-th retrieved positive (j = 0, 1, ...)
after that removal and n the number of positives,

    AP = (1 / n) * sum_j (P0_j + P1_j) / 2,
    P0_j = j / r_j (precision before the positive; 1 if r_j = 0),  P1_j = (j + 1) / (r_j + 1),

the trapezoid rule over the precision-recall curve of the Oxford `compute_ap` (also MATLAB
`compute_map.m` and cirtorch/revisitop `compute_ap`). mP@k follows revisitop's `compute_map`: with
p the 1-based positions of the retrieved positives after junk removal, k' = min(max(p), k) and
P@k = |{p <= k'}| / k' (so a query with 2 positives ranked 1 and 2 has P@5 = 1), 0 when no positive
was retrieved. Queries without positives under a protocol are skipped (AP NaN) and the means are
taken over the others.

Truncated rankings: `ranked_ids` may hold only the top K < num_db ids per query. Positives beyond K
then count as **not retrieved**: they add nothing to the sum but still count in n, so AP is a lower
bound of the full-ranking AP (equal to it when every positive is within the top K). For mP@k they
lie past the end (k' = k), so mP@k equals the full ranking's whenever the top K holds at least k
non-junk images. The default ranks the whole database (`rank_database`), as the reference does.

An id in both a query's positive and junk lists counts as a positive.

`evaluate_map` runs a model end to end: database descriptors (`extract.extract_descriptors`), query
descriptors from the query images cropped to their boxes, full exact inner-product ranking, the
metrics, optional JSON and PNG. Importing this module does not import TensorFlow.
"""

import logging

import numpy as np

from tf_netvlad.retrieval_gt import (
    REVISITED_PROTOCOLS, RetrievalGroundTruth, ground_truth_from_revisited, index_array,
    load_ground_truth, revisited_lists,
)

logger = logging.getLogger(__name__)

DEFAULT_KS = (1, 5, 10)
QUERY_RESIZE_CHOICES = ("crop", "image")
_WORK_ELEMENTS = 2**20  # elements of the per-chunk (queries x ranked) work arrays
_SCORE_BYTES = 256 * 2**20  # float32 scores + int32 order per query chunk in rank_database
_DB_BLOCK_BYTES = 64 * 2**20  # float32 database rows converted at a time in rank_database


# --------------------------------------------------------------------------- metrics


def average_precision(ranks, num_positives):
    """AP of one query from the sorted 0-based ranks of its retrieved positives (junk removed).

    Example: positives at ranks 0 and 2 of 2 positives: (1 + 1)/2/2 + (1/2 + 2/3)/2/2 = 0.7917.
    """
    ranks = np.asarray(ranks, np.float64).ravel()
    if isinstance(num_positives, bool) or not isinstance(num_positives, (int, np.integer)) \
            or num_positives < max(1, len(ranks)):
        raise ValueError(f"`num_positives` must be an int >= max(1, len(ranks)) = "
                         f"{max(1, len(ranks))}. Received: num_positives={num_positives!r}")
    j = np.arange(len(ranks), dtype=np.float64)
    if len(ranks) and (np.any(ranks != np.round(ranks)) or np.any(ranks < j)
                       or np.any(np.diff(ranks) <= 0)):
        raise ValueError(f"`ranks` must be strictly increasing ints >= 0. Received: {ranks}")
    p0 = np.where(ranks > 0, j / np.maximum(ranks, 1), 1.0)
    p1 = (j + 1) / (ranks + 1)
    return float(np.sum(p0 + p1) / (2.0 * num_positives))


def _check_ks(ks):
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1
                     for k in ks):
        raise ValueError(f"`ks` must be positive ints. Received: ks={ks!r}")
    return tuple(int(k) for k in ks)


def _check_ranked(ranked_ids, num_queries):
    ranked = np.asarray(ranked_ids)
    if ranked.ndim != 2 or not np.issubdtype(ranked.dtype, np.integer) or ranked.shape[1] < 1:
        raise ValueError("`ranked_ids` must be a 2-D integer array (num_queries, K >= 1). "
                         f"Received: shape {ranked.shape}, dtype {ranked.dtype}")
    if len(ranked) != num_queries:
        raise ValueError(f"`ranked_ids` has {len(ranked)} rows for {num_queries} queries.")
    return ranked


def _chunk_metrics(ranked, labels, num_positives, ks):
    """AP and P@k of a chunk: `labels` (c, num_db) int8 with 1 = positive, 2 = junk."""
    lab = np.take_along_axis(labels, ranked, axis=1)
    pos = lab == 1
    rank = np.cumsum(lab != 2, axis=1, dtype=np.int64) - 1  # 0-based rank after junk removal
    j = np.cumsum(pos, axis=1, dtype=np.int64) - 1  # index of a positive among the positives
    p0 = np.where(rank > 0, j / np.maximum(rank, 1), 1.0)
    p1 = (j + 1) / np.maximum(rank + 1, 1)  # rank is -1 only at junk before any kept image
    ap = np.where(pos, p0 + p1, 0.0).sum(axis=1) / (2.0 * np.maximum(num_positives, 1))
    position = np.where(pos, rank + 1, 0)
    # A positive missing from a truncated ranking lies beyond its end: k' = k, as in the full one.
    last = np.where(pos.sum(axis=1) < num_positives, np.iinfo(np.int64).max, position.max(axis=1))
    precision = np.zeros((len(ranked), len(ks)))
    for col, k in enumerate(ks):
        kq = np.minimum(last, k)
        hits = ((position > 0) & (position <= kq[:, None])).sum(axis=1)
        precision[:, col] = np.where(kq > 0, hits / np.maximum(kq, 1), 0.0)
    return ap, precision


def compute_map(ranked_ids, positives, junk=None, ks=DEFAULT_KS, num_db=None):
    """mAP and mP@k of rankings against per-query positive and junk id lists.

    Args:
        ranked_ids: int array `(Q, K)` of database ids, best first, each id at most once per row;
            K = num_db for the full ranking, smaller for a truncated one (see the module doc).
        positives: Q arrays of positive database ids.
        junk: Q arrays of junk ids (removed from the ranking), or None.
        ks: k values of mP@k.
        num_db: database size (default: 1 + the largest id seen).

    Returns:
        dict: "mAP", "mP@k" for each k (means over the queries with positives), "num_queries"
        (scored), "num_queries_skipped" (no positive), "ap" float64 `(Q,)` and "precision"
        `(Q, len(ks))` (NaN for skipped queries).
    """
    ks = _check_ks(ks)
    ranked = _check_ranked(ranked_ids, len(positives))
    junk = [()] * len(positives) if junk is None else junk
    if len(junk) != len(positives):
        raise ValueError(f"`junk` has {len(junk)} entries for {len(positives)} queries.")
    if num_db is None:
        seen = [ranked.max()] + [np.max(x) for x in (*positives, *junk) if len(x)]
        num_db = int(max(seen)) + 1
    if ranked.min() < 0 or ranked.max() >= num_db:
        raise ValueError(f"`ranked_ids` must hold database ids in [0, {num_db}). Received values "
                         f"from {ranked.min()} to {ranked.max()} (padding like -1 is not allowed).")
    pos_lists = [index_array(p, num_db, f"positives[{q}]") for q, p in enumerate(positives)]
    junk_lists = [index_array(p, num_db, f"junk[{q}]") for q, p in enumerate(junk)]
    counts = np.array([len(p) for p in pos_lists], np.int64)
    ap = np.full(len(ranked), np.nan)
    precision = np.full((len(ranked), len(ks)), np.nan)
    rows = max(1, _WORK_ELEMENTS // max(num_db, ranked.shape[1]))
    for start in range(0, len(ranked), rows):
        chunk = ranked[start : start + rows].astype(np.int64)
        ordered = np.sort(chunk, axis=1)
        dup = np.flatnonzero((np.diff(ordered, axis=1) == 0).any(axis=1))
        if len(dup):
            raise ValueError(f"`ranked_ids` row {start + int(dup[0])} lists a database id twice.")
        labels = np.zeros((len(chunk), num_db), np.int8)
        for row in range(len(chunk)):
            labels[row, junk_lists[start + row]] = 2
            labels[row, pos_lists[start + row]] = 1
        ap[start : start + len(chunk)], precision[start : start + len(chunk)] = _chunk_metrics(
            chunk, labels, counts[start : start + len(chunk)], ks)
    scored = counts > 0
    ap[~scored] = np.nan
    precision[~scored] = np.nan
    result = {"mAP": float(np.mean(ap[scored])) if scored.any() else float("nan")}
    for col, k in enumerate(ks):
        result[f"mP@{k}"] = float(np.mean(precision[scored, col])) if scored.any() else float("nan")
    if not scored.any():
        logger.warning("None of the %d queries has a positive: mAP is undefined (NaN).", len(ap))
    result.update(num_queries=int(scored.sum()), num_queries_skipped=int((~scored).sum()), ap=ap,
                  precision=precision)
    return result


def evaluate_rankings(ranked_ids, gt, ks=DEFAULT_KS):
    """`{protocol: compute_map(...)}` for every protocol of a `RetrievalGroundTruth`."""
    return {name: compute_map(ranked_ids, pos, junk, ks=ks, num_db=gt.num_db)
            for name, (pos, junk) in gt.protocols.items()}


def revisited_map(ranked_ids, gnd, ks=DEFAULT_KS):
    """{easy, medium, hard} x {mAP, mP@k} of rankings.

    `gnd`: a `RetrievalGroundTruth` from `load_revisited_gnd`, the pickle's dict, or its "gnd" list
    of per-query dicts with "easy", "hard", "junk" (the database size is then 1 + the largest id).
    """
    if isinstance(gnd, (list, tuple)):
        lists = [revisited_lists(*(np.asarray(g[k], np.int64).ravel()
                                   for k in ("easy", "hard", "junk"))) for g in gnd]
        return {p: compute_map(ranked_ids, [e[p][0] for e in lists], [e[p][1] for e in lists],
                               ks=ks) for p in REVISITED_PROTOCOLS}
    if isinstance(gnd, dict):
        gnd = ground_truth_from_revisited(gnd)
    missing = [p for p in REVISITED_PROTOCOLS if p not in gnd.protocols]
    if missing:
        raise ValueError(f"{gnd.name!r} is not a revisited ground truth (no {missing} protocol).")
    return {p: compute_map(ranked_ids, *gnd.protocols[p], ks=ks, num_db=gnd.num_db)
            for p in REVISITED_PROTOCOLS}


# --------------------------------------------------------------------------- ranking


def rank_database(db, queries, k=None, max_bytes=_SCORE_BYTES):
    """Database ids of every query sorted by decreasing inner product (exact search).

    `k=None` (or k >= num_db) ranks the whole database: queries are taken in chunks whose float32
    score rows and sort order stay under `max_bytes`, the database is converted to float32 in blocks
    (float16 and `np.memmap` inputs are never copied whole), ties keep the lower id. Returns int32
    `(Q, num_db)` (int64 past 2**31 images). A smaller k uses the streamed faiss top-k of
    `tf_netvlad.ranking.exact_topk` (int64 `(Q, k)`).
    """
    for name, x in (("db", db), ("queries", queries)):
        if getattr(x, "ndim", None) != 2 or not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"`{name}` must be a 2-D float array. Received: "
                             f"{type(x).__name__} {getattr(x, 'shape', '')}")
    num_db, dim = db.shape
    if queries.shape[1] != dim or num_db == 0:
        raise ValueError(f"Need a non-empty database and queries of the same dim: db {db.shape}, "
                         f"queries {queries.shape}.")
    if k is not None and k < num_db:
        from tf_netvlad import ranking

        return ranking.exact_topk(db, queries, k)
    dtype = np.int32 if num_db < 2**31 else np.int64
    out = np.empty((len(queries), num_db), dtype)
    rows = max(1, int(max_bytes) // (num_db * (4 + 8)))
    block = max(1, _DB_BLOCK_BYTES // (4 * dim))
    for start in range(0, len(queries), rows):
        chunk = np.asarray(queries[start : start + rows], np.float32)
        if not np.isfinite(chunk).all():
            raise ValueError(f"`queries` rows {start}..{start + len(chunk) - 1} hold NaN or inf.")
        scores = np.empty((len(chunk), num_db), np.float32)
        for b in range(0, num_db, block):
            part = np.asarray(db[b : b + block], np.float32)
            if not np.isfinite(part).all():
                raise ValueError(f"`db` rows {b}..{b + len(part) - 1} hold NaN or inf.")
            scores[:, b : b + len(part)] = chunk @ part.T
        np.negative(scores, out=scores)
        out[start : start + len(chunk)] = np.argsort(scores, axis=1, kind="stable")
    return out


# --------------------------------------------------------------------------- query crops


def crop_box(box, height, width, margin=0.0):
    """Integer pixel window `(x0, y0, x1, y1)` (x1, y1 exclusive) of a box grown by `margin`.

    Each side moves out by `margin` pixels (MATLAB NetVLAD: half the receptive field of the last
    conv layer, e.g. 98 for VGG16 conv5_3 whose receptive field is 196 px; 0 = the tight box), is
    rounded to the nearest pixel edge with halves up (`floor(v + 0.5)`, as MATLAB's `round` in
    `dbVGG.m`; PIL's `Image.crop` in the revisited code rounds halves to even) and is clipped to
    the image. Pixel i covers [i, i + 1), so the window holds columns x0..x1-1.
    """
    x1, y1, x2, y2 = np.asarray(box, np.float64).ravel()
    x0, y0 = max(0, int(np.floor(x1 - margin + 0.5))), max(0, int(np.floor(y1 - margin + 0.5)))
    xe = min(int(width), int(np.floor(x2 + margin + 0.5)))
    ye = min(int(height), int(np.floor(y2 + margin + 0.5)))
    if xe <= x0 or ye <= y0:
        raise ValueError(f"The box {list(np.round([x1, y1, x2, y2], 2))} (margin {margin}) lies "
                         f"outside the {width}x{height} image: nothing to crop.")
    return x0, y0, xe, ye


def _query_image(path, box, image_size, margin, query_resize):
    """One query as float32 `[H, W, 3]`: cropped to its box, resized by the policy."""
    import tensorflow as tf

    from tf_netvlad import data

    image = data.decode_image(tf.io.read_file(path))
    if box is None:
        return data.resize_image(image, image_size).numpy()
    height, width = int(image.shape[0]), int(image.shape[1])
    if query_resize == "crop":
        x0, y0, x1, y1 = crop_box(box, height, width, margin)
        return data.resize_image(image[y0:y1, x0:x1], image_size).numpy()
    resized = data.resize_image(image, image_size)
    scale = np.array([resized.shape[1] / width, resized.shape[0] / height] * 2)
    x0, y0, x1, y1 = crop_box(np.asarray(box) * scale, resized.shape[0], resized.shape[1], margin)
    return resized[y0:y1, x0:x1].numpy()


def extract_query_descriptors(model, gt, images_dir, image_size=None, crop_queries=True,
                              box_margin=0.0, query_resize="crop", ext=".jpg", batch_size=8,
                              progress=True):
    """Query descriptors `(Q, D)` float32 from the query images, cropped to their boxes.

    `query_resize="crop"` (default, as the revisited code: crop, then `image.thumbnail`) crops in
    the original pixels and applies the resize policy `image_size` to the crop, so a max side
    never upscales it; `"image"` resizes the whole image by the policy first and crops the scaled
    box, so the query keeps the scale of its database image. Both are the same with
    `image_size=None` (full resolution, MATLAB NetVLAD). `box_margin` is in pixels of the image
    being cropped. Consecutive crops of equal shape share a model call of up to `batch_size`.
    """
    import tensorflow as tf
    from tqdm.auto import tqdm

    from tf_netvlad import data, extract

    if query_resize not in QUERY_RESIZE_CHOICES:
        raise ValueError(f"`query_resize` must be one of {QUERY_RESIZE_CHOICES}. Received: "
                         f"query_resize={query_resize!r}")
    data.check_batch_size(batch_size)
    if crop_queries and gt.query_boxes is None:
        raise ValueError(f"{gt.name!r} has no query boxes; use crop_queries=False.")
    paths = gt.image_paths(images_dir, ext, which="query")
    data.check_files_exist(paths)
    fixed = data.is_fixed_size(image_size) and (not crop_queries or query_resize == "crop")
    predict = extract.make_predict_fn(model, image_size if fixed else None)
    out, pending = None, []

    def flush():
        nonlocal out
        descriptors = np.asarray(predict(tf.convert_to_tensor(np.stack([p[1] for p in pending]))))
        if out is None:
            out = np.empty((len(paths), descriptors.shape[1]), np.float32)
        out[[p[0] for p in pending]] = descriptors
        pending.clear()

    for q in tqdm(range(len(paths)), desc="queries", unit="img", disable=not progress):
        box = gt.query_boxes[q] if crop_queries else None
        try:
            image = _query_image(paths[q], box, image_size, box_margin, query_resize)
        except (tf.errors.OpError, ValueError) as error:
            reason = data.diagnose_image(paths[q]) or str(error).strip().splitlines()[0]
            raise data.ImageReadError(f"Could not use query image '{paths[q]}' (query {q}, "
                                      f"{gt.query_names[q]!r}): {reason}", path=paths[q],
                                      index=q) from error
        if pending and (image.shape != pending[0][1].shape or len(pending) == batch_size):
            flush()
        pending.append((q, image))
    if pending:
        flush()
    return out


# --------------------------------------------------------------------------- end to end


def _json_protocols(per_protocol):
    out = {}
    for name, metrics in per_protocol.items():
        entry = {k: v for k, v in metrics.items() if k not in ("ap", "precision")}
        entry["ap"] = [None if np.isnan(v) else round(float(v), 6) for v in metrics["ap"]]
        out[name] = entry
    return out


def format_map_table(results):
    """Text table of `evaluate_map` results: one row per protocol, values in %."""
    protocols = results["protocols"]
    keys = [k for k in next(iter(protocols.values())) if k.startswith("mP@")]
    lines = [f"{'protocol':<10}{'queries':>8}{'mAP':>8}" + "".join(f"{k:>8}" for k in keys)]
    for name, m in protocols.items():
        lines.append(f"{name:<10}{m['num_queries']:>8d}{100 * m['mAP']:>8.2f}"
                     + "".join(f"{100 * m[k]:>8.2f}" for k in keys))
    return "\n".join(lines)


def evaluate_map(model, gnd, images_dir, image_size=None, crop_queries=True, batch_size=8,
                 progress=True, ext=".jpg", box_margin=0.0, query_resize="crop", ks=DEFAULT_KS,
                 k=None, json_path=None, plot_path=None, retrievals_path=None, return_ids=False):
    """Oxford/Paris mAP of `model`: extraction, exact ranking, every protocol of the ground truth.

    Args:
        model: `keras.Model` mapping float32 images `[B, H, W, 3]` (0..255 RGB) to `[B, D]`.
        gnd: a `RetrievalGroundTruth`, or a path for `load_ground_truth` (revisited `.pkl` file or
            original text folder; the folder's database is the listing of `images_dir`).
        images_dir: folder of the database (and query) images, `<name><ext>`.
        image_size: resize policy of the database images and of the query crops (None: full
            resolution, as MATLAB NetVLAD).
        crop_queries: crop the queries to their boxes (the standard protocol) or use them whole.
        batch_size, progress: extraction batch size and progress bars.
        ext: image file extension.
        box_margin, query_resize: see `extract_query_descriptors`.
        ks: k values of mP@k.
        k: None ranks the whole database (default); an int truncates the ranking (AP then counts
            positives beyond k as not retrieved).
        json_path, plot_path, retrievals_path: optional JSON results, per-protocol AP histogram
            PNG, and retrieval-grid PNG (first queries, "medium" or the first protocol).
        return_ids: also return the ranked ids.

    Returns:
        dict with "dataset", "protocols" ({protocol: {"mAP", "mP@k", "num_queries",
        "num_queries_skipped", "ap" (per query, None if skipped)}}), "num_db", "num_queries",
        "descriptor_dim", "image_size", "crop_queries", "box_margin", "query_resize", "ranked"
        (or `(results, ids)`).
    """
    from tf_netvlad import data, extract

    gt = gnd if isinstance(gnd, RetrievalGroundTruth) else load_ground_truth(gnd, images_dir, ext)
    ks = _check_ks(ks)
    db_paths = gt.image_paths(images_dir, ext, which="db")
    data.check_files_exist(db_paths + gt.image_paths(images_dir, ext, which="query"))
    db_desc = extract.extract_descriptors(model, db_paths, image_size=image_size,
                                          batch_size=batch_size, progress=progress)
    query_desc = extract_query_descriptors(model, gt, images_dir, image_size, crop_queries,
                                           box_margin, query_resize, ext, batch_size, progress)
    ids = rank_database(db_desc, query_desc, k=k)
    per_protocol = evaluate_rankings(ids, gt, ks=ks)
    results = {
        "dataset": gt.name, "protocols": _json_protocols(per_protocol), "num_db": gt.num_db,
        "num_queries": gt.num_queries, "descriptor_dim": int(db_desc.shape[1]),
        "image_size": data.format_image_size(image_size), "crop_queries": bool(crop_queries),
        "box_margin": float(box_margin), "query_resize": query_resize,
        "ranked": "all" if ids.shape[1] == gt.num_db else int(ids.shape[1]),
    }
    logger.info("%s mAP:\n%s", gt.name, format_map_table(results))
    if json_path is not None:
        from tf_netvlad.reporting import write_json

        write_json(results, json_path)
    if plot_path is not None:
        plot_ap_histograms(per_protocol, plot_path, title=f"{gt.name}: AP per query")
    if retrievals_path is not None:
        plot_map_retrievals(gt, ids, retrievals_path, images_dir, ext=ext)
    return (results, ids) if return_ids else results


# --------------------------------------------------------------------------- figures


def plot_ap_histograms(per_protocol, path, title="AP per query"):
    """One histogram of per-query AP per protocol (bins of 0.1), mAP in each panel's title."""
    from tf_netvlad import plots

    figure = plots._figure(3.2 * len(per_protocol), 3.0)
    for i, (name, metrics) in enumerate(per_protocol.items()):
        ap = np.asarray(metrics["ap"], np.float64)
        ap = ap[np.isfinite(ap)]
        axes = figure.add_subplot(1, len(per_protocol), i + 1)
        axes.hist(ap, bins=np.linspace(0, 1, 11), color="#1f77b4", edgecolor="white")
        axes.set_xlim(0, 1)
        axes.set_xlabel("AP")
        axes.set_ylabel("queries" if i == 0 else "")
        axes.set_title(f"{name}: mAP {100 * metrics['mAP']:.1f}%", fontsize=9)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return plots._save(figure, path)


def plot_map_retrievals(gt, ranked_ids, path, images_dir, protocol=None, queries=None, top=6,
                        ext=".jpg"):
    """Grid of queries and their top retrieved images: positive green, junk grey, wrong red.

    `protocol` defaults to "medium" (revisited) or the first protocol; `queries` to the first 5.
    """
    from tf_netvlad import plots

    protocol = protocol or ("medium" if "medium" in gt.protocols else next(iter(gt.protocols)))
    positives, junk = gt.lists(protocol)
    queries = range(min(5, gt.num_queries)) if queries is None else queries
    db_paths = gt.image_paths(images_dir, ext, which="db")
    query_paths = gt.image_paths(images_dir, ext, which="query")
    rows = []
    for q in queries:
        cells = [(query_paths[q], "query", "#1f77b4")]
        for rank, i in enumerate(np.asarray(ranked_ids[q])[:top], start=1):
            if i in positives[q]:
                cells.append((db_paths[i], f"#{rank} positive", "#2ca02c"))
            elif i in junk[q]:
                cells.append((db_paths[i], f"#{rank} junk", "#7f7f7f"))
            else:
                cells.append((db_paths[i], f"#{rank} wrong", "#d62728"))
        rows.append(cells)
    return plots.draw_grid(rows, path)
