"""pytorch-NetVlad and Patch-NetVLAD checkpoints (`.pth.tar`) -> `NetVLADModel`.

Key names (Nanne/pytorch-NetVlad `main.py`, QVPR/Patch-NetVLAD `models_generic.py`/`add_pca.py`):
`state_dict` with `encoder.<i>.weight|bias` (torchvision `vgg16.features` / `alexnet.features`
indices, cut before the last ReLU), `pool.conv.weight` (K, D, 1, 1), `pool.conv.bias` (K,)
only for vladv2, `pool.centroids` (K, D) and, for Patch-NetVLAD `*_WPCA<P>.pth.tar`,
`WPCA.0.weight` (P, K·D, 1, 1) and `WPCA.0.bias` (P,). `nn.DataParallel` adds `.module.`
after `encoder`/`pool`; it is stripped. torch is needed for this path only.
"""

import os
import re

import numpy as np

from tf_netvlad.convert.common import check_input_file, check_out_path
from tf_netvlad.models.model_files import save_model

# torchvision `features` indices of the convolutions kept by `features[:-2]`.
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_BLOCKS = (2, 2, 3, 3, 3)
# (index, Keras name, kernel, stride, pad, max-pool 3/2 after the ReLU)
ALEXNET_CONVS = ((0, "conv1", 11, 4, 2, True), (3, "conv2", 5, 1, 2, True), (6, "conv3", 3, 1, 1, False),
                 (8, "conv4", 3, 1, 1, False), (10, "conv5", 3, 1, 1, False))
ARCHS = ("vgg16", "alexnet")


def _import_torch():
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            "Converting PyTorch checkpoints needs PyTorch, an optional dependency of tf_netvlad: "
            "`pip install torch` (the CPU wheel is enough)."
        ) from err
    return torch


def _load_checkpoint(path, weights_only):
    torch = _import_torch()
    safe = [np.dtype, type(np.dtype("float64")), type(np.dtype("float32"))]
    try:
        safe.append(np._core.multiarray.scalar)
    except AttributeError:  # numpy < 2
        safe.append(np.core.multiarray.scalar)
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:
        hint = ""
        if weights_only and "weights_only" in str(err):
            hint = (" The checkpoint holds Python objects beyond tensors; if you trust its source, "
                    "convert with weights_only=False (CLI: --unsafe-load).")
        raise ValueError(
            f"Could not read `checkpoint_path` {path} as a PyTorch checkpoint: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}.{hint} "
            "A truncated download also ends here; compare the file size with the published one."
        ) from err


def _state_dict(checkpoint, path):
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not any(str(k).startswith("pool.") for k in state):
        found = sorted(checkpoint)[:20] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"`checkpoint_path` {path}: expected a pytorch-NetVlad checkpoint, a dict with "
            "'state_dict' holding 'encoder.*', 'pool.conv.weight' and 'pool.centroids'. "
            f"Found: {found}"
        )
    clean = {}
    for key, value in state.items():
        key = re.sub(r"^module\.", "", str(key)).replace(".module.", ".")
        clean[key] = value.detach().cpu().numpy().astype("float32") if hasattr(value, "detach") else value
    return clean


def _get(state, key, path, shape_hint):
    if key not in state:
        near = sorted(k for k in state if k.split(".")[0] == key.split(".")[0])[:12]
        raise ValueError(
            f"`checkpoint_path` {path}: missing key {key!r} (expected shape {shape_hint}). "
            f"Keys found with that prefix: {near}"
        )
    return np.asarray(state[key])


def _detect_arch(state, arch, path):
    indices = sorted({int(m.group(1)) for k in state for m in [re.match(r"encoder\.(\d+)\.weight$", k)] if m})
    detected = {tuple(VGG16_CONVS): "vgg16", tuple(c[0] for c in ALEXNET_CONVS): "alexnet"}.get(tuple(indices))
    if arch is not None and arch not in ARCHS:
        raise ValueError(f"`arch` must be one of {ARCHS} or None. Received: arch={arch!r}")
    if detected is None or (arch is not None and arch != detected):
        expected = {"vgg16": list(VGG16_CONVS), "alexnet": [c[0] for c in ALEXNET_CONVS]}
        wanted = expected if arch is None else {arch: expected[arch]}
        raise ValueError(
            f"`checkpoint_path` {path}: encoder conv indices {indices} do not match "
            f"{' or '.join(f'{a} {v}' for a, v in wanted.items())} (torchvision features[:-2])."
        )
    return detected


def _conv_weights(state, index, in_channels, kernel_size, path):
    w = _get(state, f"encoder.{index}.weight", path, f"(Cout, {in_channels}, {kernel_size}, {kernel_size})")
    if w.ndim != 4 or w.shape[1] != in_channels or w.shape[2:] != (kernel_size, kernel_size):
        raise ValueError(
            f"`checkpoint_path` {path}: 'encoder.{index}.weight' must be (Cout, {in_channels}, "
            f"{kernel_size}, {kernel_size}). Found shape {w.shape}"
        )
    b = _get(state, f"encoder.{index}.bias", path, f"({w.shape[0]},)")
    if b.shape != (w.shape[0],):
        raise ValueError(f"`checkpoint_path` {path}: 'encoder.{index}.bias' must be ({w.shape[0]},). Found {b.shape}")
    return w.transpose(2, 3, 1, 0), b  # OIHW -> HWIO


def _vgg16_backbone(state, path):
    import keras
    from keras import layers

    x = inputs = keras.Input(shape=(None, None, 3), name="backbone_input")
    channels, convs, weights = 3, iter(VGG16_CONVS), []
    for block, count in enumerate(VGG16_BLOCKS, start=1):
        for i in range(1, count + 1):
            kernel, bias = _conv_weights(state, next(convs), channels, 3, path)
            last = block == 5 and i == count  # conv5_3: no ReLU
            conv = layers.Conv2D(kernel.shape[3], 3, padding="same", activation=None if last else "relu",
                                 name=f"block{block}_conv{i}")
            x = conv(x)
            weights.append((conv, kernel, bias))
            channels = kernel.shape[3]
        if block < 5:
            x = layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="vgg16"), weights, channels


def _alexnet_backbone(state, path):
    import keras
    from keras import layers

    x = inputs = keras.Input(shape=(None, None, 3), name="backbone_input")
    channels, weights = 3, []
    for index, name, size, stride, pad, pool in ALEXNET_CONVS:
        kernel, bias = _conv_weights(state, index, channels, size, path)
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        conv = layers.Conv2D(kernel.shape[3], size, strides=stride, name=name)
        x = conv(x)
        weights.append((conv, kernel, bias))
        channels = kernel.shape[3]
        if name != "conv5":
            x = layers.ReLU(name=f"{name}_relu")(x)
        if pool:
            x = layers.MaxPooling2D(3, strides=2, name=f"{name}_pool")(x)
    return keras.Model(inputs, x, name="alexnet"), weights, channels


def _pool_weights(state, dim, path):
    conv = _get(state, "pool.conv.weight", path, f"(K, {dim}, 1, 1)")
    if conv.ndim == 4 and conv.shape[2:] == (1, 1):
        conv = conv[:, :, 0, 0]
    k = conv.shape[0]
    if conv.ndim != 2 or conv.shape[1] != dim:
        raise ValueError(
            f"`checkpoint_path` {path}: 'pool.conv.weight' must be (K, D, 1, 1) with D = {dim} "
            f"(the encoder's last conv). Found shape {conv.shape}"
        )
    centroids = _get(state, "pool.centroids", path, f"({k}, {dim})")
    if centroids.shape != (k, dim):
        raise ValueError(f"`checkpoint_path` {path}: 'pool.centroids' must be ({k}, {dim}). Found {centroids.shape}")
    bias = state.get("pool.conv.bias")
    if bias is not None and np.shape(bias) != (k,):
        raise ValueError(f"`checkpoint_path` {path}: 'pool.conv.bias' must be ({k},). Found {np.shape(bias)}")
    return conv.T, centroids, bias, k


def _wpca_weights(state, k, dim, path):
    """Patch-NetVLAD WPCA (1×1 conv on the k·D + d vector) as a kernel for our d·K + k order."""
    if "WPCA.0.weight" not in state:
        return None
    w = np.asarray(state["WPCA.0.weight"])
    w = w.reshape(w.shape[:2]) if w.ndim == 4 and w.shape[2:] == (1, 1) else w
    if w.ndim != 2 or w.shape[1] != k * dim:
        raise ValueError(
            f"`checkpoint_path` {path}: 'WPCA.0.weight' must be (P, K*D, 1, 1) with K*D = {k * dim}. "
            f"Found shape {np.shape(state['WPCA.0.weight'])}"
        )
    bias = _get(state, "WPCA.0.bias", path, f"({w.shape[0]},)")
    if bias.shape != (w.shape[0],):
        raise ValueError(f"`checkpoint_path` {path}: 'WPCA.0.bias' must be ({w.shape[0]},). Found {bias.shape}")
    # kernel[d*K + k, p] = w[p, k*D + d]
    kernel = w.reshape(-1, k, dim).transpose(2, 1, 0).reshape(k * dim, -1)
    return kernel.astype("float32"), bias.astype("float32")


def convert_pytorch(checkpoint_path, out_path=None, arch=None, weights_only=True):
    """Converts a pytorch-NetVlad or Patch-NetVLAD checkpoint to a `NetVLADModel`.

    The encoder (VGG16 cut at conv5_3 or AlexNet cut at conv5, both before the ReLU, channel
    counts read from the checkpoint) gets its conv weights transposed OIHW -> HWIO. The NetVLAD
    layer is v1, or v2 when the checkpoint has `pool.conv.bias`; preL2 and intra-normalisation
    are on as in those codebases. Their descriptor is flattened k·D + d; ours is d·K + k, so the
    32k-D output is the same vector permuted, and a Patch-NetVLAD WPCA layer is permuted to
    match, giving identical whitened descriptors. Preprocessing is the torchvision one
    (0..1, ImageNet mean/std), applied inside the model to RGB 0..255 input.

    Args:
        checkpoint_path: `.pth.tar` file (a dict with `state_dict`, or a bare state dict).
        out_path: optional `.keras` path to save the model to.
        arch: "vgg16", "alexnet" or None to detect from the encoder keys.
        weights_only: load with `torch.load(weights_only=True)` (no arbitrary code); set False
            only for a checkpoint you trust that holds other Python objects.

    Returns:
        `NetVLADModel`.
    """
    from tf_netvlad.layers.preprocessing import ImagePreprocessing
    from tf_netvlad.models.model import NetVLADModel

    checkpoint_path = check_input_file(checkpoint_path, "checkpoint_path")
    out_path = check_out_path(out_path)
    state = _state_dict(_load_checkpoint(checkpoint_path, weights_only), checkpoint_path)
    arch = _detect_arch(state, arch, checkpoint_path)
    build = _vgg16_backbone if arch == "vgg16" else _alexnet_backbone
    backbone, conv_weights, dim = build(state, checkpoint_path)
    kernel, centroids, bias, k = _pool_weights(state, dim, checkpoint_path)
    wpca = _wpca_weights(state, k, dim, checkpoint_path)
    for conv, w, b in conv_weights:
        conv.set_weights([w, b])
    stem = os.path.basename(checkpoint_path).split(".")[0]
    model = NetVLADModel(
        backbone,
        preprocessing=ImagePreprocessing.from_preset("torch", name="preprocessing"),
        num_clusters=k,
        variant="v1" if bias is None else "v2",
        pre_l2=True,
        intra_normalize=True,
        whitening_dim=None if wpca is None else wpca[0].shape[1],
        backbone_name=arch,
        name="".join(c if c.isalnum() or c in "_-" else "_" for c in stem) or "converted",
    )
    model.netvlad.assignment_kernel.assign(kernel)
    model.netvlad.centroids.assign(centroids)
    if bias is not None:
        model.netvlad.assignment_bias.assign(np.asarray(bias, dtype="float32"))
    if wpca is not None:
        model.whitening.set_whitening(*wpca)
    if out_path is not None:
        save_model(model, out_path)
    return model
