"""Tests for tf_netvlad.retrieval.zones: the UTM zone of an index's positions comes from the split,
the `@`-names or `utm_zone`, must fit the positions, and one index never holds two zones."""

import numpy as np
import pytest

from tests.helpers import write_block_images
from tf_netvlad.data import utm
from tf_netvlad.retrieval.build import build_retrieval_index
from tf_netvlad.retrieval.index import RetrievalIndex
from tf_netvlad.retrieval.zones import merged_zone

# Pittsburgh, zone 17, band T: four places 100 m apart along a street (lat/lon chosen by hand).
PITTSBURGH_LATLON = np.array([[40.4406, -79.9959], [40.4415, -79.9959], [40.4424, -79.9959],
                              [40.4433, -79.9959]])


@pytest.fixture(scope="module")
def zoned(tmp_path_factory):
    """4 images with positions in zone 17T and their lat/lon; `@`-names carry the same zone."""
    folder = tmp_path_factory.mktemp("zoned")
    names = write_block_images(folder, 4, seed=5, name="p{}.png", size=(32, 40))
    east, north, number, hemisphere = utm.latlon_to_utm(*PITTSBURGH_LATLON.T)
    assert (number, hemisphere) == (17, "N")
    return folder, names, np.stack([east, north], axis=1)


def test_index_takes_the_zone_of_at_names_and_refuses_two_zones_before_loading_a_model(tmp_path, zoned,
                                                                                     tiny_model):
    folder, names, positions = zoned
    at_folder = tmp_path / "at"
    at_folder.mkdir()
    for name, (east, north), (lat, lon) in zip(names, positions, PITTSBURGH_LATLON):
        # VPR-datasets-downloader names: @utm_east@utm_north@zone@letter@lat@lon@...@.png
        (at_folder / f"@{east:.2f}@{north:.2f}@17@T@{lat:.5f}@{lon:.5f}@@@@@@@@.png").write_bytes(
            (folder / name).read_bytes())
    index = build_retrieval_index(tiny_model, tmp_path / "ix", at_folder, image_size=(24, 32),
                                  progress=False)
    assert index.utm_zone == "17T"
    order = np.argsort(index.positions[:, 1])  # the folder is read in name order
    np.testing.assert_allclose(index.positions[order], np.round(positions, 2))
    # one name in zone 18: refused before the (missing) model file is even opened
    first = sorted(at_folder.iterdir())[0]
    first.rename(at_folder / first.name.replace("@17@T@", "@18@T@"))
    with pytest.raises(ValueError, match=r"lie in UTM zones \['17T', '18T'\]"):
        build_retrieval_index(str(tmp_path / "missing.keras"), tmp_path / "ix2", at_folder)
    assert not (tmp_path / "ix2").exists()


def test_a_zone_label_that_does_not_fit_the_positions_is_refused(tmp_path, zoned):
    folder, names, positions = zoned
    with pytest.raises(ValueError, match=r"'17N' does not fit.*did you mean '17T'"):
        build_retrieval_index(str(tmp_path / "missing.keras"), tmp_path / "ix", names,
                              positions=positions, root=folder, utm_zone="17N")
    with pytest.raises(ValueError, match="not a UTM zone label"):
        build_retrieval_index(str(tmp_path / "missing.keras"), tmp_path / "ix", names,
                              positions=positions, root=folder, utm_zone="17")
    assert not (tmp_path / "ix").exists()


def test_add_never_mixes_two_zones(tmp_path, zoned, tiny_model):
    folder, names, positions = zoned
    index = build_retrieval_index(tiny_model, tmp_path / "ix", names[:2], positions=positions[:2],
                                  root=folder, image_size=(24, 32), progress=False, utm_zone="17T")
    # the same places as zone 18 coordinates: another projection, refused before extraction
    east, north, _, _ = utm.latlon_to_utm(*PITTSBURGH_LATLON[2:].T, zone=18)
    with pytest.raises(ValueError, match="holds positions in UTM zone 17T, the images to add are "
                                         "in zone 18T"):
        index.add(str(tmp_path / "missing.keras"), names[2:], positions=np.stack([east, north], 1),
                  root=folder, utm_zone="18T")
    assert index.count == 2
    # re-projected into the index's zone they are accepted; band S is the same projection as T
    index.add(tiny_model, names[2:], positions=positions[2:], root=folder, utm_zone="17S",
              progress=False)
    assert index.count == 4 and index.utm_zone == "17T"
    assert RetrievalIndex.load(tmp_path / "ix").utm_zone == "17T"
    # positions of no recorded zone cannot take a zone later
    plain = build_retrieval_index(tiny_model, tmp_path / "plain", names[:2], positions=positions[:2],
                                  root=folder, image_size=(24, 32), progress=False)
    with pytest.raises(ValueError, match="holds positions of no recorded UTM zone"):
        plain.add(tiny_model, names[2:], positions=positions[2:], root=folder, utm_zone="17T")
    assert plain.add(tiny_model, names[2:], positions=positions[2:], root=folder,
                     progress=False).utm_zone is None


def test_merged_zone_keeps_one_projection_per_index(tmp_path):
    known, unknown = np.array([[585157.0, 4477145.4]]), np.full((1, 2), np.nan)
    assert merged_zone(tmp_path, "17T", known, None, known) == "17T"  # no zone given: the index's
    assert merged_zone(tmp_path, "17T", known, "18T", unknown) == "17T"  # no known position added
    assert merged_zone(tmp_path, "17T", known, "17S", known) == "17T"  # bands of one projection
    assert merged_zone(tmp_path, None, unknown, "17T", known) == "17T"  # the first known positions
    with pytest.raises(ValueError, match="holds positions in UTM zone 17T, the images to add are in "
                                         "zone 18T"):
        merged_zone(tmp_path, "17T", known, "18T", known)
    with pytest.raises(ValueError, match="holds positions of no recorded UTM zone"):
        merged_zone(tmp_path, None, known, "17T", known)


def test_a_zone_of_the_names_that_does_not_fit_is_dropped_with_a_warning(tmp_path, zoned, tiny_model,
                                                                         caplog):
    """Made-up positions under a real zone label: the index records no zone (so no lat/lon), and
    the warning comes from the logger the CLI has always printed for the index."""
    folder, names, _ = zoned
    made_up = tmp_path / "made_up"
    made_up.mkdir()
    for i, name in enumerate(names[:2]):
        (made_up / f"@{500 + i}.5@{4000 + i}@17@T@.png").write_bytes((folder / name).read_bytes())
    with caplog.at_level("WARNING", logger="tf_netvlad.retrieval.index"):
        index = build_retrieval_index(tiny_model, tmp_path / "ix", made_up, progress=False)
    assert index.count == 2 and index.utm_zone is None
    records = [r for r in caplog.records if r.name.startswith("tf_netvlad.retrieval")]
    assert [r.name for r in records] == ["tf_netvlad.retrieval.index"]
    assert records[0].getMessage().startswith("Not recording the UTM zone of the positions: UTM zone "
                                              "'17T' does not fit the image positions")
