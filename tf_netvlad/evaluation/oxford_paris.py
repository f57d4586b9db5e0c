"""Oxford5k / Paris6k retrieval mAP with ok/junk lists: the original and the revisited protocols.

`evaluate_map` runs a model end to end on a `RetrievalGroundTruth` (the revisited
easy/medium/hard protocols or the original good+ok/junk one, `tf_netvlad.evaluation.ground_truth`):
database descriptors (`extract.extract_descriptors`), query descriptors from the query images
cropped to their boxes (`extract_query_descriptors`), full exact inner-product ranking, the metrics
of `tf_netvlad.evaluation.map_metrics` (AP with junk removal, mP@k), optional JSON and PNG. Both
public functions parse `image_size` once. Importing this module does not import TensorFlow.
"""

import logging

import numpy as np

from tf_netvlad.data.image_size import format_image_size, is_fixed_size, parse_image_size
from tf_netvlad.defaults import EXTRACT_BATCH_SIZE
from tf_netvlad.evaluation.ground_truth import RetrievalGroundTruth, load_ground_truth
from tf_netvlad.evaluation.map_metrics import DEFAULT_KS, check_ks, evaluate_rankings, rank_database

logger = logging.getLogger(__name__)

QUERY_RESIZE_CHOICES = ("crop", "image")


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
    """One query as float32 `[H, W, 3]`: cropped to its box, resized by the parsed policy."""
    import tensorflow as tf

    from tf_netvlad.data.images import decode_image, resize_image

    image = decode_image(tf.io.read_file(path))
    if box is None:
        return resize_image(image, image_size).numpy()
    height, width = int(image.shape[0]), int(image.shape[1])
    if query_resize == "crop":
        x0, y0, x1, y1 = crop_box(box, height, width, margin)
        return resize_image(image[y0:y1, x0:x1], image_size).numpy()
    resized = resize_image(image, image_size)
    scale = np.array([resized.shape[1] / width, resized.shape[0] / height] * 2)
    x0, y0, x1, y1 = crop_box(np.asarray(box) * scale, resized.shape[0], resized.shape[1], margin)
    return resized[y0:y1, x0:x1].numpy()


def extract_query_descriptors(model, gt, images_dir, image_size=None, crop_queries=True,
                              box_margin=0.0, query_resize="crop", ext=".jpg",
                              batch_size=EXTRACT_BATCH_SIZE, progress=True):
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

    from tf_netvlad.data import pipelines
    from tf_netvlad.data.images import diagnose_image
    from tf_netvlad.models import extract

    image_size = parse_image_size(image_size)
    if query_resize not in QUERY_RESIZE_CHOICES:
        raise ValueError(f"`query_resize` must be one of {QUERY_RESIZE_CHOICES}. Received: "
                         f"query_resize={query_resize!r}")
    pipelines.check_batch_size(batch_size)
    if crop_queries and gt.query_boxes is None:
        raise ValueError(f"{gt.name!r} has no query boxes; use crop_queries=False.")
    paths = gt.image_paths(images_dir, ext, which="query")
    pipelines.check_files_exist(paths)
    fixed = is_fixed_size(image_size) and (not crop_queries or query_resize == "crop")
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
            reason = diagnose_image(paths[q]) or str(error).strip().splitlines()[0]
            raise pipelines.ImageReadError(f"Could not use query image '{paths[q]}' (query {q}, "
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


def evaluate_map(model, gnd, images_dir, image_size=None, crop_queries=True,
                 batch_size=EXTRACT_BATCH_SIZE, progress=True, ext=".jpg", box_margin=0.0,
                 query_resize="crop", ks=DEFAULT_KS, k=None, json_path=None, plot_path=None, retrievals_path=None, return_ids=False):
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
    from tf_netvlad.data import pipelines
    from tf_netvlad.models import extract

    image_size = parse_image_size(image_size)
    gt = gnd if isinstance(gnd, RetrievalGroundTruth) else load_ground_truth(gnd, images_dir, ext)
    ks = check_ks(ks)
    db_paths = gt.image_paths(images_dir, ext, which="db")
    pipelines.check_files_exist(db_paths + gt.image_paths(images_dir, ext, which="query"))
    db_desc = extract.extract_descriptors(model, db_paths, image_size=image_size,
                                          batch_size=batch_size, progress=progress)
    query_desc = extract_query_descriptors(model, gt, images_dir, image_size, crop_queries,
                                           box_margin, query_resize, ext, batch_size, progress)
    ids = rank_database(db_desc, query_desc, k=k)
    per_protocol = evaluate_rankings(ids, gt, ks=ks)
    results = {
        "dataset": gt.name, "protocols": _json_protocols(per_protocol), "num_db": gt.num_db,
        "num_queries": gt.num_queries, "descriptor_dim": int(db_desc.shape[1]),
        "image_size": format_image_size(image_size), "crop_queries": bool(crop_queries),
        "box_margin": float(box_margin), "query_resize": query_resize,
        "ranked": "all" if ids.shape[1] == gt.num_db else int(ids.shape[1]),
    }
    logger.info("%s mAP:\n%s", gt.name, format_map_table(results))
    if json_path is not None:
        from tf_netvlad.data.fileio import write_json

        write_json(results, json_path)
    if plot_path is not None:
        plot_ap_histograms(per_protocol, plot_path, title=f"{gt.name}: AP per query")
    if retrievals_path is not None:
        plot_map_retrievals(gt, ids, retrievals_path, images_dir, ext=ext)
    return (results, ids) if return_ids else results


# --------------------------------------------------------------------------- figures


def plot_ap_histograms(per_protocol, path, title="AP per query"):
    """One histogram of per-query AP per protocol (bins of 0.1), mAP in each panel's title."""
    from tf_netvlad.evaluation import plots

    figure = plots.new_figure(3.2 * len(per_protocol), 3.0)
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
    return plots.save_figure(figure, path)


def plot_map_retrievals(gt, ranked_ids, path, images_dir, protocol=None, queries=None, top=6,
                        ext=".jpg"):
    """Grid of queries and their top retrieved images: positive green, junk grey, wrong red.

    `protocol` defaults to "medium" (revisited) or the first protocol; `queries` to the first 5.
    """
    from tf_netvlad.evaluation import plots

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
