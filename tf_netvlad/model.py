"""NetVLADModel: images -> preprocessing -> backbone -> NetVLAD -> (whitening) -> descriptor."""

import os

import keras

from tf_netvlad import backbones as backbones_lib
from tf_netvlad.netvlad import NetVLAD
from tf_netvlad.preprocessing import ImagePreprocessing
from tf_netvlad.whitening import PCAWhitening


def _as_preprocessing(preprocessing):
    if isinstance(preprocessing, ImagePreprocessing):
        return preprocessing
    if isinstance(preprocessing, str):
        return ImagePreprocessing.from_preset(preprocessing, name="preprocessing")
    if isinstance(preprocessing, dict):
        return keras.layers.deserialize(preprocessing)
    raise ValueError(
        "`preprocessing` must be an ImagePreprocessing layer, a preset name or a serialized "
        f"layer. Received: {preprocessing!r}"
    )


@keras.saving.register_keras_serializable(package="tf_netvlad")
class NetVLADModel(keras.Model):
    """A NetVLAD place-recognition model: float32 RGB images (0..255) in, descriptors out.

    A Functional model built in `__init__`: `ImagePreprocessing` -> backbone -> `NetVLAD` ->
    optional `PCAWhitening`. The NetVLAD and whitening layers always compute in float32, also
    under a mixed-precision policy, so descriptors stay float32.

    Args:
        backbone: a `keras.Model` mapping preprocessed images to `(batch, h, w, D)`, e.g. from
            `tf_netvlad.build_backbone`.
        preprocessing: `ImagePreprocessing` layer or preset name ("caffe", "torch", "tf", "raw").
        num_clusters: K of the NetVLAD layer.
        variant: "v1" (official models) or "v2" (paper), see `NetVLAD`.
        pre_l2: L2-normalise local features before pooling.
        intra_normalize: intra-normalisation of the NetVLAD layer.
        whitening_dim: None, or the output size of an appended `PCAWhitening` layer.
        margin: the ranking-loss margin m used by training (0.1 as in the paper).
        backbone_name: a label recorded in the config (e.g. "vgg16").

    Call arguments:
        images: float32 `(batch, height, width, 3)`, RGB in 0..255, any height and width.

    Returns:
        float32 `(batch, descriptor_dim)` with unit L2 norm.
    """

    def __init__(self, backbone, preprocessing="raw", num_clusters=64, variant="v1", pre_l2=True,
                 intra_normalize=True, whitening_dim=None, margin=0.1, backbone_name=None, **kwargs):
        if not isinstance(backbone, keras.Model):
            raise ValueError(f"`backbone` must be a keras.Model. Received: {type(backbone).__name__}")
        if len(backbone.output_shape) != 4:
            raise ValueError(
                "`backbone` must output a local feature map (batch, h, w, D). "
                f"Received output shape {backbone.output_shape}"
            )
        preprocessing_layer = _as_preprocessing(preprocessing)
        # === Functional Model ===
        images = keras.Input(shape=(None, None, 3), name="images", dtype="float32")
        features = backbone(preprocessing_layer(images))
        netvlad = NetVLAD(num_clusters, variant=variant, pre_l2=pre_l2,
                          intra_normalize=intra_normalize, dtype="float32", name="netvlad")
        descriptor = netvlad(features)
        if whitening_dim is not None:
            descriptor = PCAWhitening(whitening_dim, dtype="float32", name="whitening")(descriptor)
        super().__init__(inputs=images, outputs=descriptor, **kwargs)
        # === Config ===
        self.backbone = backbone
        self.preprocessing = preprocessing_layer
        self.num_clusters = int(num_clusters)
        self.variant = variant
        self.pre_l2 = bool(pre_l2)
        self.intra_normalize = bool(intra_normalize)
        self.whitening_dim = None if whitening_dim is None else int(whitening_dim)
        self.margin = float(margin)
        self.backbone_name = backbone_name or backbone.name

    @property
    def netvlad(self):
        return self.get_layer("netvlad")

    @property
    def whitening(self):
        return self.get_layer("whitening") if self.whitening_dim is not None else None

    @property
    def descriptor_dim(self):
        return int(self.output_shape[-1])

    def local_features_model(self):
        """A model from images to the backbone's local features (before NetVLAD's preL2)."""
        return keras.Model(self.input, self.netvlad.input, name=f"{self.name}_local_features")

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.layers.serialize(self.backbone),
            "preprocessing": keras.layers.serialize(self.preprocessing),
            "num_clusters": self.num_clusters,
            "variant": self.variant,
            "pre_l2": self.pre_l2,
            "intra_normalize": self.intra_normalize,
            "whitening_dim": self.whitening_dim,
            "margin": self.margin,
            "backbone_name": self.backbone_name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"], custom_objects=custom_objects)
        config["preprocessing"] = keras.layers.deserialize(config["preprocessing"], custom_objects=custom_objects)
        return cls(**config)


def build_model(backbone="tiny", weights=None, trainable_from="default", preprocessing=None,
                num_clusters=64, variant="v1", pre_l2=True, intra_normalize=True,
                whitening_dim=None, margin=0.1, name=None):
    """Builds a `NetVLADModel` from keyword arguments.

    `backbone` is a name from `tf_netvlad.BACKBONES` (or a ready `keras.Model`); `weights` is
    None, "imagenet" or a weights file (see `build_backbone`); `preprocessing` defaults to what
    the backbone's ImageNet weights expect. The NetVLAD layer still needs its k-means
    initialisation (`tf_netvlad.initialize_netvlad`).
    """
    if isinstance(backbone, keras.Model):
        net, backbone_name = backbone, backbone.name
        preprocessing = preprocessing or "raw"
    else:
        net = backbones_lib.build_backbone(backbone, weights=weights, trainable_from=trainable_from)
        backbone_name = backbone
        preprocessing = preprocessing or backbones_lib.default_preprocessing(backbone)
    return NetVLADModel(
        net,
        preprocessing=preprocessing,
        num_clusters=num_clusters,
        variant=variant,
        pre_l2=pre_l2,
        intra_normalize=intra_normalize,
        whitening_dim=whitening_dim,
        margin=margin,
        backbone_name=backbone_name,
        name=name or f"{backbone_name}_netvlad{num_clusters}",
    )


def with_whitening(model, kernel, bias, num_components=None):
    """A copy of `model` with a `PCAWhitening` layer set from `fit_pca_whitening` output.

    `num_components` (default: all columns of `kernel`) keeps the first outputs only, which is
    the reference's dimensionality reduction (`cropToDim`). An existing whitening is replaced.
    """
    num_components = int(num_components or kernel.shape[1])
    config = dict(model.get_config(), whitening_dim=num_components)
    new = NetVLADModel.from_config(config)
    new.backbone.set_weights(model.backbone.get_weights())
    new.netvlad.set_weights(model.netvlad.get_weights())
    new.whitening.set_whitening(kernel, bias)
    return new


def load_model(path, compile=True):
    """Loads a tf_netvlad `.keras` model; clear errors for a missing file or a foreign model."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Model file not found: {path}")
    if not path.endswith(".keras"):
        raise ValueError(f"Expected a `.keras` model file. Received: {path}")
    try:
        model = keras.saving.load_model(path, compile=compile)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} is not a loadable tf_netvlad model: {err}") from err
    if not isinstance(model, NetVLADModel):
        raise ValueError(
            f"{path} holds a {type(model).__name__}, not a tf_netvlad NetVLADModel. "
            "Build one with `tf_netvlad init` or `tf_netvlad.build_model`."
        )
    return model
