"""Converters: synthetic files of the official layouts vs independent forward passes.

MatConvNet: files written with scipy in the exact struct-form layout (reference doc §2.2/§2.6),
compared with a float64 NumPy re-implementation of the MatConvNet/MATLAB forward pass
(correlation convs with [top bottom left right] pads, max-pool ignoring padded cells,
cross-channel `normalize`, `layerVLAD` with negated centres, column-major flatten, WPCA).
PyTorch: checkpoints with the pytorch-NetVlad / Patch-NetVLAD keys, compared with the torch
forward of those modules (F.normalize, looped residuals, k·D + d flatten, WPCA conv).
"""

import os
import struct

import numpy as np
import pytest
import scipy.io

from tests.helpers import import_optional
from tf_netvlad.convert.matconvnet import convert_matconvnet
from tf_netvlad.convert.pytorch import convert_pytorch

# The PyTorch proofs need torch (not a requirement): they skip without it, except in CI, which
# installs the CPU wheel and sets TF_NETVLAD_REQUIRE_TORCH=1 so a missing torch fails them.
REQUIRE_TORCH = "TF_NETVLAD_REQUIRE_TORCH"

EPS = 1e-12


# ----------------------------------------------------------------------------- MatConvNet


def _conv(type_name, name, rng, kh, kw, cin, cout, stride=1, pad=0):
    return {"type": type_name, "name": name,
            "weights": np.array([rng.normal(0, 0.3, (kh, kw, cin, cout)).astype("float32"),
                                 rng.normal(0, 0.1, (cout, 1)).astype("float32")], dtype=object),
            "stride": np.array([stride, stride], dtype="float64"), "pad": np.asarray(pad, dtype="float64"),
            "dilate": np.array([1.0, 1.0]), "opts": np.zeros((0, 0))}


def _normalize(name, param):
    return {"type": "normalize", "name": name, "param": np.asarray(param, dtype="float64"), "weights": np.zeros((0, 0))}


def _pool(name, size, stride, pad=0):
    return {"type": "pool", "name": name, "method": "max", "pool": np.array([size, size], dtype="float64"),
            "stride": np.array([stride, stride], dtype="float64"), "pad": np.asarray(pad, dtype="float64")}


def _relu(name):
    return {"type": "relu", "name": name, "leak": 0.0}


def _vlad_head(rng, dim, k, intra=True, wpca_dim=None):
    centres = rng.normal(0, 0.5, (dim, k)).astype("float32")
    assign = (8.0 * centres / np.linalg.norm(centres, axis=0)).astype("float32")
    head = [{"type": "custom", "name": "vlad:core", "K": float(k), "D": float(dim), "vladDim": float(k * dim),
             "weights": np.array([assign[None, None], -centres[None, None]], dtype=object),
             "momentum": np.ones(2), "learningRate": np.ones(2), "weightDecay": np.zeros(2), "precious": 0}]
    if intra:
        head.append(_normalize("vlad:intranorm", [2 * dim, 1e-12, 1, 0.5]))
    head.append({"type": "custom", "name": "postL2"})
    if wpca_dim:
        head.append({"type": "conv", "name": "WPCA",
                     "weights": np.array([rng.normal(0, 1, (1, 1, k * dim, wpca_dim)).astype("float32"),
                                          rng.normal(0, 0.1, (wpca_dim, 1)).astype("float32")], dtype=object),
                     "stride": np.array([1.0, 1.0]), "pad": np.zeros(4)})
        head.append({"type": "custom", "name": "finalL2"})
    return head


def vgg_like_layers(rng, dim=6, k=4, wpca_dim=5):
    """conv/relu/pool(→relu swapped)/conv5_3 without ReLU, preL2, v1 head (D != K)."""
    body = [_conv("conv", "conv1_1", rng, 3, 3, 3, 4, pad=1), _relu("relu1_1"),
            _conv("conv", "conv1_2", rng, 3, 3, 4, 5, pad=[1, 1, 1, 1]), _pool("pool1", 2, 2), _relu("relu1_2"),
            _conv("conv", "conv5_3", rng, 3, 3, 5, dim, pad=1), _normalize("preL2", [1024, 1e-12, 1, 0.5])]
    return body + _vlad_head(rng, dim, k, wpca_dim=wpca_dim)


def caffe_like_layers(rng, dim=7, k=3):
    """Asymmetric pads, stride 2, LRN, padded pool after ReLU, grouped conv; no intra, no WPCA."""
    body = [_conv("conv", "conv1", rng, 5, 5, 3, 6, stride=2, pad=[1, 2, 0, 1]), _relu("relu1"),
            _normalize("norm1", [5, 1.0, 0.05, 0.75]), _pool("pool1", 3, 2, pad=[0, 1, 0, 1]),
            _conv("conv", "conv2", rng, 3, 3, 3, 8, pad=1), _relu("relu2"),  # 2 groups of 3 -> 8
            _conv("conv", "conv5", rng, 3, 3, 8, dim, pad=1), _normalize("preL2", [1024, 1e-12, 1, 0.5])]
    return body + _vlad_head(rng, dim, k, intra=False)


def write_mat(path, layer_dicts, rng, **savemat_kwargs):
    layers = np.empty((1, len(layer_dicts)), dtype=object)
    for i, layer in enumerate(layer_dicts):
        layers[0, i] = layer
    average = rng.uniform(90, 130, (4, 5, 3)).astype("float32")
    net = {"layers": layers, "meta": {"normalization": {"averageImage": average, "imageSize": np.array([4.0, 5.0, 3.0])}}}
    scipy.io.savemat(path, {"net": net}, **savemat_kwargs)
    return path


# NumPy MatConvNet forward, images H×W×C (float64).
def _np_conv(x, kernel, bias, stride, pad):
    top, bottom, left, right = np.broadcast_to(np.asarray(pad, dtype=int).ravel(), (4,)) if np.size(pad) in (1, 4) else pad
    x = np.pad(x, ((top, bottom), (left, right), (0, 0)))
    kh, kw, cin_g, cout = kernel.shape
    groups = x.shape[2] // cin_g
    oh, ow = (x.shape[0] - kh) // stride + 1, (x.shape[1] - kw) // stride + 1
    out = np.empty((oh, ow, cout))
    per_group = cout // groups
    for i in range(oh):
        for j in range(ow):
            patch = x[i * stride:i * stride + kh, j * stride:j * stride + kw]
            for o in range(cout):
                g = o // per_group
                out[i, j, o] = np.sum(patch[:, :, g * cin_g:(g + 1) * cin_g] * kernel[:, :, :, o]) + bias[o]
    return out


def _np_pool(x, size, stride, pad):
    top, bottom, left, right = np.broadcast_to(np.asarray(pad, dtype=int).ravel(), (4,)) if np.size(pad) in (1, 4) else pad
    x = np.pad(x, ((top, bottom), (left, right), (0, 0)), constant_values=-np.inf)
    oh, ow = (x.shape[0] - size) // stride + 1, (x.shape[1] - size) // stride + 1
    return np.array([[x[i * stride:i * stride + size, j * stride:j * stride + size].max(axis=(0, 1))
                      for j in range(ow)] for i in range(oh)])


def _np_normalize(x, param):
    n, kappa, alpha, beta = param
    c = x.shape[-1]
    out = np.empty_like(x)
    for k in range(c):
        lo, hi = max(0, k - int((n - 1) // 2)), min(c - 1, k + int(np.ceil((n - 1) / 2)))
        out[..., k] = x[..., k] * (kappa + alpha * np.sum(x[..., lo:hi + 1] ** 2, axis=-1)) ** -beta
    return out


def matconvnet_forward(layer_dicts, average_rgb, image):
    """MATLAB semantics of the official network on one H×W×3 RGB 0..255 image."""
    x = image.astype("float64") - average_rgb
    vec = None
    for layer in layer_dicts:
        kind, name = layer["type"], layer["name"]
        if name == "vlad:core":
            assign, neg_c = (w[0, 0].astype("float64") for w in layer["weights"])
            feats = x.reshape(-1, x.shape[-1], order="F")  # column-major over H×W, as MATLAB
            logits = feats @ assign
            a = np.exp(logits - logits.max(1, keepdims=True))
            a /= a.sum(1, keepdims=True)
            x = np.stack([(a[:, [kk]] * (feats + neg_c[:, kk])).sum(0) for kk in range(assign.shape[1])])  # K×D
        elif name == "vlad:intranorm":
            x = x / np.sqrt(np.sum(x ** 2, axis=1, keepdims=True) + EPS)
        elif name == "postL2":
            vec = x.ravel(order="F")  # 1×K×D column-major: index k + K·d
            vec = vec / (np.linalg.norm(vec) + EPS)
        elif name == "WPCA":
            w, b = (a.astype("float64") for a in layer["weights"])
            vec = w[0, 0].T @ vec + b.ravel()
        elif name == "finalL2":
            vec = vec / (np.linalg.norm(vec) + EPS)
        elif kind == "conv":
            w, b = layer["weights"]
            x = _np_conv(x, w.astype("float64"), b.ravel(), int(layer["stride"][0]), layer["pad"])
        elif kind == "relu":
            x = np.maximum(x, 0)
        elif kind == "pool":
            x = _np_pool(x, int(layer["pool"][0]), int(layer["stride"][0]), layer["pad"])
        elif kind == "normalize":
            x = _np_normalize(x, layer["param"])
    return vec


def _by_name(layer_dicts, name):
    return next(layer for layer in layer_dicts if isinstance(layer, dict) and layer["name"] == name)


def _average_rgb(path):
    return scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["net"].meta.normalization.averageImage[0, 0]


@pytest.mark.parametrize("builder, size, expected_dim", [
    (vgg_like_layers, (13, 10), 5),     # WPCA -> P = 5
    (caffe_like_layers, (23, 19), 21),  # no WPCA -> K·D = 3·7
])
def test_matconvnet_matches_numpy_reference(tmp_path, rng, builder, size, expected_dim):
    layer_dicts = builder(rng)
    path = write_mat(str(tmp_path / "net.mat"), layer_dicts, rng)
    model = convert_matconvnet(path)
    assert model.descriptor_dim == expected_dim
    images = rng.uniform(0, 255, (3, *size, 3)).astype("float32")
    got = model.predict(images, verbose=0)
    avg = _average_rgb(path)
    want = np.stack([matconvnet_forward(layer_dicts, avg, im) for im in images])
    assert np.abs(want).max() > 0.05  # descriptor scale (unit norm)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_matconvnet_config_read_from_file(tmp_path, rng):
    layer_dicts = vgg_like_layers(rng)
    path = write_mat(str(tmp_path / "net.mat"), layer_dicts, rng)
    model = convert_matconvnet(path)
    assert (model.num_clusters, model.variant, model.pre_l2, model.intra_normalize) == (4, "v1", True, True)
    assert model.preprocessing.mean == tuple(float(v) for v in _average_rgb(path))
    assert model.preprocessing.std == (1.0, 1.0, 1.0) and model.preprocessing.scale == 1.0
    np.testing.assert_array_equal(model.netvlad.centroids.numpy(), -_by_name(layer_dicts, "vlad:core")["weights"][1][0, 0].T)
    # conv5_3 is the backbone output and has no ReLU: negative features survive.
    feats = model.local_features_model().predict(rng.uniform(0, 255, (1, 8, 8, 3)).astype("float32"), verbose=0)
    assert feats.shape[-1] == 6 and feats.min() < 0


def test_matconvnet_without_wpca_gives_kd_descriptor_in_matlab_order(tmp_path, rng):
    layer_dicts = vgg_like_layers(rng, wpca_dim=None)
    path = write_mat(str(tmp_path / "net.mat"), layer_dicts, rng)
    model = convert_matconvnet(path)
    assert model.whitening is None and model.descriptor_dim == 24
    image = rng.uniform(0, 255, (9, 11, 3)).astype("float32")
    want = matconvnet_forward(layer_dicts, _average_rgb(path), image)
    np.testing.assert_allclose(model.predict(image[None], verbose=0)[0], want, atol=1e-5)


def test_matconvnet_keras_and_savedmodel_round_trip(tmp_path, rng):
    import keras

    path = write_mat(str(tmp_path / "net.mat"), vgg_like_layers(rng), rng)
    out = str(tmp_path / "converted.keras")
    model = convert_matconvnet(path, out_path=out)
    images = rng.uniform(0, 255, (2, 12, 10, 3)).astype("float32")
    want = model.predict(images, verbose=0)
    reloaded = keras.saving.load_model(out)
    np.testing.assert_array_equal(reloaded.predict(images, verbose=0), want)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".converting-")]
    import tensorflow as tf

    from tf_netvlad.export import saved_model as export

    export.export_saved_model(reloaded, str(tmp_path / "served"), warmup=False)
    fn = tf.saved_model.load(str(tmp_path / "served" / "1")).signatures["serving_default"]
    np.testing.assert_allclose(fn(images=tf.constant(images))["descriptor"].numpy(), want, atol=1e-6)


# ----------------------------------------------------------------------------- bad MAT input


def _raises(match, path, exc=ValueError):
    with pytest.raises(exc, match=match):
        convert_matconvnet(path)


def test_matconvnet_rejects_v73_file(tmp_path):
    import h5py  # a test requirement (requirements-dev.txt)

    path = str(tmp_path / "v73.mat")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with h5py.File(path, "w", userblock_size=512) as f:
        f["net"] = np.zeros(3)
    with open(path, "r+b") as f:
        f.write(header.ljust(116) + b"\0" * 8 + b"\x00\x02" + b"IM")
    _raises(r"v7\.3.*net_class2struct", path)


def _element(dtype, data):
    return struct.pack("<II", dtype, len(data)) + data + b"\0" * (-len(data) % 8)


def _matrix(mclass, *parts, dims=(1, 1)):
    flags = _element(6, struct.pack("<II", mclass, 0))  # miUINT32 array flags
    dims = b"" if dims is None else _element(5, struct.pack(f"<{len(dims)}i", *dims))  # miINT32
    return _element(14, flags + dims + b"".join(parts))  # miMATRIX


def write_mcos_mat(path, classnames):
    """A MAT v5 file as MATLAB writes classdef objects: `net.layers` = cell of MCOS opaque objects."""
    text = lambda s: _element(1, s.encode())  # miINT8
    objects = [_matrix(17, text(""), text("MCOS"), text(name),  # mxOPAQUE: no dims
                       _matrix(13, text(""), _element(6, struct.pack("<I", i + 1))), dims=None)
               for i, name in enumerate(classnames)]
    cell = _matrix(1, text(""), *objects, dims=(1, len(objects)))
    net = _matrix(2, text("net"), _element(5, struct.pack("<i", 8)), _element(1, b"layers\0\0"), cell)
    header = b"MATLAB 5.0 MAT-file, written by tests".ljust(116) + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    with open(path, "wb") as f:
        f.write(header + net)
    return path


def test_matconvnet_rejects_class_objects(tmp_path):
    path = write_mcos_mat(str(tmp_path / "original.mat"), ["layerVLAD", "layerWholeL2Normalize"])
    assert isinstance(scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["net"].layers[0],
                      scipy.io.matlab.MatlabOpaque)
    _raises(r"net\.layers\{1\} is a MatlabOpaque.*classdef \(MCOS\).*net_class2struct", path)


def test_matconvnet_rejects_other_network(tmp_path, rng):
    layer_dicts = vgg_like_layers(rng)[:6] + [{"type": "softmax", "name": "prob"}]
    _raises(r"not a NetVLAD network.*'vlad:core'.*conv5_3", write_mat(str(tmp_path / "vgg.mat"), layer_dicts, rng))


def test_matconvnet_rejects_truncated_file(tmp_path, rng):
    path = write_mat(str(tmp_path / "net.mat"), vgg_like_layers(rng), rng, do_compression=False)
    data = open(path, "rb").read()
    cut = str(tmp_path / "cut.mat")
    open(cut, "wb").write(data[: len(data) // 2])
    _raises(r"truncated", cut)
    open(cut, "wb").write(b"")
    _raises(r"not a MATLAB \.mat file", cut)


def test_matconvnet_rejects_mismatched_shapes(tmp_path, rng):
    layer_dicts = vgg_like_layers(rng)  # D = 6
    core = _by_name(layer_dicts, "vlad:core")
    core["weights"] = np.array([w[:, :, :5] for w in core["weights"]], dtype=object)
    _raises(r"expected shape \(D, K\) = \(6, 4\).*Found shape \(5, 4\)", write_mat(str(tmp_path / "a.mat"), layer_dicts, rng))
    layer_dicts = vgg_like_layers(rng)
    wpca = _by_name(layer_dicts, "WPCA")
    wpca["weights"] = np.array([wpca["weights"][0][:, :, :20], wpca["weights"][1]], dtype=object)
    _raises(r"WPCA.*\(24, P\).*\(20, 5\)", write_mat(str(tmp_path / "b.mat"), layer_dicts, rng))
    layer_dicts = vgg_like_layers(rng)
    layer_dicts[2]["weights"][0] = layer_dicts[2]["weights"][0][:, :, :3]  # Cin 3 does not divide 4
    _raises(r"conv1_2.*Cin divides the 4 input channels.*\(3, 3, 3, 5\)", write_mat(str(tmp_path / "c.mat"), layer_dicts, rng))


def test_matconvnet_rejects_missing_file_and_bad_out_path(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="mat_path"):
        convert_matconvnet(str(tmp_path / "nope.mat"))
    path = write_mat(str(tmp_path / "net.mat"), vgg_like_layers(rng), rng)
    with pytest.raises(ValueError, match=r"out_path.*\.keras"):
        convert_matconvnet(path, out_path=str(tmp_path / "model.h5"))
    assert sorted(os.listdir(tmp_path)) == ["net.mat"]


# ----------------------------------------------------------------------------- PyTorch

VGG16_CHANNELS = (4, 4, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7)  # D = 7 at conv5_3
ALEXNET_SPEC = ((0, 11, 4, 2, 4), (3, 5, 1, 2, 6), (6, 3, 1, 1, 8), (8, 3, 1, 1, 8), (10, 3, 1, 1, 5))  # D = 5


def _vgg16_layout():
    """torchvision vgg16.features[:-2] as (index, kind, param) with conv params (out, kernel, stride, pad)."""
    layout, index, convs = [], 0, iter(VGG16_CHANNELS)
    for block, count in enumerate((2, 2, 3, 3, 3)):
        for _ in range(count):
            layout += [(index, "conv", (next(convs), 3, 1, 1)), (index + 1, "relu", None)]
            index += 2
        layout.append((index, "pool", (2, 2)))
        index += 1
    return layout[:-2]  # drop relu5_3 and pool5


def _alexnet_layout():
    layout = []
    for index, kernel, stride, pad, out in ALEXNET_SPEC:
        layout += [(index, "conv", (out, kernel, stride, pad)), (index + 1, "relu", None)]
        if index in (0, 3):
            layout.append((index + 2, "pool", (3, 2)))
    return layout[:-1]  # drop relu5


def torch_state_dict(torch, rng, layout, k, vladv2=False, wpca_dim=None, prefix="encoder."):
    state, cin = {}, 3
    for index, kind, param in layout:
        if kind == "conv":
            out, kernel = param[:2]
            state[f"{prefix}{index}.weight"] = torch.tensor(rng.normal(0, 0.3, (out, cin, kernel, kernel)), dtype=torch.float32)
            state[f"{prefix}{index}.bias"] = torch.tensor(rng.normal(0, 0.1, out), dtype=torch.float32)
            cin = out
    centroids = rng.normal(0, 0.3, (k, cin))
    state["pool.conv.weight"] = torch.tensor(5 * centroids[:, :, None, None], dtype=torch.float32)
    state["pool.centroids"] = torch.tensor(centroids, dtype=torch.float32)
    if vladv2:
        state["pool.conv.bias"] = torch.tensor(rng.normal(0, 1, k), dtype=torch.float32)
    if wpca_dim:  # Patch-NetVLAD add_pca.py stores float64 weights
        state["WPCA.0.weight"] = torch.tensor(rng.normal(0, 1, (wpca_dim, k * cin, 1, 1)))
        state["WPCA.0.bias"] = torch.tensor(rng.normal(0, 0.1, wpca_dim))
    return state


def torch_forward(torch, state, layout, images):
    """pytorch-NetVlad / Patch-NetVLAD forward (ToTensor + ImageNet Normalize, encoder, pool, WPCA)."""
    F = torch.nn.functional
    x = torch.tensor(images).permute(0, 3, 1, 2) / 255.0
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for index, kind, param in layout:
        if kind == "conv":
            x = F.conv2d(x, state[f"encoder.{index}.weight"], state[f"encoder.{index}.bias"], stride=param[2], padding=param[3])
        elif kind == "relu":
            x = F.relu(x)
        else:
            x = F.max_pool2d(x, param[0], param[1])
    n, c = x.shape[:2]
    k = state["pool.centroids"].shape[0]
    x = F.normalize(x, p=2, dim=1)
    soft_assign = F.softmax(F.conv2d(x, state["pool.conv.weight"], state.get("pool.conv.bias")).view(n, k, -1), dim=1)
    x_flat = x.view(n, c, -1)
    vlad = torch.zeros(n, k, c)
    for j in range(k):  # the reference's per-cluster loop
        residual = x_flat - state["pool.centroids"][j].view(1, c, 1)
        vlad[:, j] = (residual * soft_assign[:, j:j + 1]).sum(-1)
    vlad = F.normalize(F.normalize(vlad, p=2, dim=2).view(n, -1), p=2, dim=1)
    if "WPCA.0.weight" in state:
        w = state["WPCA.0.weight"].float()
        vlad = F.normalize(F.conv2d(vlad[:, :, None, None], w, state["WPCA.0.bias"].float()).view(n, -1), p=2, dim=-1)
    return vlad.numpy()


def _save_pt_checkpoint(torch, path, state, patch_netvlad=False):
    if patch_netvlad:  # add_pca.py
        payload = {"num_pcs": int(state["WPCA.0.bias"].shape[0]), "state_dict": state}
    else:  # pytorch-NetVlad main.py save_checkpoint
        payload = {"epoch": 3, "state_dict": state, "recalls": {1: np.float64(0.8), 5: np.float64(0.9)},
                   "best_score": np.float64(0.9), "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
                   "parallel": False}
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("arch, k, vladv2, wpca_dim, size", [
    ("vgg16", 3, False, None, (37, 45)),   # pytorch-NetVlad v1, 21-D
    ("vgg16", 4, False, 6, (33, 40)),      # Patch-NetVLAD *_WPCA6
    ("vgg16", 3, True, None, (32, 32)),    # --vladv2 (pool.conv.bias)
    ("alexnet", 4, False, None, (67, 75)),
])
def test_pytorch_matches_torch_forward(tmp_path, rng, arch, k, vladv2, wpca_dim, size):
    torch = import_optional("torch", REQUIRE_TORCH)
    layout = _vgg16_layout() if arch == "vgg16" else _alexnet_layout()
    state = torch_state_dict(torch, rng, layout, k, vladv2=vladv2, wpca_dim=wpca_dim)
    path = _save_pt_checkpoint(torch, str(tmp_path / "checkpoint.pth.tar"), state, patch_netvlad=bool(wpca_dim))
    model = convert_pytorch(path)
    assert (model.backbone_name, model.variant, model.num_clusters) == (arch, "v2" if vladv2 else "v1", k)
    images = rng.uniform(0, 255, (2, *size, 3)).astype("float32")
    want = torch_forward(torch, state, layout, images)
    got = model.predict(images, verbose=0)
    if wpca_dim is None:  # theirs k·D + d, ours d·K + k: the same numbers, permuted
        dim = want.shape[1] // k
        want = want.reshape(-1, k, dim).transpose(0, 2, 1).reshape(len(images), -1)
    assert got.shape == want.shape and np.abs(want).max() > 0.05
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_pytorch_dataparallel_keys_and_keras_round_trip(tmp_path, rng):
    torch = import_optional("torch", REQUIRE_TORCH)
    import keras

    layout = _vgg16_layout()
    state = torch_state_dict(torch, rng, layout, 3, prefix="encoder.module.")
    state = {k.replace("pool.", "pool.module."): v for k, v in state.items()}
    path = _save_pt_checkpoint(torch, str(tmp_path / "dp.pth.tar"), state)
    out = str(tmp_path / "dp.keras")
    model = convert_pytorch(path, out_path=out, arch="vgg16")
    images = rng.uniform(0, 255, (1, 32, 36, 3)).astype("float32")
    clean = {k.replace(".module.", "."): v for k, v in state.items()}
    want = torch_forward(torch, clean, layout, images).reshape(1, 3, 7).transpose(0, 2, 1).reshape(1, -1)
    got = model.predict(images, verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(keras.saving.load_model(out).predict(images, verbose=0), got)


def test_pytorch_bad_checkpoints(tmp_path, rng):
    torch = import_optional("torch", REQUIRE_TORCH)
    layout = _vgg16_layout()
    state = torch_state_dict(torch, rng, layout, 3)

    def convert(name, st, **kwargs):
        return convert_pytorch(_save_pt_checkpoint(torch, str(tmp_path / name), st), **kwargs)

    with pytest.raises(ValueError, match=r"missing key 'pool.centroids' \(expected shape \(3, 7\)\)"):
        convert("a.pth.tar", {k: v for k, v in state.items() if k != "pool.centroids"})
    bad = dict(state, **{"pool.centroids": state["pool.centroids"][:, :6]})
    with pytest.raises(ValueError, match=r"'pool.centroids' must be \(3, 7\)\. Found \(3, 6\)"):
        convert("b.pth.tar", bad)
    bad = dict(state, **{"encoder.5.weight": state["encoder.5.weight"][:, :3]})
    with pytest.raises(ValueError, match=r"'encoder.5.weight' must be \(Cout, 4, 3, 3\)\. Found shape \(5, 3, 3, 3\)"):
        convert("c.pth.tar", bad)
    with pytest.raises(ValueError, match=r"encoder conv indices .* do not match alexnet \[0, 3, 6, 8, 10\]"):
        convert("d.pth.tar", state, arch="alexnet")
    with pytest.raises(ValueError, match=r"expected a pytorch-NetVlad checkpoint.*Found: \['model_state_dict'\]"):
        convert_pytorch(_save_raw(torch, tmp_path / "e.pth", {"model_state_dict": {"backbone.0.weight": torch.zeros(1)}}))
    path = _save_pt_checkpoint(torch, str(tmp_path / "f.pth.tar"), state)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"Could not read `checkpoint_path`.*truncated"):
        convert_pytorch(path)
    with pytest.raises(FileNotFoundError, match="checkpoint_path"):
        convert_pytorch(str(tmp_path / "missing.pth.tar"))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".keras")]


def _save_raw(torch, path, payload):
    torch.save(payload, str(path))
    return str(path)


def test_pytorch_missing_torch_names_the_install(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    path = tmp_path / "x.pth.tar"
    path.write_bytes(b"\0")
    with pytest.raises(ImportError, match=r"pip install torch"):
        convert_pytorch(str(path))


def test_matconvnet_lrn_model_keras_round_trip(tmp_path, rng):
    import keras

    path = write_mat(str(tmp_path / "caffe.mat"), caffe_like_layers(rng), rng)
    out = str(tmp_path / "caffe.keras")
    model = convert_matconvnet(path, out_path=out)
    images = rng.uniform(0, 255, (2, 21, 18, 3)).astype("float32")
    reloaded = keras.saving.load_model(out)
    assert reloaded.backbone.get_layer("norm1").get_config()["alpha"] == 0.05
    np.testing.assert_array_equal(reloaded.predict(images, verbose=0), model.predict(images, verbose=0))
