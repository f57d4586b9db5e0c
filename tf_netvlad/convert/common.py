"""Converters from published NetVLAD weights (MatConvNet `.mat`, PyTorch `.pth.tar`) to Keras.

`convert_matconvnet` (official MATLAB models, `tf_netvlad.convert.matconvnet`) and
`convert_pytorch` (pytorch-NetVlad / Patch-NetVLAD checkpoints, `tf_netvlad.convert.pytorch`)
return a `NetVLADModel` whose descriptors match the original network's forward pass. This
module holds only what both share (output-path checks, atomic save) and imports nothing heavy:
the converters are imported when called.
"""

import os



def convert_matconvnet(mat_path, out_path=None):
    """Converts an official struct-form MatConvNet NetVLAD `.mat`; see `tf_netvlad.convert.matconvnet`."""
    from tf_netvlad.convert.matconvnet import convert_matconvnet as _convert

    return _convert(mat_path, out_path=out_path)


def convert_pytorch(checkpoint_path, out_path=None, arch=None, weights_only=True):
    """Converts a pytorch-NetVlad / Patch-NetVLAD checkpoint; see `tf_netvlad.convert.pytorch`."""
    from tf_netvlad.convert.pytorch import convert_pytorch as _convert

    return _convert(checkpoint_path, out_path=out_path, arch=arch, weights_only=weights_only)


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
