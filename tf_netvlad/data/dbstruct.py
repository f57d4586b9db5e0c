"""NetVLAD `dbStruct` `.mat` split files (Pittsburgh, Tokyo 24/7, TokyoTM): read and write.

Pure NumPy/SciPy. `read_mat` takes the class to build (`PlaceSplit`) as its first argument, so this
module does not import `tf_netvlad.data.places`; use it through `PlaceSplit.from_mat` or
`split_loading.load_split`. CSV manifests are `tf_netvlad.data.split_files`, `@`-named folders
`tf_netvlad.data.image_folders`.
"""

import io
import math
import os
from pathlib import Path

import numpy as np

from tf_netvlad.data.split_files import atomic_write, listed_paths
from tf_netvlad.defaults import NON_TRIV_POS_DIST_SQ_THR_M2, POS_DIST_THR_M

# Official dbStruct field order (Pittsburgh / Tokyo 24/7); TokyoTM inserts the time stamps.
_MAT_FIELDS = ("whichSet", "dbImageFns", "utmDb", "qImageFns", "utmQ", "numImages",
               "numQueries", "posDistThr", "posDistSqThr", "nonTrivPosDistSqThr")
_MAT_FIELDS_TM = ("whichSet", "dbImageFns", "utmDb", "dbTimeStamp", "qImageFns", "utmQ",
                  "qTimeStamp", "numImages", "numQueries", "posDistThr", "posDistSqThr",
                  "nonTrivPosDistSqThr")
_MAT_REQUIRED = ("dbImageFns", "utmDb", "qImageFns", "utmQ")


def _mat_strings(value, field):
    arr = np.asarray(value, dtype=object).reshape(-1)
    out = []
    for item in arr:
        while isinstance(item, np.ndarray):
            if item.size != 1:
                if item.dtype.kind in "US":
                    item = "".join(str(c) for c in item.reshape(-1))
                    break
                raise ValueError(f"dbStruct field {field!r}: expected a cell array of "
                                 f"strings, found an element of shape {item.shape}.")
            item = item.reshape(-1)[0]
        out.append(str(item).strip())
    return out


def _mat_utm(value, n, field):
    utm = np.asarray(value, dtype=np.float64)
    if utm.size == 0 and n == 0:
        return np.zeros((0, 2))
    if utm.ndim == 1 and utm.size == 2:
        utm = utm.reshape(2, 1)
    if utm.ndim != 2 or 2 not in utm.shape:
        raise ValueError(f"dbStruct field {field!r} must be 2×N or N×2, received shape "
                         f"{utm.shape}.")
    if utm.shape[0] == 2 and utm.shape[1] == n:
        return utm.T
    if utm.shape == (n, 2):
        return utm
    raise ValueError(f"dbStruct field {field!r} has shape {utm.shape}, which does not match "
                     f"the {n} image names.")


def _mat_scalar(fields, key, default):
    if key not in fields:
        return default
    return float(np.asarray(fields[key], dtype=np.float64).reshape(-1)[0])


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_RESAVE_V7 = "re-save it as v7 in MATLAB/Octave: `load(in); save(out, 'dbStruct', '-v7')`"


def _check_mat_header(path):
    """Refuses, naming the file and the cause, what scipy cannot read as a MAT v4/v5/v7 file."""
    from scipy.io.matlab import matfile_version

    with open(path, "rb") as f:
        head = f.read(520)
    if not head:
        raise ValueError(f"{str(path)!r} is empty (0 bytes), not a MATLAB .mat file.")
    hdf5 = head.startswith(_HDF5_SIGNATURE) or head[512:520] == _HDF5_SIGNATURE
    if head.startswith(b"MATLAB 7.3 MAT-file") or (hdf5 and head.startswith(b"MATLAB")):
        raise ValueError(f"{str(path)!r} is a MATLAB v7.3 (HDF5) file, which scipy cannot read; "
                         f"{_RESAVE_V7}.")
    if hdf5:
        raise ValueError(f"{str(path)!r} is a plain HDF5 file, not a MATLAB .mat file; if MATLAB "
                         f"wrote it with -v7.3, {_RESAVE_V7}.")
    try:
        version = matfile_version(str(path))
    except Exception as err:  # scipy raises ValueError, MatReadError, IndexError... on bad bytes
        raise ValueError(f"{str(path)!r} is not a MATLAB .mat file ({err}).") from None
    if version == (2, 0):
        raise ValueError(f"{str(path)!r} is a MATLAB v7.3 (HDF5) file, which scipy cannot read; "
                         f"{_RESAVE_V7}.")


def read_mat(cls, path, root=None, name=None):
    """A `cls` (`PlaceSplit`) from a `dbStruct` .mat file (MAT v5/v7), read by field name."""
    import scipy.io

    path = Path(path)
    _check_mat_header(path)
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=True)
    except Exception as err:  # truncated or corrupt: OSError, IndexError, ValueError, zlib.error...
        raise ValueError(f"{str(path)!r} could not be read as a MATLAB .mat file: it is truncated "
                         f"or corrupt ({type(err).__name__}: {err}).") from None
    if "dbStruct" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{str(path)!r} has no `dbStruct` variable; found variables {found}.")
    struct = mat["dbStruct"]
    names = struct.dtype.names or ()
    fields = {n: struct[n].reshape(-1)[0] for n in names}
    missing = [f for f in _MAT_REQUIRED if f not in fields]
    if missing:
        raise ValueError(f"{str(path)!r}: dbStruct is missing field(s) {missing}; fields "
                         f"found: {list(names)}.")
    db_paths = _mat_strings(fields["dbImageFns"], "dbImageFns")
    q_paths = _mat_strings(fields["qImageFns"], "qImageFns")
    for key, n in (("numImages", len(db_paths)), ("numQueries", len(q_paths))):
        if key in fields and int(_mat_scalar(fields, key, n)) != n:
            raise ValueError(f"{str(path)!r}: {key} = {int(_mat_scalar(fields, key, n))} but "
                             f"the file lists {n} image names.")
    pos_thr = _mat_scalar(fields, "posDistThr", None)
    if pos_thr is None:
        sq = _mat_scalar(fields, "posDistSqThr", POS_DIST_THR_M**2)
        pos_thr = math.sqrt(sq)
    times = {}
    for key in ("dbTimeStamp", "qTimeStamp"):
        if key in fields:
            times[key] = np.asarray(fields[key], dtype=np.float64).reshape(-1)
    zone = _mat_strings(fields["utmZone"], "utmZone")[0] if "utmZone" in fields else None
    return cls(
        name=name or path.stem,
        db_paths=db_paths, db_utm=_mat_utm(fields["utmDb"], len(db_paths), "utmDb"),
        query_paths=q_paths, query_utm=_mat_utm(fields["utmQ"], len(q_paths), "utmQ"),
        db_timestamps=times.get("dbTimeStamp"), query_timestamps=times.get("qTimeStamp"),
        pos_dist_thr=pos_thr,
        non_triv_pos_dist_sq_thr=_mat_scalar(fields, "nonTrivPosDistSqThr",
                                             NON_TRIV_POS_DIST_SQ_THR_M2),
        root=os.fspath(root) if root is not None else str(path.parent), utm_zone=zone or None)


def _cell(strings):
    cell = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cell[i, 0] = s
    return cell


def write_mat(split, path, which_set=None):
    """Write `split` as a MAT v5 `dbStruct` in the official field order.

    Pittsburgh order (10 fields), or TokyoTM order (12 fields) when the split has time stamps,
    so both `PlaceSplit.from_mat` and the positional readers of the PyTorch ports read it. The
    names are written as the source file listed them (`split_files.listed_paths`), so a split
    read from a distributed dataset root is written back unchanged. A split with a `utm_zone` gets
    one more field after the official ones, `utmZone` (e.g. '17T'; positional readers never reach
    it). `which_set` defaults to the last `_`-separated part of `split.name` (e.g. "test").
    """
    import scipy.io

    db_names, query_names = listed_paths(split)
    values = {
        "whichSet": which_set or split.name.rsplit("_", 1)[-1],
        "dbImageFns": _cell(db_names),
        "utmDb": np.ascontiguousarray(split.db_utm.T),
        "qImageFns": _cell(query_names),
        "utmQ": np.ascontiguousarray(split.query_utm.T).reshape(2, split.num_queries),
        "numImages": float(split.num_db),
        "numQueries": float(split.num_queries),
        "posDistThr": float(split.pos_dist_thr),
        "posDistSqThr": float(split.pos_dist_thr) ** 2,
        "nonTrivPosDistSqThr": float(split.non_triv_pos_dist_sq_thr),
    }
    order = _MAT_FIELDS
    if split.has_timestamps:
        values["dbTimeStamp"] = split.db_timestamps.astype(np.float64).reshape(1, -1)
        values["qTimeStamp"] = split.query_timestamps.astype(np.float64).reshape(1, -1)
        order = _MAT_FIELDS_TM
    if getattr(split, "utm_zone", None):
        values["utmZone"] = split.utm_zone
        order = order + ("utmZone",)
    struct = {key: values[key] for key in order}
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"dbStruct": struct}, format="5", do_compression=False)
    data = bytearray(buf.getvalue())
    # the 116-byte descriptive header text carries a creation time; make the bytes reproducible
    # (the text names the module that first wrote these files, so the bytes stay as they were)
    data[:116] = b"MATLAB 5.0 MAT-file, written by tf_netvlad.data.places".ljust(116, b" ")
    atomic_write(path, lambda f: f.write(bytes(data)), binary=True)
    return Path(path)
