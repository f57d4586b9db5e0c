"""Atomic writes: complete file or nothing, usual permissions."""

import json
import os

import numpy as np
import pytest

from tf_netvlad.data.fileio import atomic_path, write_json


def test_success_renames_with_umask_mode(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with atomic_path(target, ".json") as tmp:
        assert os.path.dirname(tmp) == str(target.parent) and os.path.basename(tmp).startswith(".tmp-")
        with open(tmp, "w") as handle:
            handle.write("{}")
    assert target.read_text() == "{}"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(target.parent) == ["out.json"]


def test_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as handle:
                handle.write("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_write_json_converts_numpy_sorts_keys_and_returns_the_path(tmp_path):
    data = {"b": np.float32(0.25), "a": np.arange(3, dtype=np.int64), 7: (np.int32(1), [np.bool_(True)])}
    path = write_json(data, tmp_path / "r.json")
    assert path == str(tmp_path / "r.json")
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text) == {"a": [0, 1, 2], "b": 0.25, "7": [1, [True]]}
    assert text.index('"7"') < text.index('"a"') < text.index('"b"') and text.endswith("}\n")


def test_write_json_strict_refuses_nan_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "metadata.json"
    write_json({"x": 1}, target, allow_nan=False)
    with pytest.raises(ValueError, match="Out of range float"):
        write_json({"x": float("nan")}, target, allow_nan=False)
    assert json.loads(target.read_text()) == {"x": 1}
    assert os.listdir(tmp_path) == ["metadata.json"]
    write_json({"x": float("nan")}, target)  # results files may hold NaN (a condition without queries)
    assert "NaN" in target.read_text()
