"""Reading and writing `.keras` model files: `load_model` (refuses a bad file with its cause, in one
line, before Keras reads it), `save_model` (atomic) and `resolve_model` (a model or a path)."""

import os

import keras

from tf_netvlad.data.fileio import atomic_path
from tf_netvlad.models.model import NetVLADModel


def resolve_model(model_or_path, any_keras_model=False):
    """`(model, path)`: a `.keras` path is loaded with `load_model` (uncompiled); a model passes.

    `path` is None for a model object. Only `NetVLADModel`s are accepted (ValueError otherwise)
    unless `any_keras_model=True`, which accepts any object with Keras weights (TypeError
    otherwise).
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        return load_model(model_or_path, compile=False), os.fspath(model_or_path)
    if any_keras_model:
        if not hasattr(model_or_path, "get_weights"):
            raise TypeError(
                "`model_or_path` must be a Keras model or a .keras file path. "
                f"Received: {type(model_or_path).__name__}"
            )
    elif not isinstance(model_or_path, NetVLADModel):
        raise ValueError(
            "`model_or_path` must be a tf_netvlad NetVLADModel or the path of a `.keras` file "
            f"holding one. Received: {type(model_or_path).__name__}"
        )
    return model_or_path, None


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _one_line(error):
    """The first two non-empty lines of an error message, joined (Keras errors span many lines)."""
    lines = [" ".join(line.split()) for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:2]) or type(error).__name__


def _keras_archive_problem(path):
    """Why `path` is not a readable `.keras` zip archive (a short cause), or None if it looks fine.

    A `.keras` file is a zip of `config.json`, `metadata.json` and `model.weights.h5` (Keras
    `saving_lib`); checked here so that a broken file gets its real cause, not Keras's "File not
    found" (for any non-zip) or h5py's "file signature not found" (no path).
    """
    import json
    import zipfile

    with open(path, "rb") as handle:
        head = handle.read(8)
    if not head:
        return "the file is empty (0 bytes)"
    if not zipfile.is_zipfile(path):
        if head.startswith(b"PK"):
            return "the zip archive is truncated or damaged (no readable central directory)"
        if head == _HDF5_SIGNATURE:
            return "it is an HDF5 file (a legacy .h5 model or a weights file), not a .keras zip archive"
        return "it is not a zip archive, as every .keras file is"
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names:
                return "the archive holds no config.json, so it is not a Keras model file"
            weights = [n for n in ("model.weights.h5", "model.weights.npz") if n in names]
            if not weights:
                return "the archive holds no model.weights.h5: the weights are missing"
            damaged = archive.testzip()
            if damaged is not None:
                return f"the archive member {damaged} is corrupt (CRC mismatch): the file is damaged"
            json.loads(archive.read("config.json"))
            if weights[0].endswith(".h5"):
                with archive.open(weights[0]) as member:
                    if member.read(8) != _HDF5_SIGNATURE:
                        return f"its weights ({weights[0]}) are corrupt: not an HDF5 file"
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        return f"the zip archive is damaged ({_one_line(err)})"
    except ValueError as err:  # json.JSONDecodeError, UnicodeDecodeError
        return f"its config.json is not valid JSON ({_one_line(err)})"
    return None


def load_model(path, compile=True):
    """Loads a tf_netvlad `.keras` model.

    Every failure is one line naming the file and the cause: missing, a directory, not `.keras`,
    empty, not a zip, a truncated or damaged archive, corrupt or truncated weights, weights that do
    not fit the architecture, or a Keras model that is not a tf_netvlad `NetVLADModel`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"Model path {path} is a directory, not a .keras model file.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Model file not found: {path}")
    if not path.endswith(".keras"):
        raise ValueError(f"Expected a `.keras` model file. Received: {path}")
    problem = _keras_archive_problem(path)
    if problem is not None:
        raise ValueError(f"{path} is not a loadable tf_netvlad model: {problem}.")
    try:
        model = keras.saving.load_model(path, compile=compile)
    except OSError as err:  # h5py on a truncated or damaged weights file
        raise ValueError(f"{path} is not a loadable tf_netvlad model: its weights are corrupt or "
                         f"truncated ({_one_line(err)}).") from err
    except (TypeError, ValueError, KeyError, EOFError) as err:
        raise ValueError(f"{path} is not a loadable tf_netvlad model: {_one_line(err)}") from err
    if not isinstance(model, NetVLADModel):
        raise ValueError(
            f"{path} holds a {type(model).__name__}, not a tf_netvlad NetVLADModel. "
            "Build one with `tf_netvlad init` or `tf_netvlad.build_model`."
        )
    return model


def save_model(model, path):
    """Saves a `.keras` file atomically: a failed save leaves no partial file behind."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"Model files must end in `.keras`. Received: {path}")
    with atomic_path(path, ".keras") as tmp:
        model.save(tmp)
    return path
