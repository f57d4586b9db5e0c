"""Orphans and scratch files (tf_netvlad.data.scratch): real processes, kill -9, SIGTERM.

The scratch-file owner is a separate Python process importing only the standard library and
`tf_netvlad.data.scratch` (no TensorFlow), except the `evaluate --memmap-dir` cases at the end.
"""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tf_netvlad.data import scratch

REPO = Path(__file__).resolve().parents[2]


def test_remove_orphans_never_follows_links(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep")
    folder = tmp_path / "idx"
    (folder / ".tmp-dir").mkdir(parents=True)
    (folder / ".tmp-dir" / "part").write_text("x")
    (folder / ".tmp-abc.json").write_text("{}")
    os.symlink(victim, folder / ".tmp-link")
    (folder / "keep.json").write_text("{}")
    removed = scratch.remove_orphans(folder, [".tmp-*"])
    assert sorted(removed) == [".tmp-abc.json", ".tmp-dir", ".tmp-link"]
    assert os.listdir(folder) == ["keep.json"] and (victim / "precious").read_text() == "keep"


# --------------------------------------------------------------------------- scratch files


def test_scratch_file_is_held_while_used_and_orphans_are_removed(tmp_path):
    orphan = tmp_path / "db_descriptors_killed.npy"  # a kill -9 left it: nobody holds it
    orphan.write_bytes(b"old")
    other = tmp_path / "other.npy"
    other.write_bytes(b"not ours")
    with scratch.scratch_file(tmp_path, "db_descriptors", ".npy") as first:
        assert not orphan.exists() and other.exists()
        assert not scratch._unheld(first)  # a live owner holds it
        with scratch.scratch_file(tmp_path, "db_descriptors", ".npy") as second:
            assert os.path.exists(first)  # a concurrent run's file is kept
            assert sorted(os.listdir(tmp_path)) == sorted(
                [os.path.basename(first), os.path.basename(second), "other.npy"])
        assert not os.path.exists(second)
    assert os.listdir(tmp_path) == ["other.npy"]


SCRATCH_SCRIPT = textwrap.dedent("""
    import sys, time
    from tf_netvlad.data.scratch import scratch_file
    with scratch_file(sys.argv[1], "db_descriptors", ".npy") as path:
        print(path, flush=True)
        time.sleep(600)
""")


def test_sigterm_removes_the_scratch_file_and_exits_143(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", SCRATCH_SCRIPT, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = proc.stdout.readline().strip()
    assert os.path.exists(path), proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == []


def test_sigterm_handler_of_the_application_is_left_alone():
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with scratch.sigterm_raises():
            assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
    with scratch.sigterm_raises():
        assert signal.getsignal(signal.SIGTERM) is scratch._raise_terminated
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# ------------------------------------------------------------- its user: evaluate --memmap-dir


def _split(folder):
    from tests.helpers import write_solid_image
    from tf_netvlad.data.places import PlaceSplit

    colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (200, 200, 10)]  # distinct directions
    names = [write_solid_image(folder / f"im{k}.png", c, size=(8, 8)) for k, c in enumerate(colours)]
    utm = np.array([[0.0, 0], [100, 0], [200, 0], [300, 0]])
    return PlaceSplit(name="tiny", db_paths=tuple(names), db_utm=utm, query_paths=tuple(names[:2]),
                      query_utm=utm[:2])


def test_evaluate_memmap_dir_removes_a_killed_runs_file_and_keeps_a_live_one(tmp_path,
                                                                             mean_colour_model):
    from tf_netvlad.evaluation import recall

    memmaps = tmp_path / "memmaps"
    memmaps.mkdir()
    (memmaps / "db_descriptors_k9.npy").write_bytes(b"left by kill -9")
    split = _split(tmp_path)
    with scratch.scratch_file(memmaps, "db_descriptors", ".npy") as live:  # another evaluate
        results = recall.evaluate(mean_colour_model, split, ns=(1,), progress=False,
                                  memmap_dir=memmaps, descriptor_dtype="float16")
        assert os.listdir(memmaps) == [os.path.basename(live)]
    assert results["recall@1"] == 1.0
    assert os.listdir(memmaps) == []


EVALUATE_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tests.data.test_scratch import _split
    from tests.helpers import mean_colour_model
    from tf_netvlad.evaluation import recall
    from tf_netvlad.models import extract

    real = extract.extract_descriptors

    def slow(*args, **kwargs):  # the database extraction has started: hold here until SIGTERM
        result = real(*args, **kwargs)
        print("extracting", flush=True)
        time.sleep(600)
        return result

    extract.extract_descriptors = slow
    recall.evaluate(mean_colour_model(), _split(Path(sys.argv[1])), progress=False,
                    memmap_dir=sys.argv[2])
""")


@pytest.mark.slow
def test_sigterm_during_evaluate_memmap_dir_leaves_no_descriptor_file(tmp_path):
    memmaps = tmp_path / "memmaps"
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-c", EVALUATE_SCRIPT, str(tmp_path), str(memmaps)],
                            env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    assert line.strip() == "extracting", proc.stderr.read()[-3000:]
    assert [p.name[:15] for p in memmaps.iterdir()] == ["db_descriptors_"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert os.listdir(memmaps) == []
