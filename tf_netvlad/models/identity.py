"""Which stored descriptors a model's descriptors can be compared with.

A descriptor database (a retrieval index, an evaluation cache) is only meaningful for the model
that filled it. `model_fingerprint` identifies a model by a SHA-256 of its architecture (its
Keras config with layer names removed, the shapes of all weights, the descriptor dim) and a
SHA-256 of its weight values; `check_compatible` refuses another model with an error that says
what differs. `warn_if_not_training_size` says when a model is used at another image size than
the one it records having been trained at (not part of its identity: the weights are the same).

Importing this module does not import TensorFlow; `load_descriptor_model` does.
"""

import hashlib
import json
import logging

import numpy as np

from tf_netvlad.data.image_size import format_image_size, parse_image_size

logger = logging.getLogger(__name__)

# Config keys that differ between processes for the same model (auto-numbered layer names), or
# that describe it without changing its descriptors (the size it was trained at).
_NAME_KEYS = ("name", "keras_history", "backbone_name", "trainable", "training_image_size")


class ModelMismatchError(ValueError):
    """A model's descriptors are not comparable with those stored in an index."""


def load_descriptor_model(model_or_path):
    """Returns `(model, label)`: `label` is the `.keras` path, or the model's name for a model."""
    from tf_netvlad.models.model_files import resolve_model

    model, path = resolve_model(model_or_path, any_keras_model=True)
    return model, path or f"model {model.name!r}"


def descriptor_dim(model):
    """The model's descriptor dim (`descriptor_dim` attribute, else the last output axis)."""
    dim = getattr(model, "descriptor_dim", None)
    if dim is None:
        shape = model.output_shape
        dim = shape[-1] if isinstance(shape, tuple) else None
    if not isinstance(dim, int):
        raise ValueError(f"Cannot tell the descriptor dim of {model.name!r}: output {dim!r}.")
    return int(dim)


def _strip_names(value):
    if isinstance(value, dict):
        return {k: _strip_names(v) for k, v in value.items() if k not in _NAME_KEYS}
    if isinstance(value, (list, tuple)):
        return [_strip_names(v) for v in value]
    return value


def warn_if_not_training_size(model, image_size, use):
    """Logs one warning when `model` records the size it was trained at
    (`NetVLADModel.training_image_size`, set by `train`) and `use` ("is evaluated", ...) reads the
    images at another parsed `image_size`: its descriptors then come from a resolution it never saw.
    """
    trained = getattr(model, "training_image_size", None)
    if trained is not None and parse_image_size(trained) != image_size:
        logger.warning("%s was trained on %s images and %s with image_size %s; pass --image-size %s "
                       "(image_size=%r) to use it at its training size.", model.name, trained, use,
                       format_image_size(image_size), trained, trained)


def model_fingerprint(model):
    """Identity of a descriptor model: which stored descriptors its own can be compared with.

    Returns:
        dict with `fingerprint` (SHA-256 of the config without layer names, the weight shapes and
        the descriptor dim), `weights_sha256` (SHA-256 of all weight values), `descriptor_dim`
        and `name` (informational only).
    """
    dim = descriptor_dim(model)
    try:
        config = _strip_names(model.get_config())
    except (NotImplementedError, TypeError):
        config = type(model).__name__
    weights = model.get_weights()
    architecture = json.dumps(
        {"config": config, "weight_shapes": [list(w.shape) for w in weights],
         "descriptor_dim": dim},
        sort_keys=True, default=str,
    )
    digest = hashlib.sha256()
    for weight in weights:
        digest.update(np.ascontiguousarray(weight).tobytes())
    return {
        "fingerprint": hashlib.sha256(architecture.encode()).hexdigest(),
        "weights_sha256": digest.hexdigest(),
        "descriptor_dim": dim,
        "name": str(model.name),
    }


def check_compatible(model, stored, where, label=None):
    """Raises `ModelMismatchError` unless `model` matches the `stored` fingerprint dict.

    Args:
        model: the `keras.Model` offered.
        stored: a `model_fingerprint` dict saved with the descriptors (may carry `source`).
        where: what holds the stored descriptors, for the message (e.g. "Index 'pitts_index'").
        label: how to name `model` in the message (default: its name).
    """
    found = model_fingerprint(model)
    label = label or f"model {found['name']!r}"
    where = f"{where} was built with {stored.get('source')} (model name {stored.get('name')!r})"
    if found["descriptor_dim"] != stored["descriptor_dim"]:
        raise ModelMismatchError(
            f"{where}, which gives {stored['descriptor_dim']}-D descriptors, but {label} gives "
            f"{found['descriptor_dim']}-D descriptors. Use the index's model or build a new "
            "index with this one."
        )
    if found["fingerprint"] != stored["fingerprint"]:
        raise ModelMismatchError(
            f"{where}; {label} has a different architecture (fingerprint "
            f"{found['fingerprint'][:12]} vs {stored['fingerprint'][:12]}). Its descriptors "
            "are not comparable: use the index's model or build a new index."
        )
    if found["weights_sha256"] != stored["weights_sha256"]:
        raise ModelMismatchError(
            f"{where}; {label} has the same architecture but different weights (retrained, "
            "re-initialised or re-whitened?). Its descriptors are not comparable: use the "
            "index's model or build a new index with this one."
        )
