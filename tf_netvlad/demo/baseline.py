"""The raw-pixel baseline of the generated datasets: nearest neighbours on tiny thumbnails (no learning).

A learnt descriptor should beat it; on the generated data it shows how hard the queries' changes of
viewpoint and appearance are for pixels alone (`tf_netvlad demo` reports it beside the k-means init
and the trained model). NumPy + PIL, no TensorFlow.
"""

import numpy as np

MODES = {"grey": "L", "rgb": "RGB"}  # thumbnail kind -> the PIL mode it is converted to


def _thumbnails(paths, size, modes, center):
    """{mode: (n, d) L2-normalised thumbnails} of `paths`, each file opened and decoded once."""
    from PIL import Image

    out = {mode: [] for mode in modes}
    for p in paths:
        with Image.open(p) as im:
            im.load()
            for mode in modes:
                small = im.convert(MODES[mode]).resize(size, Image.BILINEAR)
                out[mode].append(np.asarray(small, np.float32).reshape(-1))
    result = {}
    for mode, rows in out.items():
        x = np.stack(rows)
        if center:
            x -= x.mean(axis=1, keepdims=True)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        result[mode] = x
    return result


def raw_pixel_recalls(split, root=None, ns=(1, 5, 10), size=(16, 12), modes=("grey", "rgb"), center=False):
    """`{mode: {N: recall}}` of `raw_pixel_recall` for several thumbnail kinds ("grey", "rgb"),
    every image read once for all of them."""
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"Unknown thumbnail modes {sorted(unknown)}; modes: {', '.join(MODES)}.")
    db = _thumbnails(split.db_image_paths(root), size, modes, center)
    q = _thumbnails(split.query_image_paths(root), size, modes, center)
    n_max = min(max(ns), split.num_db)
    positives = split.positives()
    results = {}
    for mode in modes:
        ranked = np.argsort(-(q[mode] @ db[mode].T), axis=1, kind="stable")[:, :n_max]
        hit = np.array([np.isin(ranked[i], positives[i]) for i in range(split.num_queries)])
        first = np.where(hit.any(axis=1), hit.argmax(axis=1), n_max)
        results[mode] = {int(n): float(np.mean(first < n)) for n in ns}
    return results


def raw_pixel_recall(split, root=None, ns=(1, 5, 10), size=(16, 12), grey=True, center=False):
    """Recall@N of nearest-neighbour search on L2-normalised raw-pixel thumbnails.

    A baseline that a learnt descriptor should beat. `size` is the thumbnail (W, H); `center`
    subtracts each thumbnail's mean first. Positives: db images within `split.pos_dist_thr`.
    Returns {N: recall} over all queries.
    """
    mode = "grey" if grey else "rgb"
    return raw_pixel_recalls(split, root, ns, size, (mode,), center)[mode]
