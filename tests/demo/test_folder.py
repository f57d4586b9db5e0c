"""Tests for tf_netvlad.demo.folder: manifest, README, completeness and temp dirs of a dataset folder."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tf_netvlad.data import split_loading
from tf_netvlad.demo import configs, dataset, folder


@pytest.fixture
def data_copy(demo, tmp_path):
    """A copy of the shared generated dataset, free to change."""
    root = tmp_path / "d"
    shutil.copytree(demo["root"], root)
    return folder.result_paths(root)


def test_module_does_not_import_tensorflow():
    code = "import sys, tf_netvlad.demo.folder; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_manifest_and_readme_are_written_from_the_parameters_and_the_splits(demo, data_copy):
    manifest = json.loads(data_copy["manifest"].read_text())
    params = {k: v for k, v in manifest.items() if k not in ("splits", "file_count")}
    splits = {n: split_loading.load_split(data_copy[f"{n}_mat"]) for n in configs.SPLIT_NAMES}
    os.remove(data_copy["manifest"])
    os.remove(data_copy["readme"])
    folder.write_readme(data_copy["root"], splits, params)
    folder.write_manifest(data_copy["root"], splits, params)
    for key in ("manifest", "readme"):
        assert data_copy[key].read_bytes() == demo[key].read_bytes(), key
    assert folder.is_complete(data_copy["root"], params)
    assert folder.read_params(data_copy["root"])["config"] == "demo"


def test_completeness_needs_every_file_and_the_same_parameters(data_copy):
    params = configs.resolve_params(**folder.read_params(data_copy["root"]))
    assert folder.is_complete(data_copy["root"], params)
    assert not folder.is_complete(data_copy["root"], dict(params, seed=params["seed"] + 1))
    os.remove(data_copy["test_csv"])
    assert not folder.is_complete(data_copy["root"], params)
    data_copy["manifest"].write_text("{not json")
    assert not folder.is_complete(data_copy["root"], params)
    assert folder.read_params(data_copy["root"]) is None
    assert folder.read_params(data_copy["root"] / "absent") is None


def test_a_manifest_from_before_the_configurations_still_marks_the_dataset_complete(data_copy):
    # a manifest from before the configurations (no config/sizes/conditions/viewpoint/layout keys)
    # still marks the same dataset complete
    manifest = json.loads(data_copy["manifest"].read_text())
    seed, scale = manifest["seed"], manifest["scale"]
    for key in ("config", "sizes", "conditions", "viewpoint", "layout"):
        del manifest[key]
    data_copy["manifest"].write_text(json.dumps(manifest))
    mtime = os.stat(data_copy["manifest"]).st_mtime_ns
    dataset.generate_demo_data(data_copy["root"], seed=seed, scale=scale, progress=False)
    assert os.stat(data_copy["manifest"]).st_mtime_ns == mtime
    assert folder.read_params(data_copy["root"])["config"] == "demo"


def test_looks_like_ours(data_copy, tmp_path):
    assert folder.looks_like_ours(data_copy["root"])
    (data_copy["root"] / "notes.txt").write_text("mine")
    assert not folder.looks_like_ours(data_copy["root"])
    (tmp_path / "empty").mkdir()
    assert folder.looks_like_ours(tmp_path / "empty")


def test_only_the_temp_dirs_of_dead_runs_are_removed(tmp_path):
    out = tmp_path / "data"
    names = {"dead_tmp": ".data.tmp-4999999", "dead_old": ".data.old-4999999",  # above any pid_max
             "own": f".data.tmp-{os.getpid()}", "live": f".data.tmp-{os.getppid()}",
             "other_kind": ".data.bak-4999999", "no_pid": ".data.tmp-x", "other_name": ".more.tmp-4999999"}
    for name in names.values():
        (tmp_path / name).mkdir()
    (tmp_path / ".data.old-4999998").write_text("a file, not a run's folder")
    folder.remove_stale_temp_dirs(out)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {names[k] for k in ("live", "other_kind", "no_pid", "other_name")} | {".data.old-4999998"}
