"""`tf_netvlad.convert.pretrained`: published weights by name, end to end against a local server.

`FileServer` of `tests/convert/test_download.py` (http.server on 127.0.0.1, in a thread) serves
files of the official layouts that the tests write with the converter tests' writers: a
struct-form MatConvNet `.mat` as hloc serves it (cvg/Hierarchical-Localization
hloc/extractors/netvlad.py downloads `Pitts30K_struct.mat`) and a Patch-NetVLAD
`pitts_WPCA<P>.pth.tar` checkpoint (QVPR/Patch-NetVLAD add_pca.py layout:
`{"num_pcs", "state_dict"}` with `WPCA.0.*`). The table is pointed at the server by
monkeypatching `PRETRAINED`; `KERAS_HOME` is a tmp folder. The converted models are checked
against the converter tests' independent forward passes (NumPy MatConvNet, torch).
"""

import dataclasses
import hashlib
import os
import sys

import numpy as np
import pytest

from tests.convert import test_download as download_tests
from tests.convert.test_converters import (
    REQUIRE_TORCH,
    _average_rgb,
    _save_pt_checkpoint,
    _vgg16_layout,
    matconvnet_forward,
    torch_forward,
    torch_state_dict,
    vgg_like_layers,
    write_mat,
)
from tests.convert.test_download import closed_port_url
from tests.helpers import import_optional
from tf_netvlad.convert import download, pretrained

# The local HTTP server and the KERAS_HOME of the download tests.
file_server, keras_home = download_tests.file_server, download_tests.keras_home

HLOC_PATH = "/hloc/netvlad/Pitts30K_struct.mat"  # hloc's URL path, on the local server


@pytest.fixture(scope="module")
def hloc_mat(tmp_path_factory):
    """(bytes, layer dicts, path) of a struct-form MatConvNet NetVLAD file: VGG-like, D = 6,
    K = 4, WPCA 5 (the converter tests' `vgg_like_layers`)."""
    rng = np.random.default_rng(7)
    layers = vgg_like_layers(rng)
    path = write_mat(str(tmp_path_factory.mktemp("hloc") / "Pitts30K_struct.mat"), layers, rng)
    with open(path, "rb") as handle:
        return handle.read(), layers, path


def mat_entry(url, data=None, **checks):
    """A table entry like `netvlad_vgg16_pitts30k`, served at `url` (5-D: the test file's WPCA)."""
    if data is not None:
        checks = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), **checks}
    return pretrained.PretrainedWeights(
        name="netvlad_vgg16_pitts30k", url=url, descriptor_dim=5, converter="matconvnet",
        source="test server", description="VGG-like test network", **checks)


def use_table(monkeypatch, *entries):
    monkeypatch.setattr(pretrained, "PRETRAINED", {entry.name: entry for entry in entries})


def cache_files(keras_home):
    folder = keras_home / "tf_netvlad"
    return sorted(os.listdir(folder)) if folder.exists() else []


# ----------------------------------------------------------------------------- by name


def test_first_call_downloads_and_converts_second_call_uses_the_cache(
        keras_home, file_server, hloc_mat, monkeypatch, capsys):
    import keras

    data, layers, mat_path = hloc_mat
    file_server.files[HLOC_PATH] = data
    entry = mat_entry(file_server.url(HLOC_PATH), data)
    use_table(monkeypatch, entry)

    model = pretrained.load_pretrained("netvlad_vgg16_pitts30k")
    printed = capsys.readouterr().out
    assert f"Downloading data from {entry.url}" in printed
    assert f"{len(data)}/{len(data)}" in printed  # Keras' progress bar, completed
    assert file_server.requests == [HLOC_PATH]
    assert cache_files(keras_home) == ["netvlad_vgg16_pitts30k.keras", "netvlad_vgg16_pitts30k.mat"]
    assert (keras_home / "tf_netvlad" / "netvlad_vgg16_pitts30k.mat").read_bytes() == data

    # The converted model computes the MatConvNet network (independent NumPy forward pass).
    images = np.random.default_rng(1).uniform(0, 255, (2, 13, 10, 3)).astype("float32")
    want = np.stack([matconvnet_forward(layers, _average_rgb(mat_path), image) for image in images])
    got = model.predict(images, verbose=0)
    assert got.shape == (2, 5) and np.abs(want).max() > 0.05
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

    # The .keras file records where it came from, and plain Keras still opens it.
    keras_path = keras_home / "tf_netvlad" / "netvlad_vgg16_pitts30k.keras"
    record = pretrained.read_model_source(keras_path)
    assert {k: record[k] for k in ("name", "url", "file_name", "file_sha256", "file_size", "converter",
                                   "tf_netvlad_version")} == {
        "name": "netvlad_vgg16_pitts30k", "url": entry.url, "file_name": "Pitts30K_struct.mat",
        "file_sha256": hashlib.sha256(data).hexdigest(), "file_size": len(data),
        "converter": "matconvnet", "tf_netvlad_version": pretrained.__version__}
    np.testing.assert_array_equal(keras.saving.load_model(keras_path).predict(images, verbose=0), got)

    # Second call: no request, no conversion.
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr("tf_netvlad.convert.matconvnet.convert_matconvnet", no_conversion)
    again = pretrained.load_pretrained("netvlad_vgg16_pitts30k")
    assert file_server.requests == [HLOC_PATH]
    assert "Downloading" not in capsys.readouterr().out
    np.testing.assert_array_equal(again.predict(images, verbose=0), got)


@pytest.mark.parametrize("check, value", [("sha256", "0" * 64), ("md5", "f" * 32), ("size", 12)])
def test_published_hash_or_size_mismatch_caches_nothing(keras_home, file_server, hloc_mat, monkeypatch,
                                                        check, value):
    file_server.files[HLOC_PATH] = hloc_mat[0]
    use_table(monkeypatch, mat_entry(file_server.url(HLOC_PATH), **{check: value}))
    with pytest.raises(ValueError, match=f"has {check} .* but the publisher's is {value}.*nothing was cached"):
        pretrained.fetch_pretrained("netvlad_vgg16_pitts30k")
    assert file_server.requests == [HLOC_PATH]
    assert cache_files(keras_home) == []  # neither the .part file nor the download


def test_cut_download_caches_nothing(keras_home, file_server, hloc_mat, monkeypatch):
    file_server.files[HLOC_PATH] = hloc_mat[0]
    file_server.cut.add(HLOC_PATH)
    entry = mat_entry(file_server.url(HLOC_PATH))  # no published hash: only the length tells
    use_table(monkeypatch, entry)
    with pytest.raises(ConnectionError) as err:
        pretrained.fetch_pretrained("netvlad_vgg16_pitts30k")
    message = str(err.value)
    assert f"Could not download pretrained model 'netvlad_vgg16_pitts30k' from {entry.url}" in message
    assert "Nothing was cached" in message and "\n" not in message
    assert file_server.requests == [HLOC_PATH]
    assert cache_files(keras_home) == []


def test_offline_error_names_url_and_convert_command_and_its_advice_works(keras_home, hloc_mat, monkeypatch):
    entry = mat_entry(closed_port_url(HLOC_PATH))
    use_table(monkeypatch, entry)
    with pytest.raises(ConnectionError) as err:
        pretrained.load_pretrained("netvlad_vgg16_pitts30k")
    message = str(err.value)
    assert entry.url in message and "\n" not in message
    assert ("`tf_netvlad convert --matconvnet Pitts30K_struct.mat --out netvlad_vgg16_pitts30k.keras`"
            in message)
    assert cache_files(keras_home) == []
    # "put it at <path> and run again": the file copied there converts without any network.
    target = download.cached_download_path(entry)
    assert target in message
    with open(target, "wb") as handle:
        handle.write(hloc_mat[0])
    model = pretrained.load_pretrained("netvlad_vgg16_pitts30k")
    assert model.descriptor_dim == 5
    record = pretrained.read_model_source(download.cached_model_path(entry))
    assert record["file_sha256"] == hashlib.sha256(hloc_mat[0]).hexdigest()


def test_file_the_converter_cannot_read_is_removed(keras_home, file_server, monkeypatch):
    page = b"<html><body>Service unavailable</body></html>"  # served with status 200
    file_server.files[HLOC_PATH] = page
    use_table(monkeypatch, mat_entry(file_server.url(HLOC_PATH)))
    with pytest.raises(ValueError, match="Could not convert pretrained model 'netvlad_vgg16_pitts30k'.*"
                                         "removed from the cache.*not a MATLAB .mat file"):
        pretrained.fetch_pretrained("netvlad_vgg16_pitts30k")
    assert cache_files(keras_home) == []


def test_descriptor_size_differing_from_the_table_caches_nothing(keras_home, file_server, hloc_mat, monkeypatch):
    file_server.files[HLOC_PATH] = hloc_mat[0]
    use_table(monkeypatch, dataclasses.replace(mat_entry(file_server.url(HLOC_PATH)), descriptor_dim=4096))
    with pytest.raises(ValueError, match="gives 5-D descriptors, but the table says 4096-D"):
        pretrained.fetch_pretrained("netvlad_vgg16_pitts30k")
    assert cache_files(keras_home) == []


def test_patch_netvlad_checkpoint_by_name_matches_torch(keras_home, file_server, tmp_path, monkeypatch):
    torch = import_optional("torch", REQUIRE_TORCH)
    rng = np.random.default_rng(3)
    layout = _vgg16_layout()
    state = torch_state_dict(torch, rng, layout, 4, wpca_dim=6)
    path = _save_pt_checkpoint(torch, str(tmp_path / "pitts_WPCA6.pth.tar"), state, patch_netvlad=True)
    with open(path, "rb") as handle:
        data = handle.read()
    url_path = "/TobiasRobotics/Patch-NetVLAD/resolve/main/pitts_WPCA6.pth.tar"
    file_server.files[url_path] = data
    entry = pretrained.PretrainedWeights(
        name="patchnetvlad_pitts_6", url=file_server.url(url_path) + "?download=true", descriptor_dim=6,
        converter="pytorch", source="test server", description="tiny Patch-NetVLAD",
        sha256=hashlib.sha256(data).hexdigest())
    use_table(monkeypatch, entry)
    assert entry.file_name == "pitts_WPCA6.pth.tar"

    model = pretrained.load_pretrained("patchnetvlad_pitts_6")
    assert file_server.requests == [url_path]
    assert cache_files(keras_home) == ["patchnetvlad_pitts_6.keras", "patchnetvlad_pitts_6.pth.tar"]
    images = rng.uniform(0, 255, (2, 33, 40, 3)).astype("float32")
    np.testing.assert_allclose(model.predict(images, verbose=0), torch_forward(torch, state, layout, images),
                               atol=1e-5, rtol=0)
    record = pretrained.read_model_source(download.cached_model_path(entry))
    assert (record["converter"], record["file_sha256"]) == ("pytorch", hashlib.sha256(data).hexdigest())


def test_pytorch_entry_without_torch_fails_before_downloading(keras_home, file_server, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    file_server.files["/pitts_WPCA6.pth.tar"] = b"x"
    use_table(monkeypatch, pretrained.PretrainedWeights(
        name="patchnetvlad_pitts_6", url=file_server.url("/pitts_WPCA6.pth.tar"), descriptor_dim=6,
        converter="pytorch", source="test server", description="tiny"))
    with pytest.raises(ImportError, match="pip install torch.*Nothing was downloaded"):
        pretrained.fetch_pretrained("patchnetvlad_pitts_6")
    assert file_server.requests == []


def test_unknown_name_lists_the_valid_names():
    import tf_netvlad

    with pytest.raises(ValueError) as err:
        tf_netvlad.load_pretrained("netvlad_vgg16_pits30k")  # the public entry point
    assert "Unknown pretrained model 'netvlad_vgg16_pits30k'" in str(err.value)
    assert all(name in str(err.value) for name in pretrained.PRETRAINED)
    with pytest.raises(ValueError, match="--model 'netvlad_vgg16_pits30k' is neither a file nor a pretrained "
                                         "model name. Valid names: netvlad_vgg16_pitts30k, "):
        pretrained.resolve_model_arg("netvlad_vgg16_pits30k")


def test_the_table_holds_the_publishers_urls():
    table = pretrained.PRETRAINED
    # cvg/Hierarchical-Localization hloc/extractors/netvlad.py `dir_models`
    assert table["netvlad_vgg16_pitts30k"].url == "https://cvg-data.inf.ethz.ch/hloc/netvlad/Pitts30K_struct.mat"
    assert table["netvlad_vgg16_tokyotm"].url == "https://cvg-data.inf.ethz.ch/hloc/netvlad/TokyoTM_struct.mat"
    # QVPR/Patch-NetVLAD README.md, manual download (the Pittsburgh files are named pitts_WPCA*)
    for dataset, stem in (("pitts", "pitts"), ("mapillary", "mapillary")):
        for dim in (128, 512, 4096):
            entry = table[f"patchnetvlad_{dataset}_{dim}"]
            assert entry.url == ("https://huggingface.co/TobiasRobotics/Patch-NetVLAD/resolve/main/"
                                 f"{stem}_WPCA{dim}.pth.tar?download=true")
            assert (entry.descriptor_dim, entry.converter, entry.file_name) == (
                dim, "pytorch", f"{stem}_WPCA{dim}.pth.tar")
    assert {e.converter for e in table.values()} <= set(pretrained.CONVERTERS)
    assert all(name == entry.name for name, entry in table.items())


# ----------------------------------------------------------------------------- --model values


def test_local_values_pass_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "netvlad_vgg16_pitts30k").write_bytes(b"")  # a file wins over the name it shares
    assert pretrained.resolve_model_arg("netvlad_vgg16_pitts30k") == "netvlad_vgg16_pitts30k"
    assert pretrained.resolve_model_arg("runs/missing/best.keras") == "runs/missing/best.keras"
    assert pretrained.resolve_model_arg(None) is None
