"""Writer locks for the directories tf_netvlad fills incrementally.

An index folder, a training run directory and a SavedModel export base are written step by step
(a resumable build appends descriptor chunks, a run swaps checkpoints, an export picks the next
free version). Two writers on one directory would interleave their steps and corrupt it, so each
writer holds `DirectoryLock` for the whole operation:

* The lock is `fcntl.flock` on `DIRECTORY/.tf_netvlad.lock`. The kernel releases it when the
  holder exits, however it exits (`kill -9` included), so a lock can never outlive its process:
  a lock file left behind by a killed writer is simply taken over by the next one (with a
  warning naming the dead holder). On a network file system Linux maps `flock` to POSIX byte
  range locks, so writers on different machines exclude each other as well.
* A second writer is refused at once with `DirectoryLockedError`, one line naming the holder (pid,
  host, command, start time, from the JSON the holder wrote into the lock file) and the lock file.
* The lock is re-entrant within one thread (a locked function may call another on the same
  directory) and refuses other threads of the same process.
* Release removes the lock file, then the directory itself if this lock created it and it is
  still empty, so a writer that fails on bad input leaves nothing behind.
* Where `flock` is unavailable (no `fcntl` module, or a file system that refuses it), the lock
  file is created exclusively and a leftover one is taken over only when it names a pid on this
  host that is no longer alive (`os.kill(pid, 0)`).

Readers (evaluation of an index, `localize`) take no lock: every writer switches its metadata
atomically, so a reader sees one complete generation or the next.

What a killed writer leaves inside a locked directory (`remove_orphans`) and temporary files
marked by the same `flock` (`scratch_file`) are in `tf_netvlad.data.scratch`.

Standard library only.
"""

import contextlib
import errno
import functools
import inspect
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time

try:
    import fcntl
except ImportError:  # not POSIX: the pid-file fallback below
    fcntl = None

logger = logging.getLogger(__name__)

LOCK_FILE = ".tf_netvlad.lock"

# Locks this process holds: real directory path -> [DirectoryLock, owning thread id, depth].
_HELD = {}
_HELD_GUARD = threading.Lock()


class DirectoryLockedError(RuntimeError):
    """Another writer holds the directory (the message names it and the lock file)."""


def _command():
    """This process's command line, short: `tf_netvlad index --out idx ...`."""
    argv = list(sys.argv) or ["python"]
    name = os.path.basename(argv[0]) or "python"
    if name == "__main__.py":  # python -m PACKAGE
        name = os.path.basename(os.path.dirname(argv[0]))
    text = shlex.join([name] + argv[1:])
    return text if len(text) <= 200 else text[:197] + "..."


def pid_alive(pid):
    """True if a process `pid` runs on this host (or exists but belongs to another user)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError, OSError):
        return False
    return True


def _read_holder(path):
    try:
        with open(path) as handle:
            holder = json.loads(handle.read() or "null")
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def describe_holder(holder, holds=False):
    """`pid 1234 on host 'box', `tf_netvlad index ...`, since 2025-01-31 10:00:00 +0000`.

    `holds`: the lock is held right now; a holder pid on this host that is gone then means that a
    process it started (sharing the open lock file) still holds it, which the text says.
    """
    if not holder:
        return "a process that has not written its details yet"
    text = (f"pid {holder.get('pid')} on host {holder.get('host')!r}, `{holder.get('command')}`, "
            f"since {holder.get('started')}")
    if holds and holder.get("host") == socket.gethostname() and not pid_alive(holder.get("pid", -1)):
        text += " (that pid has exited, but a process it started still holds the lock: stop it)"
    return text


class DirectoryLock:
    """Exclusive writer lock of one directory (see the module docstring).

    Args:
        directory: the directory to write; created (with its parents) if missing.
        what: what the directory is, for messages ("retrieval index", "training run", ...).

    Use as a context manager, or `acquire()` / `release()`.

    Example:
    >>> with DirectoryLock("runs/mine", "training run"):
    ...     write_the_run()
    """

    def __init__(self, directory, what="directory"):
        self.directory = os.path.abspath(os.fspath(directory))
        self.path = os.path.join(self.directory, LOCK_FILE)
        self.what = what
        self._fd = None
        self._created = []
        self._acquired = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False

    # ------------------------------------------------------------------ acquire
    def acquire(self):
        """Takes the lock or raises `DirectoryLockedError` at once. Returns self."""
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise NotADirectoryError(f"{self.directory!r} is a file, not a directory: tf_netvlad "
                                     f"needs a directory there for the {self.what}.")
        key = os.path.realpath(self.directory)
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is not None:
                if held[1] != threading.get_ident():
                    raise DirectoryLockedError(
                        f"The {self.what} {self.directory!r} is being written by another thread of "
                        f"this process (lock file {self.path}); wait for it to finish.")
                held[2] += 1
                self._acquired = True
                return self
            for _ in range(20):  # retried only while a releasing holder removes the file under us
                if self._try_acquire():
                    break
            else:
                raise DirectoryLockedError(f"Could not take the lock {self.path} (it kept "
                                           "changing); another writer is starting or stopping.")
            _HELD[key] = [self, threading.get_ident(), 1]
            self._acquired = True
        return self

    def _make_directory(self):
        missing, path = [], self.directory
        while not os.path.isdir(path):
            missing.append(path)
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        os.makedirs(self.directory, exist_ok=True)
        # deepest first: removed in this order when left empty
        self._created = sorted(set(self._created) | set(missing), key=len, reverse=True)

    def _try_acquire(self):
        """One attempt: True when the lock is ours, False to retry; raises when it is held."""
        self._make_directory()
        if fcntl is None:
            return self._acquire_without_flock()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except FileNotFoundError:  # the directory was removed by a releasing holder
            return False
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise OSError(f"The lock file {self.path} is a symbolic link; tf_netvlad never "
                              "writes through links. Remove it if the folder is yours.") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            empty = os.fstat(fd).st_size == 0
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise self._held_error(_read_holder(self.path)) from None
            # ENOLCK / EOPNOTSUPP: no flock on this file system; the empty file is the one we
            # just created, and the pid-file protocol needs to create it exclusively itself
            if empty:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            return self._acquire_without_flock()
        try:  # the file we locked must still be the one at the path (not unlinked by a releaser)
            same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return False
        previous = _read_holder(self.path)
        if previous:
            logger.warning("Taking over the lock of the %s %s: its holder (%s) stopped without "
                           "releasing it.", self.what, self.directory, describe_holder(previous))
        self._fd = fd
        self._write_holder(fd)
        return True

    def _acquire_without_flock(self):
        """Exclusive creation of the lock file; a leftover of a dead pid on this host is removed."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            holder = _read_holder(self.path)
            if (holder and holder.get("host") == socket.gethostname()
                    and not pid_alive(holder.get("pid", -1))):
                logger.warning("Removing the stale lock %s of %s.", self.path, describe_holder(holder))
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                return False
            raise self._held_error(holder) from None
        self._fd = fd
        self._write_holder(fd)
        return True

    def _write_holder(self, fd):
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "what": self.what}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(holder) + "\n").encode())

    def _held_error(self, holder):
        return DirectoryLockedError(
            f"The {self.what} {self.directory!r} is being written by another process: "
            f"{describe_holder(holder, holds=fcntl is not None)} (lock file {self.path}). Wait "
            "for it to finish or stop it, or use another directory; a killed writer's lock is "
            "released with its process.")

    # ------------------------------------------------------------------ release
    def release(self):
        """Releases the lock (the outermost release of a re-entrant hold removes the file)."""
        if not self._acquired:
            return
        self._acquired = False
        key = os.path.realpath(self.directory)
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is None:
                return
            held[2] -= 1
            if held[2] > 0:
                return
            del _HELD[key]
        owner = held[0]
        # Unlink while still holding the lock, then close: a waiting writer that opened the old
        # file notices the unlink (inode check) and retries on a fresh file.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(owner.path)
        if owner._fd is not None:
            os.close(owner._fd)
            owner._fd = None
        for path in owner._created:
            try:
                os.rmdir(path)
            except OSError:
                break  # not empty (the work left files there) or gone: keep it and its parents


def holds_writer_lock(argument, what):
    """Decorator: the call holds the `DirectoryLock` of the directory in argument `argument`.

    `argument` names a parameter of the decorated function, optionally with one attribute:
    "out_dir", or "self.directory" for a method.
    """
    name, _, attribute = argument.partition(".")

    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args, **kwargs):
            value = signature.bind(*args, **kwargs).arguments[name]
            directory = getattr(value, attribute) if attribute else value
            with DirectoryLock(directory, what):
                return function(*args, **kwargs)

        return locked

    return decorate
