"""The UTM zone of a retrieval index's positions: where its label comes from, and one zone per index.

Positions are UTM eastings/northings (metres), comparable only within one projection: a zone
number and hemisphere (`tf_netvlad.data.utm`). The label ("17T") of the images that a build or an
`add` indexes is the caller's `utm_zone`, else the split's, else the one in the `@`-file names of
a folder; it must fit the positions. An `add` never puts positions of two zones into one index.
`RetrievalIndex.utm_zone` holds the label, and `localize` uses it to answer in latitude/longitude.

Importing this module does not import TensorFlow.
"""

import logging
import os
from pathlib import Path

import numpy as np

from tf_netvlad.data import utm
from tf_netvlad.retrieval import storage

# The records keep the name they had when this code was part of `tf_netvlad.retrieval.index`
# (the CLI prints `%(name)s`).
logger = logging.getLogger("tf_netvlad.retrieval.index")


def images_and_zone(images, positions, root, utm_zone):
    """`(paths, positions, root, zone label or None)` of the images a build or an add indexes."""
    images, zone = _split_and_zone(images, root, utm_zone)
    paths, positions, root = storage.resolve_images(images, positions, root)
    zone = _positions_zone(zone, images, paths, positions, explicit=utm_zone is not None)
    return paths, positions, root, zone


def _split_and_zone(images, root, utm_zone):
    """`(images, zone label or None)`: a split file is loaded here, so that its zone is known."""
    if isinstance(images, (str, os.PathLike)) and Path(images).is_file():
        from tf_netvlad.data.split_loading import load_split

        images = load_split(images, root=root)
    found = getattr(images, "utm_zone", None)
    if utm_zone is not None and found is not None and not utm.same_projection(utm_zone, found):
        raise ValueError(f"utm_zone={utm_zone!r} (CLI --utm-zone) disagrees with the split, whose "
                         f"positions are in UTM zone {found}: leave it out.")
    return images, utm_zone if utm_zone is not None else found


def _positions_zone(zone, images, paths, positions, explicit):
    """The zone label of the positions, checked against them (`utm.check_zone_fits`); for a
    folder without one, the zone of its `@`-file names, refused when they name two zones.

    A label the caller gave (`explicit`) that does not fit is refused; one read from the data
    (made-up positions with a real label, say) is dropped with a warning: no lat/lon then."""
    if zone is None and isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        from tf_netvlad.data.image_folders import parse_utm_filename

        try:
            labels = {parse_utm_filename(os.path.basename(p))[2] for p in paths} - {""}
        except ValueError:
            labels = set()
        if len({utm.projection_key(z) for z in labels}) > 1:
            raise ValueError(
                f"The images in {os.fspath(images)!r} lie in UTM zones {sorted(labels)}: "
                "eastings/northings of different zones cannot be compared. Index each zone "
                "separately, or pass positions re-projected into one zone "
                "(tf_netvlad.data.utm.latlon_to_utm(lat, lon, zone=...)) and `utm_zone`."
            )
        zone = min(labels) if labels else None
    if zone is None:
        return None
    try:
        return utm.check_zone_fits(positions, zone, "the image positions")
    except ValueError as error:
        if explicit:
            raise
        logger.warning("Not recording the UTM zone of the positions: %s", error)
        return None


def merged_zone(directory, ours, our_positions, zone, positions):
    """The index's zone after adding `positions` of zone `zone`; never mixes two zones.

    `directory`, `ours`, `our_positions`: the index's folder (for the error), zone and positions.
    """
    if zone is None or not np.isfinite(positions).all(axis=1).any():
        return ours
    if ours is not None and utm.same_projection(ours, zone):
        return ours
    if ours is None and not np.isfinite(our_positions).all(axis=1).any():
        return zone
    held = f"positions in UTM zone {ours}" if ours else "positions of no recorded UTM zone"
    raise ValueError(
        f"Index {os.fspath(directory)!r} holds {held}, the images to add are in zone "
        f"{zone}: eastings/northings of two zones cannot be mixed. Build a separate index, "
        "or pass positions re-projected into the index's zone "
        "(tf_netvlad.data.utm.latlon_to_utm(lat, lon, zone=...))."
    )
