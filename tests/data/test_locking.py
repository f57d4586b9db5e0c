"""Writer locks (tf_netvlad.data.locking): two real processes, kill -9.

The holder of a lock is a separate Python process that imports only the standard library and
`tf_netvlad.data.locking` (no TensorFlow), so each start costs a fraction of a second.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tf_netvlad.data import locking
from tf_netvlad.data.locking import LOCK_FILE, DirectoryLock, DirectoryLockedError

REPO = Path(__file__).resolve().parents[2]

HOLDER = textwrap.dedent("""
    import sys, time
    from tf_netvlad.data.locking import DirectoryLock
    DirectoryLock(sys.argv[1], "test holder").acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def start_holder(directory):
    """A second process that takes the lock of `directory` through the public class and sleeps."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "locked":
        proc.kill()
        raise AssertionError(f"the holder did not lock: {line!r} {proc.stderr.read()}")
    return proc


def kill_hard(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_lock_writes_its_holder_and_release_leaves_nothing(tmp_path):
    target = tmp_path / "new" / "idx"
    with DirectoryLock(target, "retrieval index") as lock:
        holder = json.loads((target / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["what"] == "retrieval index" and holder["started"][:2] == "20"
        assert lock.path == str(target / LOCK_FILE)
    # the directories the lock created are removed again when left empty
    assert not (tmp_path / "new").exists()
    # an existing directory stays, and so does one the work filled
    (tmp_path / "kept").mkdir()
    with DirectoryLock(tmp_path / "kept"):
        pass
    with DirectoryLock(tmp_path / "filled"):
        (tmp_path / "filled" / "data.bin").write_bytes(b"x")
    assert os.listdir(tmp_path / "kept") == [] and os.listdir(tmp_path / "filled") == ["data.bin"]


def test_a_file_in_place_of_the_directory_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file, not a directory.*training run"):
        DirectoryLock(tmp_path / "file", "training run").acquire()
    assert (tmp_path / "file").read_text() == "x"


def test_reentrant_in_one_thread_refused_in_another(tmp_path):
    outer = DirectoryLock(tmp_path / "d").acquire()
    with DirectoryLock(tmp_path / "d"):  # a locked function calling another on the same directory
        pass
    assert (tmp_path / "d" / LOCK_FILE).exists()  # the inner release does not free the outer hold
    errors = []

    def other_thread():
        try:
            DirectoryLock(tmp_path / "d").acquire()
        except DirectoryLockedError as error:
            errors.append(str(error))

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "another thread of this process" in errors[0]
    outer.release()
    outer.release()  # a second release is a no-op
    assert not (tmp_path / "d").exists()


def test_second_process_is_refused_naming_the_holder_then_a_killed_holder_is_taken_over(
        tmp_path, caplog):
    target = tmp_path / "run"
    holder = start_holder(target)
    try:
        with pytest.raises(DirectoryLockedError) as info:
            DirectoryLock(target, "training run").acquire()
        message = str(info.value)
        assert "\n" not in message
        assert f"pid {holder.pid} on host {socket.gethostname()!r}" in message
        assert "test holder" not in message and "-c" in message  # the holder's command line
        assert str(target / LOCK_FILE) in message and "training run" in message
    finally:
        kill_hard(holder)
    # kill -9 released the kernel lock; the file with the dead holder's details is still there
    assert json.loads((target / LOCK_FILE).read_text())["pid"] == holder.pid
    with caplog.at_level(logging.WARNING, logger="tf_netvlad.data.locking"):
        with DirectoryLock(target, "training run"):
            assert json.loads((target / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"pid {holder.pid}" in caplog.text and "stopped without releasing" in caplog.text
    assert os.listdir(target) == []  # released: no lock file (the holder created the directory)


def test_without_flock_a_dead_pid_is_taken_over_and_a_live_one_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(locking, "fcntl", None)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(done.stdout)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead, "host": socket.gethostname(),
                                                  "command": "old", "started": "then"}))
    with DirectoryLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    alive = {"pid": os.getppid(), "host": socket.gethostname(), "command": "tf_netvlad train",
             "started": "now"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(alive))
    with pytest.raises(DirectoryLockedError, match=f"pid {os.getppid()} .*`tf_netvlad train`"):
        DirectoryLock(tmp_path).acquire()
    elsewhere = dict(alive, host="another-host", pid=dead)  # a pid on another machine: refused
    (tmp_path / LOCK_FILE).write_text(json.dumps(elsewhere))
    with pytest.raises(DirectoryLockedError, match="another-host"):
        DirectoryLock(tmp_path).acquire()


def test_decorator_locks_the_named_argument_or_attribute(tmp_path):
    seen = []

    @locking.holds_writer_lock("out_dir", "thing")
    def write(a, out_dir, b=1):
        seen.append((out_dir / LOCK_FILE).exists())
        return a + b

    class Folder:
        directory = tmp_path / "f"

        @locking.holds_writer_lock("self.directory", "folder")
        def add(self):
            seen.append((self.directory / LOCK_FILE).exists())

    assert write(1, tmp_path / "w", b=2) == 3
    Folder().add()
    assert seen == [True, True] and not (tmp_path / "w").exists() and not (tmp_path / "f").exists()
    assert write.__name__ == "write"


# ------------------------------------------------------------- its user: the SavedModel export base


def test_export_is_refused_while_another_process_holds_the_base_and_cleans_a_killed_export(tmp_path):
    from tf_netvlad.export import saved_model
    from tf_netvlad.models.model import build_model

    model, base = build_model("tiny", num_clusters=2), tmp_path / "netvlad"
    holder = start_holder(base)
    try:
        with pytest.raises(DirectoryLockedError, match=f"SavedModel export base .* pid {holder.pid}"):
            saved_model.export_saved_model(model, base, image_size=(16, 16), warmup=False)
        assert os.listdir(base) == [LOCK_FILE]
    finally:
        kill_hard(holder)
    # what a kill -9 in the middle of `--overwrite` of version 2 leaves: the old version set
    # aside, the new one half written; and an older killed export's temp directory
    (base / "1").mkdir()
    (base / ".old-2-0a1b2c3d" / "variables").mkdir(parents=True)
    (base / ".old-1-4e5f6a7b").mkdir()
    (base / ".tmp-export-2-8c9d0e1f" / "variables").mkdir(parents=True)
    written = saved_model.export_saved_model(model, base, image_size=(16, 16), warmup=False)
    assert written.name == "3"  # version 2 was put back before the next free one was chosen
    assert sorted(os.listdir(base)) == ["1", "2", "3", "batching_parameters.txt", "models.config"]
    assert os.listdir(base / "2") == ["variables"]
