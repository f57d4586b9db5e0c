"""`tf_netvlad.convert.pretrained`: published weights by name, end to end against a local server.

`FileServer` (http.server on 127.0.0.1, in a thread) serves files of the official layouts that
the tests write with the converter tests' writers: a struct-form MatConvNet `.mat` as hloc serves
it (cvg/Hierarchical-Localization hloc/extractors/netvlad.py downloads `Pitts30K_struct.mat`) and
a Patch-NetVLAD `pitts_WPCA<P>.pth.tar` checkpoint (QVPR/Patch-NetVLAD add_pca.py layout:
`{"num_pcs", "state_dict"}` with `WPCA.0.*`). The table is pointed at the server by
monkeypatching `PRETRAINED`; `KERAS_HOME` is a tmp folder. The converted models are checked
against the converter tests' independent forward passes (NumPy MatConvNet, torch).
"""

import dataclasses
import hashlib
import http.server
import os
import socket
import sys
import threading
import types
import urllib.parse

import numpy as np
import pytest

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
from tests.helpers import import_optional
from tf_netvlad.convert import pretrained

HLOC_PATH = "/hloc/netvlad/Pitts30K_struct.mat"  # hloc's URL path, on the local server


class FileServer:
    """Serves `files` ({URL path: bytes}) on 127.0.0.1 and records every request path.

    A path in `cut` answers with the full Content-Length but sends only half the body before
    closing the connection (a download cut mid-file).
    """

    def __init__(self):
        self.files, self.cut, self.requests = {}, set(), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = urllib.parse.urlsplit(self.path).path
                server.requests.append(path)
                body = server.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if path in server.cut else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url(path):
    """A URL on 127.0.0.1 where nothing listens (connection refused: the offline case)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


@pytest.fixture
def file_server():
    server = FileServer()
    yield server
    server.close()


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


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
    target = pretrained.cached_download_path(entry)
    assert target in message
    with open(target, "wb") as handle:
        handle.write(hloc_mat[0])
    model = pretrained.load_pretrained("netvlad_vgg16_pitts30k")
    assert model.descriptor_dim == 5
    record = pretrained.read_model_source(pretrained.cached_model_path(entry))
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
    record = pretrained.read_model_source(pretrained.cached_model_path(entry))
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


def test_cache_follows_keras_home_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "a"))
    entry = pretrained.PRETRAINED["netvlad_vgg16_pitts30k"]
    assert pretrained.cached_model_path(entry) == str(tmp_path / "a" / "tf_netvlad" / "netvlad_vgg16_pitts30k.keras")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "b"))
    assert pretrained.cached_download_path(entry) == str(tmp_path / "b" / "tf_netvlad" / "netvlad_vgg16_pitts30k.mat")
    assert pretrained.cache_state(entry) == "no"


# ----------------------------------------------------------------------------- --model URIs


@pytest.fixture(scope="module")
def tiny_keras_bytes(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    tiny_model.save(path)
    return path.read_bytes()


def test_https_uri_of_a_keras_file_is_downloaded_once(keras_home, file_server, tiny_model, tiny_keras_bytes):
    from tf_netvlad.models.model import load_model

    file_server.files["/models/tiny.keras"] = tiny_keras_bytes
    url = file_server.url("/models/tiny.keras")
    path = pretrained.resolve_model_arg(url)
    assert path.startswith(str(keras_home / "tf_netvlad" / "remote")) and path.endswith("tiny.keras")
    with open(path, "rb") as handle:
        assert handle.read() == tiny_keras_bytes
    assert pretrained.resolve_model_arg(url) == path
    assert file_server.requests == ["/models/tiny.keras"]  # the second call used the cache
    images = np.random.default_rng(2).uniform(0, 255, (1, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(load_model(path).predict(images, verbose=0), tiny_model.predict(images, verbose=0))


def test_bad_https_uris(keras_home, file_server):
    file_server.files["/models/page.keras"] = b"<html>not a model</html>"
    with pytest.raises(ValueError, match="is not a .keras \\(zip\\) file; nothing was cached"):
        pretrained.resolve_model_arg(file_server.url("/models/page.keras"))
    with pytest.raises(ValueError, match="the URL must name a .keras file"):
        pretrained.resolve_model_arg(file_server.url("/models/weights.h5"))
    with pytest.raises(ConnectionError, match="404"):
        pretrained.resolve_model_arg(file_server.url("/models/missing.keras"))
    with pytest.raises(ValueError, match="unsupported URI scheme 'ftp'"):
        pretrained.resolve_model_arg("ftp://example.org/model.keras")
    assert file_server.requests == ["/models/page.keras", "/models/missing.keras"]
    remote = keras_home / "tf_netvlad" / "remote"
    assert not remote.exists() or [p for p in remote.rglob("*") if p.is_file()] == []


def test_hf_and_kaggle_uris_go_through_their_hub_clients(tmp_path, monkeypatch):
    local = tmp_path / "model.keras"
    local.write_bytes(b"zip")
    calls = []
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(
        hf_hub_download=lambda **kwargs: calls.append(("hf", kwargs)) or str(local)))
    monkeypatch.setitem(sys.modules, "kagglehub", types.SimpleNamespace(
        model_download=lambda handle, path: calls.append(("kaggle", handle, path)) or str(local)))
    assert pretrained.resolve_model_arg("hf://owner/repo/sub/model.keras") == str(local)
    assert pretrained.resolve_model_arg("kaggle://owner/netvlad/keras/pitts/3/model.keras") == str(local)
    assert pretrained.resolve_model_arg("kaggle://owner/netvlad/keras/pitts/model.keras") == str(local)
    assert calls == [("hf", {"repo_id": "owner/repo", "filename": "sub/model.keras"}),
                     ("kaggle", "owner/netvlad/keras/pitts/3", "model.keras"),
                     ("kaggle", "owner/netvlad/keras/pitts", "model.keras")]
    with pytest.raises(ValueError, match="hf://OWNER/REPO/PATH/FILE.keras"):
        pretrained.resolve_model_arg("hf://owner/repo")
    with pytest.raises(ValueError, match="kaggle://OWNER/MODEL/FRAMEWORK/VARIATION"):
        pretrained.resolve_model_arg("kaggle://owner/netvlad/model.keras")


def test_hub_errors_are_one_line(monkeypatch):
    def fail(**kwargs):
        raise RuntimeError("404 Client Error.\n\nEntry Not Found for url: https://huggingface.co/x")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=fail))
    with pytest.raises(OSError) as err:
        pretrained.resolve_model_arg("hf://owner/repo/model.keras")
    assert "--model: could not download hf://owner/repo/model.keras: RuntimeError: 404" in str(err.value)
    assert "\n" not in str(err.value)
    monkeypatch.setitem(sys.modules, "kagglehub", None)
    with pytest.raises(ImportError, match="pip install kagglehub"):
        pretrained.resolve_model_arg("kaggle://owner/netvlad/keras/pitts/model.keras")


def test_local_values_pass_through(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "netvlad_vgg16_pitts30k").write_bytes(b"")  # a file wins over the name it shares
    assert pretrained.resolve_model_arg("netvlad_vgg16_pitts30k") == "netvlad_vgg16_pitts30k"
    assert pretrained.resolve_model_arg("runs/missing/best.keras") == "runs/missing/best.keras"
    assert pretrained.resolve_model_arg(None) is None
