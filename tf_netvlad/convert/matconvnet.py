"""Official MatConvNet NetVLAD models (struct-form MAT v5 files) -> `NetVLADModel`.

The file layout (`net.layers` with conv/relu/pool/normalize, `vlad:core`, `vlad:intranorm`,
`postL2`, `WPCA`, `finalL2`; `net.meta.normalization.averageImage`) is documented in
`docs/pretrained.md`. The architecture is read from the file, so any file of that layout
converts, not only VGG16 with K = 64.
"""

import os

import keras
import numpy as np
from keras import layers

from tf_netvlad.convert.common import check_input_file, check_out_path
from tf_netvlad.layers.netvlad import L2_EPSILON
from tf_netvlad.models.backbones import MatConvNetLRN
from tf_netvlad.models.model_files import save_model

_HOW_TO_STRUCT = (
    "Convert it in MATLAB to the struct form first: with the NetVLAD code on the path, load the "
    "file and run `net_class2struct.m` of uzh-rpg/netvlad_tf_open (it replaces every "
    "`net.layers{i}` by `struct(net.layers{i})`), then `save('net_struct.mat', 'net', '-v7')`. "
    "hloc distributes such files for the Pitts30k and TokyoTM models (Pitts30K_struct.mat, "
    "TokyoTM_struct.mat)."
)
_HEAD_NAMES = ("vlad:core", "vlad:intranorm", "postL2", "WPCA", "finalL2")


def _read_net(path):
    from scipy.io import loadmat
    from scipy.io.matlab import matfile_version

    try:
        major, _ = matfile_version(path)
    except Exception as err:  # empty file, not a MAT file at all
        raise ValueError(f"`mat_path` {path} is not a MATLAB .mat file ({err}).") from err
    if major == 2:
        raise ValueError(
            f"`mat_path` {path} is a MAT v7.3 (HDF5) file; the converter reads MAT v5/v7 files "
            f"holding the network as plain structs. {_HOW_TO_STRUCT}"
        )
    try:
        mat = loadmat(path, struct_as_record=False, squeeze_me=True)
    except Exception as err:
        raise ValueError(
            f"Could not read `mat_path` {path} as a MAT v5 file: {type(err).__name__}: {err}. "
            "The file may be truncated (incomplete download) or corrupted; compare its size "
            "with the published one."
        ) from err
    if "net" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"`mat_path` {path}: expected a variable `net` (a MatConvNet network). Found variables: {found}")
    return mat["net"]


def _layer_list(net, path):
    raw = getattr(net, "layers", None)
    if raw is None:
        raise ValueError(f"`mat_path` {path}: `net` has no field `layers`; is this a MatConvNet SimpleNN network?")
    raw = list(raw.ravel()) if isinstance(raw, np.ndarray) and raw.dtype == object else [raw]
    for i, layer in enumerate(raw):
        if not hasattr(layer, "_fieldnames"):
            raise ValueError(
                f"`mat_path` {path}: net.layers{{{i + 1}}} is a {type(layer).__name__}, not a plain "
                "struct; the file holds MATLAB classdef (MCOS) objects, which Python cannot read. "
                + _HOW_TO_STRUCT
            )
    return raw


def _field(layer, name, default=None):
    return getattr(layer, name, default) if name in layer._fieldnames else default


def _name(layer):
    return str(_field(layer, "name", ""))


def _pairs(value, count, what, layer):
    """MatConvNet scalar-or-vector hyper-parameters as `count` ints (pad: top bottom left right)."""
    arr = np.atleast_1d(np.asarray(value if value is not None else 0, dtype="float64")).ravel()
    if arr.size == 1:
        arr = np.repeat(arr, count)
    if arr.size != count:
        raise ValueError(f"Layer {_name(layer)!r}: `{what}` must have 1 or {count} values. Found {arr.tolist()}")
    return [int(v) for v in arr]


def _weights(layer):
    w = _field(layer, "weights")
    if w is None or (isinstance(w, np.ndarray) and w.dtype != object and w.size == 0):
        return []
    if isinstance(w, np.ndarray) and w.dtype == object:
        return [np.asarray(x) for x in np.atleast_1d(w)]
    return [np.asarray(w)]


def _conv_kernel(layer, in_channels):
    weights = _weights(layer)
    if not weights:
        raise ValueError(f"Layer {_name(layer)!r} (conv): expected weights {{kernel, bias}}. Found none.")
    kernel = weights[0].astype("float32")
    if kernel.ndim == 2:  # 1x1 kernel squeezed by loadmat
        kernel = kernel[None, None]
    if kernel.ndim != 4 or in_channels % kernel.shape[2]:
        raise ValueError(
            f"Layer {_name(layer)!r} (conv): expected a kernel [kh, kw, Cin, Cout] whose Cin divides "
            f"the {in_channels} input channels. Found shape {kernel.shape}"
        )
    bias = weights[1].astype("float32").ravel() if len(weights) > 1 and weights[1].size else None
    if bias is not None and bias.shape != (kernel.shape[3],):
        raise ValueError(
            f"Layer {_name(layer)!r} (conv): expected bias ({kernel.shape[3]},). Found shape {bias.shape}"
        )
    return kernel, bias


def _add_conv(x, layer, in_channels, lname):
    kernel, bias = _conv_kernel(layer, in_channels)
    top, bottom, left, right = _pairs(_field(layer, "pad"), 4, "pad", layer)
    stride = _pairs(_field(layer, "stride", 1), 2, "stride", layer)
    dilation = _pairs(_field(layer, "dilate", 1), 2, "dilate", layer)
    if top or bottom or left or right:
        x = layers.ZeroPadding2D(((top, bottom), (left, right)), name=f"{lname}_pad")(x)
    conv = layers.Conv2D(kernel.shape[3], kernel.shape[:2], strides=stride, dilation_rate=dilation,
                         groups=in_channels // kernel.shape[2], use_bias=bias is not None, name=lname)
    x = conv(x)
    conv.set_weights([kernel] + ([bias] if bias is not None else []))
    return x, kernel.shape[3]


def _add_pool(x, layer, non_negative, lname):
    method = str(_field(layer, "method", "max"))
    if method != "max":
        raise ValueError(f"Layer {_name(layer)!r}: only 'max' pooling is supported. Found method {method!r}")
    top, bottom, left, right = _pairs(_field(layer, "pad"), 4, "pad", layer)
    if top or bottom or left or right:
        # MatConvNet max-pooling ignores padded cells; zero padding is identical only when the
        # input is known to be >= 0 (after a ReLU), which holds for the official backbones.
        if not non_negative:
            raise ValueError(
                f"Layer {_name(layer)!r}: padded max-pooling of a possibly negative input is not "
                f"supported (pad {[top, bottom, left, right]} not preceded by a ReLU)."
            )
        x = layers.ZeroPadding2D(((top, bottom), (left, right)), name=f"{lname}_pad")(x)
    pool = _pairs(_field(layer, "pool"), 2, "pool", layer)
    stride = _pairs(_field(layer, "stride", 1), 2, "stride", layer)
    return layers.MaxPooling2D(pool, strides=stride, padding="valid", name=lname)(x)


def _normalize_param(layer):
    param = np.atleast_1d(np.asarray(_field(layer, "param"), dtype="float64")).ravel()
    if param.size != 4:
        raise ValueError(f"Layer {_name(layer)!r} (normalize): expected param [N kappa alpha beta]. Found {param.tolist()}")
    return param


def _build_backbone(layer_list, path):
    """Keras Functional backbone from the conv/relu/pool/normalize layers before the NetVLAD head."""
    x = inputs = keras.Input(shape=(None, None, 3), name="backbone_input")
    channels, non_negative, used = 3, False, set()
    for i, layer in enumerate(layer_list):
        kind, lname = str(_field(layer, "type", "")), _name(layer).replace(":", "_") or f"layer{i}"
        if lname in used:
            lname = f"{lname}_{i}"
        used.add(lname)
        if kind == "conv":
            x, channels = _add_conv(x, layer, channels, lname)
            non_negative = False
        elif kind == "relu":
            leak = float(np.asarray(_field(layer, "leak", 0) or 0))
            x = layers.ReLU(negative_slope=leak, name=lname)(x)
            non_negative = leak == 0
        elif kind == "pool":
            x = _add_pool(x, layer, non_negative, lname)
        elif kind in ("normalize", "lrn"):
            depth, kappa, alpha, beta = _normalize_param(layer)
            x = MatConvNetLRN(depth, kappa, alpha, beta, name=lname)(x)
        else:
            raise ValueError(
                f"`mat_path` {path}: unsupported backbone layer {i + 1} {_name(layer)!r} of type "
                f"{kind!r}; expected conv, relu, pool or normalize before the NetVLAD head."
            )
    if channels == 3 and not any(str(_field(layer, "type", "")) == "conv" for layer in layer_list):
        raise ValueError(f"`mat_path` {path}: found no conv layer before `vlad:core`.")
    return keras.Model(inputs, x, name="matconvnet_backbone"), channels


def _check_full_l2(layer, dim, what):
    """Checks that a `normalize` layer is x / sqrt(Σx² + 1e-12) over all `dim` channels."""
    depth, kappa, alpha, beta = _normalize_param(layer)
    if (depth - 1) // 2 < dim - 1 or alpha != 1 or beta != 0.5 or not np.isclose(kappa, L2_EPSILON, rtol=1e-3, atol=0):
        raise ValueError(
            f"Layer {_name(layer)!r} ({what}): expected an L2 normalisation over all {dim} channels, "
            f"param [N >= {2 * dim - 1}, 1e-12, 1, 0.5]. Found param {[depth, kappa, alpha, beta]}"
        )


def _parse_head(layer_list, path):
    """Locates the NetVLAD head; returns (backbone layers, pre_l2 layer, head dict)."""
    names = [_name(layer) for layer in layer_list]
    if "vlad:core" not in names:
        raise ValueError(
            f"`mat_path` {path} is not a NetVLAD network: expected a layer named 'vlad:core'. "
            f"Found layers: {names}"
        )
    core_idx = names.index("vlad:core")
    before = layer_list[core_idx - 1] if core_idx else None
    has_pre_l2 = before is not None and str(_field(before, "type", "")) == "normalize" and (
        _name(before) == "preL2" or _normalize_param(before)[0] >= 1024
    )
    backbone_layers = layer_list[: core_idx - 1 if has_pre_l2 else core_idx]
    tail = names[core_idx + 1:]
    expected_tails = (["postL2"], ["vlad:intranorm", "postL2"], ["postL2", "WPCA", "finalL2"],
                      ["vlad:intranorm", "postL2", "WPCA", "finalL2"])
    if tail not in expected_tails:
        raise ValueError(
            f"`mat_path` {path}: expected the layers after 'vlad:core' to be one of "
            f"{[' -> '.join(t) for t in expected_tails]}. Found: {' -> '.join(tail) or '(none)'}"
        )
    head = {n: layer_list[core_idx + 1 + j] for j, n in enumerate(tail)}
    head["vlad:core"] = layer_list[core_idx]
    return backbone_layers, before if has_pre_l2 else None, head


def _vlad_weights(core, dim):
    weights = _weights(core)
    if len(weights) != 2:
        raise ValueError(
            "Layer 'vlad:core': expected 2 weights (assignment α·ĉ and negated centres, the v1 "
            f"`layerVLAD`). Found {len(weights)} (vladv2 files are not supported)."
        )
    assign, neg_centres = (w.astype("float32") for w in weights)
    k = int(np.asarray(_field(core, "K", assign.shape[-1])))
    d = int(np.asarray(_field(core, "D", dim)))
    for what, arr in (("assignment weights", assign), ("negated centres", neg_centres)):
        arr_2d = arr.reshape(arr.shape[-2:]) if arr.ndim == 4 and arr.shape[:2] == (1, 1) else arr
        if arr_2d.shape != (dim, k) or d != dim:
            raise ValueError(
                f"Layer 'vlad:core' {what}: expected shape (D, K) = ({dim}, {k}) for the backbone's "
                f"D = {dim} channels (file says D = {d}). Found shape {arr.shape}"
            )
    return assign.reshape(dim, k), -neg_centres.reshape(dim, k).T, k


def _wpca_weights(layer, in_dim):
    weights = _weights(layer)
    if len(weights) != 2:
        raise ValueError(f"Layer 'WPCA': expected weights {{kernel, bias}}. Found {len(weights)} arrays")
    kernel, bias = (w.astype("float32") for w in weights)
    kernel = kernel.reshape(kernel.shape[-2:]) if kernel.ndim == 4 else kernel
    bias = bias.ravel()
    if kernel.ndim != 2 or kernel.shape[0] != in_dim or bias.shape != (kernel.shape[1],):
        raise ValueError(
            f"Layer 'WPCA': expected kernel (K*D, P) = ({in_dim}, P) and bias (P,). Found kernel "
            f"{kernel.shape}, bias {bias.shape}"
        )
    return kernel, bias


def _average_rgb(net, path):
    meta = getattr(net, "meta", None)
    norm = getattr(meta, "normalization", None) if meta is not None else getattr(net, "normalization", None)
    avg = getattr(norm, "averageImage", None) if norm is not None else None
    if avg is None:
        raise ValueError(f"`mat_path` {path}: expected net.meta.normalization.averageImage. Found none.")
    avg = np.asarray(avg, dtype="float64")
    rgb = avg[0, 0, :] if avg.ndim == 3 else avg.ravel()
    if rgb.shape != (3,):
        raise ValueError(f"`mat_path` {path}: averageImage must be H×W×3 or 3 values. Found shape {avg.shape}")
    return tuple(float(v) for v in rgb)


def convert_matconvnet(mat_path, out_path=None):
    """Converts an official NetVLAD MatConvNet model (struct-form MAT v5 file) to Keras.

    The backbone (conv/relu/pool/normalize layers up to `vlad:core`, minus the preL2
    normalisation) is rebuilt layer by layer from the file; kernels `[kh, kw, Cin, Cout]` copy
    into Keras `Conv2D` unchanged, pads become explicit `ZeroPadding2D`. The head becomes the v1
    `NetVLAD` layer (assignment weights as stored, centres = −weights{2}, preL2 / intra-norm as in
    the file) and, when the file has `WPCA`, a `PCAWhitening` layer with the file's weights (the
    flatten order d·K + k is MATLAB's, so WPCA applies unchanged). Input preprocessing is RGB
    0..255 minus `averageImage[0,0,:]`.

    Args:
        mat_path: the `.mat` file, e.g. hloc's `Pitts30K_struct.mat`.
        out_path: optional `.keras` path to save the model to.

    Returns:
        `NetVLADModel` (float32 descriptors of size P with WPCA, K·D without).
    """
    from tf_netvlad.layers.preprocessing import ImagePreprocessing
    from tf_netvlad.models.model import NetVLADModel

    mat_path = check_input_file(mat_path, "mat_path")
    out_path = check_out_path(out_path)
    net = _read_net(mat_path)
    backbone_layers, pre_l2, head = _parse_head(_layer_list(net, mat_path), mat_path)
    mean = _average_rgb(net, mat_path)
    backbone, dim = _build_backbone(backbone_layers, mat_path)
    if pre_l2 is not None:
        _check_full_l2(pre_l2, dim, "preL2")
    if "vlad:intranorm" in head:
        _check_full_l2(head["vlad:intranorm"], dim, "vlad:intranorm")
    kernel, centroids, k = _vlad_weights(head["vlad:core"], dim)
    wpca = _wpca_weights(head["WPCA"], k * dim) if "WPCA" in head else None
    stem = os.path.splitext(os.path.basename(mat_path))[0]
    model = NetVLADModel(
        backbone,
        preprocessing=ImagePreprocessing(mode="matconvnet", mean=mean, name="preprocessing"),
        num_clusters=k,
        variant="v1",
        pre_l2=pre_l2 is not None,
        intra_normalize="vlad:intranorm" in head,
        whitening_dim=None if wpca is None else wpca[0].shape[1],
        backbone_name="matconvnet",
        name="".join(c if c.isalnum() or c in "_-" else "_" for c in stem),
    )
    model.netvlad.assignment_kernel.assign(kernel)
    model.netvlad.centroids.assign(centroids)
    if wpca is not None:
        model.whitening.set_whitening(*wpca)
    if out_path is not None:
        save_model(model, out_path)
    return model
