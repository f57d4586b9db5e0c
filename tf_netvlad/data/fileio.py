"""Atomic file output shared by every writer: a failed write never leaves a partial file."""

import contextlib
import json
import os
import tempfile

import numpy as np


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yields a temporary path beside `path`; renames it onto `path` if the block succeeds.

    The temporary file is hidden (`.tmp-…`) and lives in the destination folder (created if
    needed), so the final `os.replace` is atomic. On any error it is removed.

    Example:
    >>> with atomic_path("results.json", ".json") as tmp:
    ...     Path(tmp).write_text("{}")
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def jsonable(value):
    """`value` with NumPy arrays and scalars turned into Python lists and numbers (dict keys as str)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_json(data, path, allow_nan=True):
    """Writes `data` (NumPy values allowed) as sorted, indented JSON, atomically and durably.

    The file is complete on disk (flushed and fsynced) before it replaces `path`, so a resumable
    job that reads it after a crash sees the old or the new content, never a torn one.
    `allow_nan=False` refuses NaN / inf (files that other programs parse as strict JSON).
    Returns `path` as str.
    """
    text = json.dumps(jsonable(data), indent=2, sort_keys=True, allow_nan=allow_nan) + "\n"
    with atomic_path(path, ".json") as tmp:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return os.fspath(path)


def resolve_paths(paths, root=None):
    """Joins relative `paths` onto `root` (absolute paths are kept); returns a list of str."""
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError(
            f"`paths` must be a sequence of image paths, not one path. Received: {paths!r}"
        )
    paths = [os.fspath(p) for p in paths]
    if root is None:
        return paths
    root = os.fspath(root)
    return [p if os.path.isabs(p) else os.path.join(root, p) for p in paths]


def confined_path(folder, name, source, key):
    """`folder / name` for a file name read from the metadata file `source` under `key`.

    Only a plain file name inside `folder` is accepted: a folder someone hands you must not make
    tf_netvlad read, truncate or delete a file elsewhere, so absolute paths, `..`, separators and
    empty names are refused with a one-line error naming `source`. Returns a `pathlib.Path`.
    """
    from pathlib import Path

    plain = (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
             and "\\" not in name and "\0" not in name and not os.path.isabs(name))
    if not plain:
        raise ValueError(
            f"{os.fspath(source)!r}: `{key}` must be the name of a file inside "
            f"{os.fspath(folder)!r}, not {name!r}. The folder was altered or damaged; tf_netvlad "
            "reads and writes only files inside it. Rebuild it, or restore the file."
        )
    return Path(folder) / name
