"""`tf_netvlad.convert.download`: the cache folder, checked downloads and `--model` URIs.

`FileServer` (http.server on 127.0.0.1, in a thread) serves the files a test puts in it and
records every request; the pretrained-weights tests (`tests/convert/test_pretrained.py`) and the
CLI tests use it too. `KERAS_HOME` is a tmp folder. URIs are resolved through
`pretrained.resolve_model_arg`, the documented entry point (docs/pretrained.md), which hands them
to `download.fetch_model_uri`.
"""

import dataclasses
import hashlib
import http.server
import socket
import sys
import threading
import types
import urllib.parse

import numpy as np
import pytest

from tf_netvlad.convert import download, pretrained


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


# ----------------------------------------------------------------------------- cache


def test_cache_follows_keras_home_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "a"))
    entry = pretrained.PRETRAINED["netvlad_vgg16_pitts30k"]
    assert download.cached_model_path(entry) == str(tmp_path / "a" / "tf_netvlad" / "netvlad_vgg16_pitts30k.keras")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "b"))
    assert download.cached_download_path(entry) == str(tmp_path / "b" / "tf_netvlad" / "netvlad_vgg16_pitts30k.mat")
    assert download.cache_state(entry) == "no"


# ----------------------------------------------------------------------------- checks


def test_file_digests_and_published_checks(tmp_path):
    data = bytes(range(256)) * 9000  # more than one 1 MiB read block
    path = tmp_path / "Pitts30K_struct.mat"
    path.write_bytes(data)
    digests = download.file_digests(path)
    assert digests == {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest(),
                       "size": len(data)}
    entry = pretrained.PretrainedWeights(
        name="netvlad_vgg16_pitts30k", url="https://example.org/Pitts30K_struct.mat", descriptor_dim=5,
        converter="matconvnet", source="test", description="d", size=len(data),
        sha256=digests["sha256"].upper(), md5=digests["md5"])
    download.check_published(entry, digests)  # matches (hex compared case-insensitively)
    download.check_published(dataclasses.replace(entry, size=None, sha256=None, md5=None), digests)  # nothing stated
    with pytest.raises(ValueError, match=f"has size {len(data)}, but the publisher's is {len(data) + 1} "):
        download.check_published(dataclasses.replace(entry, size=len(data) + 1), digests)


# ----------------------------------------------------------------------------- --model URIs


@pytest.fixture(scope="module")
def tiny_keras_bytes(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    tiny_model.save(path)
    return path.read_bytes()


def test_https_uri_of_a_keras_file_is_downloaded_once(keras_home, file_server, tiny_model, tiny_keras_bytes):
    from tf_netvlad.models.model_files import load_model

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
