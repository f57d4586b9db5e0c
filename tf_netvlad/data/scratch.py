"""What a killed writer leaves behind, and temporary files that clean up after a killed run.

* `remove_orphans` removes the temporary files and folders of an interrupted writer from a
  directory whose `locking.DirectoryLock` the caller holds (nobody else is writing there).
* `scratch_file` is a temporary file (the `evaluate --memmap-dir` descriptor memmap) that is
  removed when its block ends, on SIGTERM too (`sigterm_raises`), and whose leftovers from a
  `kill -9` are removed by the next run in that directory: a live owner holds `flock` on it, so
  a file nobody holds is an orphan.

Standard library only.
"""

import contextlib
import logging
import os
import signal
import tempfile
import threading

try:
    import fcntl
except ImportError:  # not POSIX: scratch files are not marked, leftovers are not detected
    fcntl = None

logger = logging.getLogger(__name__)


def remove_orphans(directory, patterns):
    """Removes files and folders matching glob `patterns` in `directory` (temp files of a killed
    writer). Call only while holding the directory's `DirectoryLock`: then nobody else is writing
    them. Symbolic links are removed, never followed. Returns the removed names."""
    import glob
    import shutil

    removed = []
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(glob.escape(os.fspath(directory)), pattern))):
            if os.path.islink(path) or not os.path.isdir(path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            else:
                shutil.rmtree(path, ignore_errors=True)
            removed.append(os.path.basename(path))
    if removed:
        logger.info("Removed leftovers of an interrupted writer in %s: %s", directory,
                    ", ".join(removed))
    return removed


class _Terminated(SystemExit):
    """SIGTERM turned into an exception, so `finally` blocks run (exit status 143)."""


def _raise_terminated(signum, frame):
    raise _Terminated(128 + signum)


@contextlib.contextmanager
def sigterm_raises():
    """Within the block, SIGTERM raises SystemExit(143) instead of killing the process at once,
    so cleanup code runs. Only in the main thread and only if SIGTERM has its default action (a
    handler the application installed is left alone)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _unheld(path):
    """True if no live process holds `flock` on `path` (its owner died)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


@contextlib.contextmanager
def scratch_file(directory, prefix, suffix=""):
    """Yields the path of a new temporary file `directory/PREFIX_xxxx SUFFIX`, removed when the
    block ends (SIGTERM included, see `sigterm_raises`).

    The file is held with `flock` while in use. Files `PREFIX_*SUFFIX` in `directory` that nobody
    holds are leftovers of a killed run and are removed first; those of a live run are kept.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    if fcntl is not None:
        import glob

        pattern = os.path.join(glob.escape(directory), f"{prefix}_*{suffix}")
        for path in glob.glob(pattern):
            if os.path.isfile(path) and not os.path.islink(path) and _unheld(path):
                logger.info("Removing %s, left by a killed run.", path)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
    with sigterm_raises():
        # Created under a hidden name and locked before it gets the name the cleanup above looks
        # for, so another run never sees it unlocked.
        fd, hidden = tempfile.mkstemp(prefix=f".{prefix}_", suffix=suffix, dir=directory)
        path = os.path.join(directory, os.path.basename(hidden)[1:])
        try:
            if fcntl is not None:
                with contextlib.suppress(OSError):  # a file system without flock: no marking
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, path)
            yield path
        finally:
            for name in (hidden, path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
            os.close(fd)
