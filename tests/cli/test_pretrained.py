"""`tf_netvlad models` and `--model NAME` / `--model https://…` through `tf_netvlad.cli.main.main`.

The files are served by the local `FileServer` of `tests/convert/test_download.py` (a
struct-form MatConvNet `.mat` of the layout hloc serves, written by the converter tests' writer);
`KERAS_HOME` is a tmp folder and the table is monkeypatched to point at the server.
"""

import hashlib
import json
import os
import subprocess
import sys
import zipfile

import pytest

from tests.convert import test_download as download_tests
from tests.convert.test_download import closed_port_url
from tests.convert.test_pretrained import HLOC_PATH, mat_entry, use_table
from tf_netvlad.cli import main
from tf_netvlad.convert import download, pretrained

# The local HTTP server and the KERAS_HOME of the download tests.
file_server, keras_home = download_tests.file_server, download_tests.keras_home


@pytest.fixture(scope="module")
def hloc_mat_bytes(tmp_path_factory):
    import numpy as np

    from tests.convert.test_converters import vgg_like_layers, write_mat

    rng = np.random.default_rng(11)
    path = write_mat(str(tmp_path_factory.mktemp("hloc") / "Pitts30K_struct.mat"), vgg_like_layers(rng), rng)
    with open(path, "rb") as handle:
        return handle.read()


def test_model_name_works_wherever_a_model_file_is_accepted(keras_home, file_server, hloc_mat_bytes,
                                                            tiny_demo, tmp_path, monkeypatch, capsys):
    file_server.files[HLOC_PATH] = hloc_mat_bytes
    entry = mat_entry(file_server.url(HLOC_PATH), hloc_mat_bytes)
    use_table(monkeypatch, entry)
    argv = ["evaluate", "--dataset", str(tiny_demo["test_mat"]), "--model", "netvlad_vgg16_pitts30k",
            "--recall-ns", "1,2", "--json"]
    assert main.main(argv + [str(tmp_path / "first.json")]) == 0
    assert f"Downloading data from {entry.url}" in capsys.readouterr().out
    first = json.loads((tmp_path / "first.json").read_text())
    assert first["model"] == "netvlad_vgg16_pitts30k"  # the converted model, named after the table entry
    assert file_server.requests == [HLOC_PATH]

    # Again: the cached .keras file, no request; the same model gives the same recall.
    assert main.main(argv + [str(tmp_path / "second.json")]) == 0
    assert file_server.requests == [HLOC_PATH]
    second = json.loads((tmp_path / "second.json").read_text())
    assert {k: second[k] for k in ("recall@1", "recall@2")} == {k: first[k] for k in ("recall@1", "recall@2")}

    # tf_netvlad models now reports it cached, and shows what the file records.
    capsys.readouterr()
    assert main.main(["models"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("netvlad_vgg16_pitts30k"))
    assert row.split()[:4] == ["netvlad_vgg16_pitts30k", "5", "matconvnet", "yes"]
    assert main.main(["models", "netvlad_vgg16_pitts30k"]) == 0
    shown = capsys.readouterr().out
    assert f"file sha256:     {hashlib.sha256(hloc_mat_bytes).hexdigest()}" in shown
    assert f"url:             {entry.url}" in shown


def test_model_https_uri(keras_home, file_server, tiny_model, tiny_demo, tmp_path, capsys):
    model_path = tmp_path / "tiny.keras"
    tiny_model.save(model_path)
    file_server.files["/share/tiny.keras"] = model_path.read_bytes()
    out = tmp_path / "r.json"
    assert main.main(["evaluate", "--dataset", str(tiny_demo["test_mat"]), "--model",
                      file_server.url("/share/tiny.keras"), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["model"] == tiny_model.name
    assert file_server.requests == ["/share/tiny.keras"]


@pytest.mark.parametrize("value, message", [
    ("netvlad_vgg16_pits30k", "--model 'netvlad_vgg16_pits30k' is neither a file nor a pretrained model name. "
                              "Valid names: netvlad_vgg16_pitts30k, netvlad_vgg16_tokyotm, patchnetvlad_pitts_128"),
    ("s3://bucket/model.keras", "--model s3://bucket/model.keras: unsupported URI scheme 's3'"),
    ("hf://owner/repo", "hf:// URIs must name a .keras file in the repository"),
])
def test_bad_model_values_are_one_line_errors(value, message, tiny_demo, capsys):
    assert main.main(["evaluate", "--dataset", str(tiny_demo["test_mat"]), "--model", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tf_netvlad evaluate: error: ") and message in err
    assert err.count("\n") == 1


def test_offline_model_name_names_url_and_convert_command(keras_home, tiny_demo, tmp_path, monkeypatch, capsys):
    entry = mat_entry(closed_port_url(HLOC_PATH))
    use_table(monkeypatch, entry)
    index = tmp_path / "index"
    images = tiny_demo["root"] / "images" / "test" / "database"
    assert main.main(["index", "--images", str(images), "--model", "netvlad_vgg16_pitts30k",
                      "--out", str(index)]) == 2
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("tf_netvlad index: error: "))
    assert entry.url in line and "Connection refused" in line
    assert "`tf_netvlad convert --matconvnet Pitts30K_struct.mat --out netvlad_vgg16_pitts30k.keras`" in line
    assert not index.exists() and not (keras_home / "tf_netvlad" / "netvlad_vgg16_pitts30k.keras").exists()


def test_models_lists_names_sizes_sources_and_cache_state(keras_home, monkeypatch, capsys):
    converted, downloaded, absent = (
        pretrained.PretrainedWeights(name=name, url=f"https://example.org/{file}", descriptor_dim=dim,
                                     converter=converter, source=source, description="d")
        for name, file, dim, converter, source in (
            ("a_converted", "A.mat", 4096, "matconvnet", "hloc"),
            ("b_downloaded", "b_WPCA512.pth.tar", 512, "pytorch", "Patch-NetVLAD"),
            ("c_absent", "c_WPCA128.pth.tar", 128, "pytorch", "Patch-NetVLAD")))
    use_table(monkeypatch, converted, downloaded, absent)
    os.makedirs(download.cache_dir())
    record = {"file_sha256": "ab" * 32, "tf_netvlad_version": "9.9", "converter": "matconvnet",
              "converted_at": "2025-01-01T00:00:00+00:00"}
    with zipfile.ZipFile(download.cached_model_path(converted), "w") as archive:  # a .keras zip's metadata
        archive.writestr("metadata.json", json.dumps({"keras_version": "3", pretrained.SOURCE_KEY: record}))
    open(download.cached_download_path(downloaded), "wb").close()

    assert main.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "DIM", "CONVERTER", "CACHED", "SOURCE"]
    assert [line.split() for line in lines[1:4]] == [
        ["a_converted", "4096", "matconvnet", "yes", "hloc"],
        ["b_downloaded", "512", "pytorch", "download", "only", "Patch-NetVLAD"],
        ["c_absent", "128", "pytorch", "no", "Patch-NetVLAD"]]
    assert f"cache: {keras_home / 'tf_netvlad'}" in lines[-2]

    assert main.main(["models", "a_converted"]) == 0
    shown = capsys.readouterr().out
    assert f"file sha256:     {'ab' * 32}" in shown and "converted by:    tf_netvlad 9.9 (matconvnet)" in shown
    assert "offline:         tf_netvlad convert --matconvnet A.mat --out a_converted.keras" in shown
    assert main.main(["models", "zzz"]) == 2
    assert "Unknown pretrained model 'zzz'. Valid names: a_converted, b_downloaded, c_absent" in capsys.readouterr().err


def test_models_command_is_tensorflow_free(tmp_path):
    code = ("import sys\nfrom tf_netvlad.cli import main\nassert main.main(['models']) == 0\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    env = dict(os.environ, KERAS_HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "False False"
    assert [line.split()[:4] for line in lines if line.startswith("netvlad_vgg16_")] == [
        ["netvlad_vgg16_pitts30k", "4096", "matconvnet", "no"], ["netvlad_vgg16_tokyotm", "4096", "matconvnet", "no"]]
    assert sum(line.startswith("patchnetvlad_") for line in lines) == 6
