"""Splits from folders of `@`-named images, as gmberton/VPR-datasets-downloader writes them.

Pure NumPy. A dataset folder holds `database/` and `queries/`, each of images named
`@utm_east@utm_north@zone@letter@lat@lon@...@.jpg`; the positions come from the names. `read_folder`
takes the class to build (`PlaceSplit`) as its first argument, so this module does not import
`tf_netvlad.data.places`; use it through `PlaceSplit.from_folder` or `split_loading.load_split`.
"""

import collections
import os
import re
from pathlib import Path

import numpy as np

from tf_netvlad.data import utm
from tf_netvlad.data.split_files import project_latlon

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def parse_at_name(filename):
    """The fields of a VPR-datasets-downloader name, `@utm_east@utm_north@zone_number@zone_letter@
    lat@lon@pano_id@tile_num@heading@pitch@roll@height@timestamp@note@.jpg` (its `util.py`
    `get_dst_image_name`): a dict with easting, northing (float), zone ('17T', or '' if absent),
    lat, lon (float or None) and timestamp (int of its digits, or None)."""
    fields = os.path.basename(filename).split("@")
    try:
        easting, northing = float(fields[1]), float(fields[2])
    except (IndexError, ValueError):
        raise ValueError(f"Image name {filename!r} does not follow the "
                         "@utm_east@utm_north@zone@letter@lat@lon@...@.jpg convention.") from None
    try:
        zone = utm.normalize_utm_zone("".join(fields[3:5])) if len(fields) > 5 else ""
    except ValueError:
        zone = ""
    try:
        lat, lon = float(fields[5]), float(fields[6])
    except (IndexError, ValueError):
        lat = lon = None
    digits = re.sub(r"\D", "", fields[13] if len(fields) > 14 else "")
    return {"easting": easting, "northing": northing, "zone": zone, "lat": lat, "lon": lon,
            "timestamp": int(digits) if digits else None}


def parse_utm_filename(filename):
    """Parse an `@`-name (`parse_at_name`). Returns (easting, northing, zone, timestamp) where zone
    is a string like "17T" (or "") and timestamp an int or None."""
    d = parse_at_name(filename)
    return d["easting"], d["northing"], d["zone"], d["timestamp"]


def list_images(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Image folder {str(folder)!r} does not exist.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"Image folder {str(folder)!r} contains no .jpg/.jpeg/.png images.")
    return files


def _folder_positions(parsed, where, notes):
    """(N, 2) UTM of `parsed` @-names and their zone; names of several zones are re-projected
    into the most common one from their lat/lon, or refused when the names carry none."""
    xy = np.array([[d["easting"], d["northing"]] for d in parsed], np.float64).reshape(-1, 2)
    zones = [d["zone"] for d in parsed]
    known = collections.Counter(z for z in zones if z)
    if not known:
        return xy, None
    keys = {utm.projection_key(z) for z in known}
    zone = known.most_common(1)[0][0]
    if len(keys) == 1:
        notes.append(f"UTM zone {zone} (from the @-names)")
        return xy, zone
    other = [i for i, z in enumerate(zones) if z and utm.projection_key(z) != utm.projection_key(zone)]
    if any(parsed[i]["lat"] is None for i in other):
        raise ValueError(f"{where} span UTM zones {sorted(known)} and the names carry no "
                         "latitude/longitude to re-project them into one zone; split the dataset "
                         "by zone.")
    lat = [parsed[i]["lat"] for i in other]
    lon = [parsed[i]["lon"] for i in other]
    easting, northing, _ = project_latlon(lat, lon, zone)
    xy[other] = np.stack([easting, northing], axis=1)
    notes.append(f"UTM zone {zone} (from the @-names; {len(other)} images of zones "
                 f"{sorted(set(known) - {zone})} re-projected into it from their latitude/longitude)")
    return xy, zone


def read_folder(cls, db_dir, query_dir, root=None, name=None, **thresholds):
    db_files, q_files = list_images(db_dir), list_images(query_dir)
    root = Path(root) if root is not None else Path(os.path.commonpath(
        [Path(db_dir).resolve(), Path(query_dir).resolve()]))
    parsed = [parse_at_name(f.name) for f in db_files + q_files]
    rel = [os.path.relpath(f.resolve(), root.resolve()) for f in db_files + q_files]
    notes = []
    xy, zone = _folder_positions(
        parsed, f"Images in {os.fspath(db_dir)!r} / {os.fspath(query_dir)!r}", notes)
    stamps = [d["timestamp"] for d in parsed]
    use_ts = all(s is not None for s in stamps)
    n_db = len(db_files)
    return cls(name=name or Path(db_dir).resolve().parent.name,
               db_paths=rel[:n_db], db_utm=xy[:n_db], query_paths=rel[n_db:], query_utm=xy[n_db:],
               db_timestamps=stamps[:n_db] if use_ts else None,
               query_timestamps=stamps[n_db:] if use_ts else None, root=str(root),
               utm_zone=zone, notes=tuple(notes), **thresholds)
