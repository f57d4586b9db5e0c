"""Atomic writes: complete file or nothing, usual permissions."""

import os

import pytest

from tf_netvlad.data.fileio import atomic_path


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
