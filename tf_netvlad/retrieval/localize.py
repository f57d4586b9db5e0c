"""Localisation of query photos against a `RetrievalIndex`: top-N places, an estimated position,
JSON output and a PNG grid of queries and retrievals.

Estimated position (`estimate_position`): the similarity-weighted mean of the positions of the
top-1 retrieved image and of the other top-k images that lie within `radius` (25 m) of the top-1.
Retrievals far from the top-1 (a different place that merely looks alike) are left out, so one
wrong neighbour cannot drag the estimate between two places; when the top-1 has no known position
the first retrieved image that has one is the anchor. Weights are the inner-product scores
clipped to >= 1e-6. It returns None when no retrieved image has a position.

A retrieval counts as correct when it lies within `radius` of the query's ground-truth position
(25 m, the positive radius of the Pittsburgh/Tokyo protocols: `defaults.POS_DIST_THR_M`).

Positions are UTM metres. When the index knows their zone (`RetrievalIndex.utm_zone`, e.g.
"17T": from the split, the `@`-file names or `--utm-zone`), every position is also given as WGS84
latitude/longitude (`tf_netvlad.data.utm.utm_to_latlon`): the estimate as `estimated_latlon`,
each retrieval as `latlon`. An index holds positions of one zone only, so the two never mix.

Importing this module does not import TensorFlow; `localize` does, to run the model.
"""

import os

import numpy as np

from tf_netvlad.data import utm
from tf_netvlad.data.fileio import resolve_paths, write_json
from tf_netvlad.data.image_size import parse_image_size
from tf_netvlad.defaults import EXTRACT_BATCH_SIZE, LOCALIZE_TOP_K, POS_DIST_THR_M


def estimate_position(positions, scores, radius=POS_DIST_THR_M):
    """Similarity-weighted mean position of the retrievals within `radius` of the first one.

    Args:
        positions: `(k, 2)` positions of the retrieved images, best first; NaN rows = unknown.
        scores: `(k,)` similarity scores, best first.
        radius: metres around the anchor (top-1 with a known position) that are averaged.

    Returns:
        `np.ndarray (2,)` float64, or None when no retrieved image has a known position.
    """
    positions = np.asarray(positions, np.float64).reshape(-1, 2)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(scores) != len(positions):
        raise ValueError(f"Need one score per position: {len(positions)} positions, "
                         f"{len(scores)} scores.")
    known = np.flatnonzero(np.isfinite(positions).all(axis=1))
    if not len(known):
        return None
    anchor = positions[known[0]]
    near = known[np.linalg.norm(positions[known] - anchor, axis=1) <= float(radius)]
    weights = np.clip(scores[near], 1e-6, None)
    return (weights[:, None] * positions[near]).sum(axis=0) / weights.sum()


def _as_gt(gt_positions, count):
    if gt_positions is None:
        return None
    gt = np.asarray(gt_positions, np.float64)
    if gt.shape != (count, 2):
        raise ValueError(f"`gt_positions` must have shape ({count}, 2): one (easting, northing) "
                         f"per query image. Received shape {gt.shape}")
    return gt


def _position(p):
    return None if p is None or not np.isfinite(p).all() else [float(p[0]), float(p[1])]


def _latlon(p, zone):
    """`[latitude, longitude]` of UTM position `p` in `zone`, or None when either is unknown."""
    if zone is None or p is None or not np.isfinite(p).all():
        return None
    lat, lon = utm.utm_to_latlon(p[0], p[1], zone)
    return [float(lat), float(lon)]


def localize(index, model_or_path, image_paths, k=LOCALIZE_TOP_K, image_size=None,
             gt_positions=None, root=None, batch_size=EXTRACT_BATCH_SIZE, radius=POS_DIST_THR_M,
             progress=False, on_error="raise"):
    """Retrieves the top-k database images for each query and estimates its position.

    Args:
        index: a `RetrievalIndex` or an index directory.
        model_or_path: the index's model (a `keras.Model` or `.keras` path); another model is
            refused with `ModelMismatchError`.
        image_paths: query image paths (relative to `root` unless absolute).
        k: number of retrieved database images per query.
        image_size: resize policy for the queries ("keep", max side, (H, W) or their text);
            None uses the index's policy.
        gt_positions: optional `(Q, 2)` ground-truth positions (NaN rows = unknown).
        root: optional root for relative query paths.
        batch_size: images per model call.
        radius: metres, for the position estimate and for correctness.
        progress: show a tqdm bar while extracting.
        on_error: "raise" stops at the first unreadable query with `ImageReadError` naming it;
            "skip" localises the other queries and gives the unreadable one a result with an
            `error` (why it could not be read) and an empty `top`.

    Returns:
        a list (one per query) of JSON-serialisable dicts: `query`, `top` (list of `rank`, `id`,
        `path`, `position` or None, `latlon` or None, `score`, and `correct`/`distance_m` with
        ground truth), `estimated_position` ([easting, northing] or None), `utm_zone` (the
        index's, or None), `estimated_latlon` ([latitude, longitude] in degrees, None without a
        zone or an estimate), and with ground truth
        `gt_position`, `error_m` (estimate vs truth) and `top1_correct` (None where the truth is
        unknown, i.e. a NaN row of `gt_positions`, or nothing was retrieved). A skipped query's dict
        has `query`, `error`, `top: []` and `estimated_position: None`.
    """
    from tf_netvlad.data.images import diagnose_image
    from tf_netvlad.models import extract
    from tf_netvlad.models.identity import load_descriptor_model, warn_if_not_training_size
    from tf_netvlad.retrieval.index import RetrievalIndex

    if not isinstance(index, RetrievalIndex):
        index = RetrievalIndex.load(index)
    if isinstance(image_paths, (str, os.PathLike)):
        image_paths = [image_paths]
    queries = resolve_paths(image_paths, root)
    if not queries:
        raise ValueError("`image_paths` is empty: give at least one query image.")
    gt = _as_gt(gt_positions, len(queries))
    model, label = load_descriptor_model(model_or_path)
    index.check_model(model, label)
    policy = index.image_size if image_size is None else parse_image_size(image_size)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"`on_error` must be 'raise' or 'skip'. Received: {on_error!r}")
    warn_if_not_training_size(model, policy, "localizes the queries")
    extracted = extract.extract_descriptors(model, queries, image_size=policy, batch_size=batch_size,
                                            progress=progress, on_error=on_error)
    descriptors, skipped = extracted if on_error == "skip" else (extracted, ())
    readable = np.setdiff1d(np.arange(len(queries)), skipped)
    results = [None] * len(queries)
    scores, ids = index.search(descriptors[readable], k) if len(readable) else ((), ())
    for row, q in enumerate(readable):
        results[q] = _result(index, queries[q], scores[row], ids[row],
                             None if gt is None else gt[q], radius)
    for q in skipped:
        reason = diagnose_image(queries[q]) or "could not be read or decoded"
        results[q] = {"query": queries[q], "error": reason, "top": [], "estimated_position": None,
                      "utm_zone": index.utm_zone, "estimated_latlon": None}
    return results


def _result(index, query, scores, ids, gt, radius):
    valid = ids >= 0
    scores, ids = scores[valid], ids[valid]
    positions = index.positions[ids]
    estimate = estimate_position(positions, scores, radius) if len(ids) else None
    top = []
    for rank, (i, score, position) in enumerate(zip(ids, scores, positions), start=1):
        entry = {"rank": rank, "id": int(i), "path": index.full_path(i),
                 "position": _position(position), "latlon": _latlon(position, index.utm_zone),
                 "score": float(score)}
        if gt is not None and np.isfinite(gt).all():
            distance = float(np.linalg.norm(position - gt))
            entry["distance_m"] = distance if np.isfinite(distance) else None
            entry["correct"] = bool(distance <= radius)
        top.append(entry)
    result = {"query": query, "top": top, "estimated_position": _position(estimate),
              "utm_zone": index.utm_zone, "estimated_latlon": _latlon(estimate, index.utm_zone)}
    if gt is not None:
        result["gt_position"] = _position(gt)
        known = estimate is not None and np.isfinite(gt).all()
        result["error_m"] = float(np.linalg.norm(estimate - gt)) if known else None
        # None when the truth is unknown (NaN row) or nothing was retrieved
        result["top1_correct"] = top[0]["correct"] if top and "correct" in top[0] else None
    return result


def positions_from_split(split, image_paths, root=None, missing="raise"):
    """Ground-truth positions of `image_paths` looked up among a split's query and db images.

    A path matches a split image by its full path, else by its path relative to the split root
    (path suffix), else by a file name that occurs once in the split. An image that is not in the
    split raises `ValueError` naming it (`missing="raise"`), or gets a NaN row, i.e. an unknown
    position, which `localize` and `plot_localization` leave unmarked (`missing="nan"`).

    Returns:
        `(Q, 2)` float64 positions.
    """
    if missing not in ("raise", "nan"):
        raise ValueError(f"`missing` must be 'raise' or 'nan'. Received: {missing!r}")
    from tf_netvlad.data.fileio import resolve_paths

    relative = list(split.query_paths) + list(split.db_paths)
    utm = np.concatenate([split.query_utm, split.db_utm]).reshape(-1, 2)
    by_relative = {os.path.normpath(p): i for i, p in enumerate(relative)}
    by_name = {}
    for i, p in enumerate(relative):
        by_name.setdefault(os.path.basename(p), []).append(i)
    split_root = os.path.abspath(split.root) if split.root is not None else None
    found = np.empty((len(image_paths), 2))
    for q, path in enumerate(resolve_paths(image_paths, root)):
        full = os.path.abspath(path)
        match = None
        if split_root is not None and full.startswith(os.path.join(split_root, "")):
            match = by_relative.get(os.path.normpath(os.path.relpath(full, split_root)))
        if match is None:
            parts = os.path.normpath(path).split(os.sep)
            match = next((by_relative[s] for s in (os.path.join(*parts[j:])
                                                   for j in range(len(parts)))
                          if s in by_relative), None)
        if match is None and len(by_name.get(os.path.basename(path), [])) == 1:
            match = by_name[os.path.basename(path)][0]
        if match is None and missing == "nan":
            found[q] = np.nan
            continue
        if match is None:
            raise ValueError(
                f"Query image {path!r} is not among the {split.num_queries} query and "
                f"{split.num_db} database images of split {split.name!r}, so its ground-truth "
                "position is unknown. Check the image and the --gt-dataset file."
            )
        found[q] = utm[match]
    return found


def write_results(results, path):
    """Writes localisation results as strict JSON atomically; returns `path`."""
    return write_json(results, path, allow_nan=False)


def format_results(results):
    """Human-readable summary, one block per query (for the CLI)."""
    lines = []
    for result in results:
        if "error" in result:
            lines.append(f"{result['query']}: not localised, {result['error']}")
            continue
        estimate, latlon = result.get("estimated_position"), result.get("estimated_latlon")
        where = "unknown" if estimate is None else f"({estimate[0]:.1f}, {estimate[1]:.1f})"
        if latlon is not None:
            where += f" UTM {result['utm_zone']} = latitude {latlon[0]:.6f}, longitude {latlon[1]:.6f}"
        error = result.get("error_m")
        lines.append(f"{result['query']}: estimated position {where}"
                     + ("" if error is None else f", {error:.1f} m from the ground truth"))
        for entry in result["top"]:
            position = entry["position"]
            place = "?" if position is None else f"({position[0]:.1f}, {position[1]:.1f})"
            mark = {True: " correct", False: " wrong"}.get(entry.get("correct"), "")
            lines.append(f"  #{entry['rank']} {entry['score']:.4f} {place} {entry['path']}{mark}")
    return "\n".join(lines)


def plot_localization(results, path, gt=None, radius=POS_DIST_THR_M, thumb_size=160):
    """PNG grid: each row a query then its retrieved images, best first.

    Retrievals get a green frame when within `radius` of the query's ground truth, red when
    not, grey when the truth (or the retrieval's position) is unknown. Ground truth comes from
    `gt` (`(Q, 2)`, NaN rows = unknown) or else from the results' `gt_position`.

    Returns:
        `path`.
    """
    from tf_netvlad.evaluation import plots

    if not results:
        raise ValueError("`results` is empty: nothing to plot.")
    gt = _as_gt(gt, len(results))
    rows = []
    for q, result in enumerate(results):
        truth = gt[q] if gt is not None else np.asarray(
            result.get("gt_position") or [np.nan, np.nan], np.float64)
        query_title = "query, unreadable" if "error" in result else "query"
        if np.isfinite(truth).all() and result.get("estimated_position") is not None:
            error = np.linalg.norm(np.asarray(result["estimated_position"]) - truth)
            query_title = f"query, est. {error:.0f} m off"
        cells = [(result["query"], query_title, "#1f77b4")]
        for entry in result["top"]:
            position = np.asarray(entry["position"] or [np.nan, np.nan], np.float64)
            distance = np.linalg.norm(position - truth)
            text = f"#{entry['rank']} {entry['score']:.3f}"
            if np.isfinite(distance):
                ok = distance <= radius
                text += f" {'ok' if ok else 'wrong'} {distance:.0f} m"
                color = "#2ca02c" if ok else "#d62728"
            else:
                color = "#7f7f7f"
            cells.append((entry["path"], text, color))
        rows.append(cells)
    return plots.draw_grid(rows, path, thumb_size=thumb_size, fontsize=7, row_height=1.8)
