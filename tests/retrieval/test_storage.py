"""The index folder on disk (tf_netvlad.retrieval.storage): file names confined to the folder, no
writes through links, one writer at a time (two real processes), leftovers of killed writers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.data.test_locking import kill_hard, start_holder
from tests.helpers import write_block_images
from tf_netvlad.cli import main
from tf_netvlad.data.locking import LOCK_FILE, DirectoryLockedError
from tf_netvlad.retrieval import build as rb
from tf_netvlad.retrieval import index as ri
from tf_netvlad.retrieval import storage

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("db")
    return folder, write_block_images(folder, 6, seed=3, size=(32, 40))


@pytest.fixture(scope="module")
def model_file(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.keras"
    tiny_model.save(path)
    return path


def _build(model, out, images, count=4, **kwargs):
    folder, names = images
    return rb.build_retrieval_index(model, out, names[:count], root=folder, progress=False, **kwargs)


def _victim(tmp_path):
    victim = tmp_path / "outside" / "victim.bin"
    victim.parent.mkdir()
    victim.write_bytes(b"precious bytes that must survive")
    return victim


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("key, value", [
    ("descriptors_file", "ABSOLUTE"), ("descriptors_file", "../outside/victim.bin"),
    ("descriptors_file", "sub/descriptors.f32"), ("descriptors_file", ""),
    ("descriptors_file", None), ("index_file", "ABSOLUTE"), ("index_file", ".."),
])
def test_file_names_in_metadata_must_name_files_inside_the_folder(tmp_path, tiny_model, images, key,
                                                                  value):
    victim = _victim(tmp_path)
    _build(tiny_model, tmp_path / "idx", images)
    meta = tmp_path / "idx" / "metadata.json"
    _edit_json(meta, **{key: str(victim) if value == "ABSOLUTE" else value})
    with pytest.raises(ValueError) as info:
        ri.RetrievalIndex.load(tmp_path / "idx")
    message = str(info.value)
    assert message.startswith(f"{str(meta)!r}: `{key}` must be the name of a file inside")
    assert "\n" not in message
    assert victim.read_bytes() == b"precious bytes that must survive"


def test_crafted_metadata_cannot_touch_a_file_outside_through_the_cli(tmp_path, tiny_model, images,
                                                                      model_file, capsys):
    """The issue's attack: `descriptors_file` pointing outside. `index --add` truncated the file
    and `--restart` deleted it; now both leave it as it was."""
    victim = _victim(tmp_path)
    folder, names = images
    out = tmp_path / "idx"
    _build(tiny_model, out, images)
    _edit_json(out / "metadata.json", descriptors_file=str(victim))
    base = ["index", "--model", str(model_file), "--images", str(folder), "--out", str(out)]
    assert main.main(base + ["--add"]) == 2
    error = capsys.readouterr().err
    assert "metadata.json" in error and "`descriptors_file` must be" in error
    assert main.main(["localize", "--index", str(out), "--model", str(model_file),
                      str(folder / names[0])]) == 2
    assert "`descriptors_file` must be" in capsys.readouterr().err
    # an unfinished build whose progress marker points outside: resuming is refused, --restart
    # starts over inside the folder
    (out / "metadata.json").unlink()
    progress = {"operation": "build", "descriptors_file": str(victim), "images_done": 2,
                "num_inputs": 6, "rows_done": 2, "skipped": []}
    (out / "progress.json").write_text(json.dumps(progress))
    assert main.main(base) == 2
    assert "progress.json" in capsys.readouterr().err
    assert main.main(base + ["--restart"]) == 0
    assert ri.RetrievalIndex.load(out).count == 6
    assert victim.read_bytes() == b"precious bytes that must survive"


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_the_descriptor_file_is_never_written_through_a_link(tmp_path, tiny_model, images, link):
    out = tmp_path / "idx"
    _build(tiny_model, out, images)
    victim = tmp_path / "victim.f32"
    os.replace(out / "descriptors.f32", victim)
    before = victim.read_bytes()
    (os.symlink if link == "symbolic" else os.link)(victim, out / "descriptors.f32")
    index = ri.RetrievalIndex.load(out)  # reading through the link is harmless
    folder, names = images
    with pytest.raises(ValueError, match=f"descriptors.f32' is a {link} link to another file"):
        index.add(tiny_model, names[4:], root=folder, progress=False)
    assert victim.read_bytes() == before


def test_an_index_loaded_before_another_add_refuses_to_add(tmp_path, tiny_model, images):
    folder, names = images
    _build(tiny_model, tmp_path / "idx", images, count=2)
    first, stale = ri.RetrievalIndex.load(tmp_path / "idx"), ri.RetrievalIndex.load(tmp_path / "idx")
    first.add(tiny_model, names[2:4], root=folder, progress=False)
    with pytest.raises(ValueError, match=r"changed since this index was loaded \(generation 0 with 2 "
                                         r"images then, 1 with 4 now\)"):
        stale.add(tiny_model, names[4:6], root=folder, progress=False)
    after = ri.RetrievalIndex.load(tmp_path / "idx")
    assert after.count == 4 and after.paths == names[:4]
    assert os.path.getsize(tmp_path / "idx" / "descriptors.f32") == 4 * after.dim * 4


def test_the_next_writer_removes_temp_files_of_a_killed_one(tmp_path, tiny_model, images):
    folder, names = images
    index = _build(tiny_model, tmp_path / "idx", images, count=2)
    (tmp_path / "idx" / ".tmp-k1l2.json").write_text("{")  # atomic writes a kill -9 cut short
    (tmp_path / "idx" / ".tmp-k3l4.faiss").write_bytes(b"\0" * 10)
    index.add(tiny_model, names[2:3], root=folder, progress=False)
    assert sorted(os.listdir(tmp_path / "idx")) == ["descriptors.f32", "metadata.json"]


def test_read_checked_accepts_plain_names_and_no_index_file(tmp_path):
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps({"descriptors_file": "descriptors.f16", "index_file": None}))
    assert storage.read_checked(path)["descriptors_file"] == "descriptors.f16"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="metadata.json' is not a tf_netvlad index file"):
        storage.read_checked(path)


def test_a_second_index_writer_is_refused_while_another_process_holds_it_then_takes_over(
        tmp_path, tiny_model, images):
    """The issue's symptom: two `index` runs on one --out interleaved their descriptor chunks
    (1,400 rows for 700 images). A writer is now refused at once while another process holds
    the folder, and takes a killed (-9) holder's lock over."""
    folder, names = images
    out = tmp_path / "idx"
    holder = start_holder(out)
    try:
        with pytest.raises(DirectoryLockedError, match=f"retrieval index .* pid {holder.pid} on host"):
            _build(tiny_model, out, images)
        assert os.listdir(out) == [LOCK_FILE]  # the refused writer wrote nothing
    finally:
        kill_hard(holder)
    built = _build(tiny_model, out, images, count=4)
    assert sorted(os.listdir(out)) == ["descriptors.f32", "metadata.json"]
    holder = start_holder(out)
    try:  # an add is the same kind of writer
        with pytest.raises(DirectoryLockedError, match=f"pid {holder.pid}"):
            built.add(tiny_model, names[4:], root=folder, progress=False)
    finally:
        kill_hard(holder)
    built.add(tiny_model, names[4:], root=folder, progress=False)
    assert built.count == 6 and os.path.getsize(out / "descriptors.f32") == 6 * built.dim * 4
    assert sorted(os.listdir(out)) == ["descriptors.f32", "metadata.json"]
    np.testing.assert_array_equal(built.search(np.asarray(built.descriptors[:6]), 1)[1][:, 0],
                                  np.arange(6))


@pytest.mark.slow
def test_a_second_tf_netvlad_index_process_is_refused_naming_the_first(tmp_path, images, model_file):
    """The same through the command line: `tf_netvlad index` in a fresh process, exit status 2
    and one line naming the holder and the lock file."""
    folder, _ = images
    out = tmp_path / "idx"
    holder = start_holder(out)
    try:
        env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
        second = subprocess.run(
            [sys.executable, "-m", "tf_netvlad", "index", "--model", str(model_file), "--images",
             str(folder), "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        error = second.stderr.strip().splitlines()[-1]
        assert error.startswith(f"tf_netvlad index: error: The retrieval index {str(out)!r} is being "
                                f"written by another process: pid {holder.pid} on host")
        assert str(out / LOCK_FILE) in error
        assert os.listdir(out) == [LOCK_FILE]
    finally:
        kill_hard(holder)
