"""Argument checks shared by the converters (`matconvnet`, `pytorch`), run before any conversion work."""

import os


def check_input_file(path, argument):
    """Returns `path` as str; raises FileNotFoundError naming `argument` if it is not a file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`{argument}` file not found: {path}")
    return path


def check_out_path(out_path):
    """Validates `out_path` before any conversion work: a `.keras` file in an existing folder."""
    if out_path is None:
        return None
    out_path = os.fspath(out_path)
    if not out_path.endswith(".keras"):
        raise ValueError(f"`out_path` must end with '.keras'. Received: out_path={out_path!r}")
    folder = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Folder of `out_path` does not exist: {folder}")
    return out_path
