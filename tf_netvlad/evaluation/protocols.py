"""Evaluation protocols of the NetVLAD reference code, as TF-free and faiss-free NumPy functions.

* `pitts` (Pittsburgh 30k/250k and any split without time stamps): recall@N of the plain ranked
  list, positives within the split's radius (25 m).
* `tokyotm` (TokyoTM, splits with time stamps): database images taken at the query's time stamp
  are removed from its ranking and its positives (MATLAB `dbTokyoTimeMachine.m`).
* `tokyo247` (Tokyo 24/7, MATLAB `dbTokyo247.m`):
  - the database holds 12 perspective cutouts per panorama, stored consecutively, so the
    panorama of 0-based database id `i` is `i // 12` (MATLAB: `(id-1) div 12` for 1-based ids).
    The ranked list is **panorama non-max suppressed**: only the first (best) cutout of each
    panorama is kept, so a panorama counts once; recall@N uses the first N kept entries. Enough
    candidates are retrieved beforehand: `12 * max(N)` (MATLAB `nTop * 12`).
  - queries are split by capture condition through their order: 1-based `iQuery mod 3` = 1, 2, 0
    means day, sunset, night, i.e. 0-based query `q` is day for `q % 3 == 0`, sunset for
    `q % 3 == 1`, night for `q % 3 == 2`. recall@N is also reported per condition.
  - queries are downscaled to 640x480 (the dataset's instruction), the database is used at its
    own resolution. Here this is the "max side 640" resize policy: a 4:3 landscape photo becomes
    exactly 640x480 (W x H), a 3:4 portrait one 480x640 (the aspect ratio is always kept, never
    stretched), and images already within 640 pixels are not upscaled.

`resolve_protocol` picks the protocol of a split ("auto"): a name containing "tokyo247" or
"24/7" (case and separators ignored) is Tokyo 24/7, a split with time stamps is TokyoTM,
anything else is Pittsburgh.

Also here: the default approximate (IVF-PQ) faiss index for a database size and dimension, and
the number of training rows such an index needs.
"""

import math
import re

import numpy as np

from tf_netvlad.data.image_size import check_image_size
from tf_netvlad.search.index_kinds import largest_divisor

PROTOCOLS = ("auto", "pitts", "tokyo247", "tokyotm")
TOKYO247_CUTOUTS_PER_PANORAMA = 12
TOKYO247_QUERY_IMAGE_SIZE = 640  # max side: 4:3 queries become 640x480
TOKYO247_CONDITIONS = ("day", "sunset", "night")  # 0-based query index % 3 -> condition


def _normalised_name(name):
    return re.sub(r"[^a-z0-9]", "", str(name or "").lower())


def is_tokyo247_name(name):
    """True for split names such as "tokyo247", "Tokyo 24/7", "tokyo_24-7_test"."""
    return "tokyo247" in _normalised_name(name)


def resolve_protocol(protocol="auto", split=None):
    """The concrete protocol ("pitts", "tokyo247" or "tokyotm") for `split`.

    Args:
        protocol: one of `PROTOCOLS`; "auto" detects it from `split` (see the module docstring).
        split: a `places.PlaceSplit` (or anything with `name` and `has_timestamps`); needed for
            "auto" and "tokyotm".
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"`protocol` must be one of {PROTOCOLS}. Received: protocol={protocol!r}")
    has_timestamps = bool(getattr(split, "has_timestamps", False))
    if protocol == "auto":
        if split is None:
            return "pitts"
        if is_tokyo247_name(getattr(split, "name", "")):
            return "tokyo247"
        return "tokyotm" if has_timestamps else "pitts"
    if protocol == "tokyotm" and split is not None and not has_timestamps:
        raise ValueError(
            f"protocol='tokyotm' needs database and query time stamps, but split "
            f"{getattr(split, 'name', '?')!r} has none (dbTimeStamp/qTimeStamp in the .mat, a "
            "`timestamp` CSV column, or the time stamp field of @-named files)."
        )
    return protocol


def is_auto(query_image_size):
    """True for the "auto" query policy (the only value `query_image_size` takes besides a policy)."""
    return isinstance(query_image_size, str) and query_image_size == "auto"


def query_image_size(protocol, image_size, query_image_size="auto"):
    """The parsed resize policy for the query images, from the parsed database policy.

    "auto" gives `image_size` itself, except for Tokyo 24/7 where queries are downscaled to at
    most 640 pixels on the longer side (`TOKYO247_QUERY_IMAGE_SIZE`): with `image_size` None
    (full resolution) or a larger max side, 640 is used; a smaller max side or a fixed `(H, W)`
    the caller chose for both sides is kept. A parsed policy is returned unchanged.
    """
    check_image_size(image_size)
    if not is_auto(query_image_size):
        return check_image_size(query_image_size)
    if protocol != "tokyo247":
        return image_size
    if image_size is None or (isinstance(image_size, int)
                              and image_size > TOKYO247_QUERY_IMAGE_SIZE):
        return TOKYO247_QUERY_IMAGE_SIZE
    return image_size


def check_panorama_layout(num_db, cutouts=TOKYO247_CUTOUTS_PER_PANORAMA):
    """Refuses a database whose size is not a whole number of panoramas."""
    if isinstance(cutouts, bool) or not isinstance(cutouts, (int, np.integer)) or cutouts < 1:
        raise ValueError(f"`cutouts` must be an int >= 1. Received: cutouts={cutouts!r}")
    if num_db % cutouts:
        raise ValueError(
            f"The Tokyo 24/7 protocol groups the database into panoramas of {cutouts} consecutive "
            f"cutouts, but the database has {num_db} images ({num_db % cutouts} left over). Check "
            "the split, or evaluate it with protocol='pitts'."
        )


def panorama_nms(ids, max_n, cutouts=TOKYO247_CUTOUTS_PER_PANORAMA):
    """Keeps only the first database id of each panorama in every ranked row.

    Args:
        ids: int array `(Q, k)` of 0-based database ids, best first; -1 marks empty slots
            (skipped).
        max_n: length of the returned rows (the largest N of recall@N).
        cutouts: cutouts per panorama; id `i` belongs to panorama `i // cutouts`.

    Returns:
        int64 `(Q, max_n)`: the surviving ids in their original order, padded with -1 when a row
        has fewer than `max_n` distinct panoramas.

    Example:
    >>> panorama_nms([[13, 12, 3, 25, -1]], max_n=3).tolist()
    [[13, 3, 25]]
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"`ids` must be 2-D (num_queries, k). Received shape {ids.shape}")
    if isinstance(max_n, bool) or not isinstance(max_n, (int, np.integer)) or max_n < 1:
        raise ValueError(f"`max_n` must be an int >= 1. Received: max_n={max_n!r}")
    check_panorama_layout(0, cutouts)
    out = np.full((len(ids), int(max_n)), -1, np.int64)
    for q, row in enumerate(ids):
        row = row[row >= 0]
        _, first = np.unique(row // cutouts, return_index=True)
        kept = row[np.sort(first)][: int(max_n)]
        out[q, : len(kept)] = kept
    return out


def tokyo247_conditions(num_queries):
    """Capture condition of each query by its 0-based index: day, sunset, night, day, ...

    Example:
    >>> tokyo247_conditions(4).tolist()
    ['day', 'sunset', 'night', 'day']
    """
    return np.asarray(TOKYO247_CONDITIONS)[np.arange(int(num_queries)) % 3]


# --------------------------------------------------------------------------- approximate index

_PQ = re.compile(r"PQ(\d+)(?:x(\d+))?")
_IVF = re.compile(r"IVF(\d+)")


def default_approx_factory(num_db, dim):
    """faiss factory string "IVF{nlist},PQ{m}[x{bits}]" for `num_db` vectors of dimension `dim`.

    nlist is the power of two nearest 4·sqrt(num_db), capped so every cell gets >= 39 training
    vectors (faiss' own warning threshold); m is the largest divisor of `dim` not above
    max(8, D/16) (16-D sub-vectors) and 256: 256-byte codes for D = 4096 and 32768, 16 for 256.
    (64-byte codes lose most of the recall on whitened 4096-D descriptors, whose variance is spread
    evenly over all dimensions: see benchmarks/RESULTS.md.) 8 bits per sub-quantiser, fewer (down
    to 4) when the database has fewer than 39 vectors per PQ centroid. Raises `ValueError` below
    39 * 16 = 624 vectors.

    Example:
    >>> default_approx_factory(75984, 4096), default_approx_factory(1200, 100)
    ('IVF1024,PQ256', 'IVF30,PQ5x4')
    """
    num_db, dim = int(num_db), int(dim)
    bits = min(8, int(math.floor(math.log2(max(num_db, 1) / 39)))) if num_db >= 39 else 0
    if bits < 4:
        raise ValueError(
            f"The default IVF-PQ index needs at least 624 database vectors (39 per centroid of a "
            f"4-bit product quantiser); the database has {num_db}. Report exact recall only, or "
            "pass a factory that needs less training data (e.g. 'IVF4,Flat')."
        )
    nlist = 2 ** round(math.log2(4 * math.sqrt(num_db)))
    nlist = max(1, min(nlist, num_db // 39))
    m = largest_divisor(dim, min(dim, 256, max(8, dim // 16)))
    return f"IVF{nlist},PQ{m}" + ("" if bits == 8 else f"x{bits}")


def approx_min_train(factory):
    """Minimum training rows of a factory string: max(IVF cells, 2**PQ bits); 1 if neither."""
    need = 1
    ivf = _IVF.search(factory)
    if ivf:
        need = max(need, int(ivf.group(1)))
    pq = _PQ.search(factory)
    if pq:
        need = max(need, 2 ** int(pq.group(2) or 8))
    return need


def approx_train_size(factory, num_db):
    """Default number of training rows: 40 per IVF cell, at least 39 per PQ centroid, <= num_db."""
    ivf = _IVF.search(factory)
    want = 40 * int(ivf.group(1)) if ivf else 0
    pq = _PQ.search(factory)
    if pq:
        want = max(want, 39 * 2 ** int(pq.group(2) or 8))
    return int(min(num_db, max(want, approx_min_train(factory))))


def approx_nprobe(factory):
    """Default IVF cells visited per query: nlist // 16, at least 8 (all cells if fewer)."""
    ivf = _IVF.search(factory)
    if not ivf:
        return None
    nlist = int(ivf.group(1))
    return min(nlist, max(8, nlist // 16))
