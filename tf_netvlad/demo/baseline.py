"""The raw-pixel baseline of the generated datasets: nearest neighbours on tiny thumbnails (no learning).

A learnt descriptor should beat it; on the generated data it shows how hard the queries' changes of
viewpoint and appearance are for pixels alone (`tf_netvlad demo` reports it beside the k-means init
and the trained model). NumPy + PIL, no TensorFlow.
"""

import numpy as np


def _thumbnails(paths, size, grey, center):
    from PIL import Image
    out = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("L" if grey else "RGB").resize(size, Image.BILINEAR)
            out.append(np.asarray(im, np.float32).reshape(-1))
    x = np.stack(out)
    if center:
        x -= x.mean(axis=1, keepdims=True)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def raw_pixel_recall(split, root=None, ns=(1, 5, 10), size=(16, 12), grey=True, center=False):
    """Recall@N of nearest-neighbour search on L2-normalised raw-pixel thumbnails.

    A baseline that a learnt descriptor should beat. `size` is the thumbnail (W, H); `center`
    subtracts each thumbnail's mean first. Positives: db images within `split.pos_dist_thr`.
    Returns {N: recall} over all queries.
    """
    db = _thumbnails(split.db_image_paths(root), size, grey, center)
    q = _thumbnails(split.query_image_paths(root), size, grey, center)
    n_max = min(max(ns), split.num_db)
    ranked = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :n_max]
    positives = split.positives()
    hit = np.array([np.isin(ranked[i], positives[i]) for i in range(split.num_queries)])
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), n_max)
    return {int(n): float(np.mean(first < n)) for n in ns}
