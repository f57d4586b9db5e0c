"""Atomic file output shared by every writer: a failed write never leaves a partial file."""

import contextlib
import os
import tempfile


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
