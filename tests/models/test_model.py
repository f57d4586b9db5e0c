"""NetVLADModel, backbones and preprocessing: structure, round trips, bad input."""

import json

import keras
import numpy as np
import pytest

from tests.layer_checks import check_keras_class
from tf_netvlad.layers.preprocessing import ImagePreprocessing
from tf_netvlad.layers.whitening import fit_pca_whitening
from tf_netvlad.models import backbones
from tf_netvlad.models.model import NetVLADModel, build_model, with_whitening
from tf_netvlad.models.model_files import load_model


@pytest.fixture
def images():
    return (np.random.default_rng(0).random((2, 40, 56, 3)) * 255).astype("float32")


def test_keras_roundtrip_is_exact_with_whitening(tmp_path, images):
    model = build_model("tiny", num_clusters=4, variant="v2")
    desc = model.predict(np.concatenate([images] * 4), verbose=0)
    kernel, bias = fit_pca_whitening(desc, 6)
    model = with_whitening(model, kernel, bias, num_components=5)
    out = model(images).numpy()
    assert out.shape == (2, 5)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = load_model(path)
    assert isinstance(loaded, NetVLADModel)
    np.testing.assert_array_equal(loaded(images).numpy(), out)
    config, loaded_config = model.get_config(), loaded.get_config()
    for key in ("num_clusters", "variant", "pre_l2", "whitening_dim", "margin", "backbone_name"):
        assert loaded_config[key] == config[key]
    as_json = lambda c: json.loads(json.dumps(c))  # noqa: E731  (tuples become lists)
    assert as_json(loaded_config["backbone"]["config"]["layers"]) == as_json(config["backbone"]["config"]["layers"])
    assert loaded_config["preprocessing"]["config"] == config["preprocessing"]["config"]
    assert json.loads(json.dumps(loaded.get_config()))["whitening_dim"] == 5
    # other image size than before, and trainable flags survive
    other = (np.random.default_rng(1).random((1, 33, 47, 3)) * 255).astype("float32")
    np.testing.assert_allclose(loaded(other).numpy(), model(other).numpy(), atol=1e-6)


def test_training_image_size_is_saved_and_leaves_the_descriptors_and_identity_alone(tmp_path, images):
    from tf_netvlad.models.identity import model_fingerprint

    plain = build_model("tiny", num_clusters=4)
    assert plain.training_image_size is None and "training_image_size" not in plain.get_config()
    plain.save(tmp_path / "plain.keras")
    trained = NetVLADModel.from_config(dict(plain.get_config(), training_image_size=(96, 128)))
    trained.set_weights(plain.get_weights())
    assert trained.training_image_size == "96x128"
    trained.save(tmp_path / "trained.keras")
    loaded = keras.saving.load_model(tmp_path / "trained.keras")  # the standard Keras path
    assert loaded.training_image_size == "96x128"
    assert keras.saving.load_model(tmp_path / "plain.keras").training_image_size is None  # older files
    np.testing.assert_array_equal(loaded(images).numpy(), plain(images).numpy())
    assert model_fingerprint(loaded) == model_fingerprint(plain)  # indexes stay compatible
    with pytest.raises(ValueError, match="image_size"):
        NetVLADModel.from_config(dict(plain.get_config(), training_image_size="big"))


def test_vgg16_is_cut_before_relu_and_trains_from_conv5_1():
    backbone = backbones.build_backbone("vgg16", weights=None)
    assert backbone.layers[-1].name == "block5_conv3"
    assert backbone.layers[-1].activation is keras.activations.linear
    assert backbones.feature_dim(backbone) == 512
    trainable = [layer.name for layer in backbone.layers if layer.trainable and layer.weights]
    assert trainable == ["block5_conv1", "block5_conv2", "block5_conv3"]
    # negative outputs exist only without the ReLU
    x = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype("float32") * 50
    assert backbone(x).numpy().min() < 0


def test_vgg16_copies_the_application_weights(tmp_path):
    app = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    app.save_weights(path)
    backbone = backbones.build_backbone("vgg16", weights=path)
    for name in ("block1_conv1", "block5_conv3"):
        for got, want in zip(backbone.get_layer(name).get_weights(), app.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)


def test_tiny_weights_file_and_trainable_from(tmp_path):
    source = backbones.build_backbone("tiny")
    path = tmp_path / "tiny.weights.h5"
    source.save_weights(path)
    loaded = backbones.build_backbone("tiny", weights=path, trainable_from="conv3")
    for a, b in zip(loaded.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)
    # norm3 holds conv3's bias (`ChannelGroupNormalization(input_bias=True)`)
    assert [l.name for l in loaded.layers if l.trainable and l.weights] == ["conv3", "norm3", "conv4"]


@pytest.mark.parametrize("name, dim", [("alexnet", 256), ("resnet50", 1024), ("mobilenetv2", 320)])
def test_other_backbones_give_feature_maps(name, dim):
    model = build_model(name, num_clusters=2)
    assert model.netvlad.input.shape[-1] == dim
    assert model.output_shape == (None, 2 * dim)
    assert model.preprocessing.mode == backbones.default_preprocessing(name)


def test_preprocessing_presets_match_keras_applications(images):
    caffe = ImagePreprocessing.from_preset("caffe")
    want = keras.applications.vgg16.preprocess_input(images.copy())
    np.testing.assert_allclose(caffe(images).numpy(), want, atol=1e-4)
    tf_mode = ImagePreprocessing.from_preset("tf")
    np.testing.assert_allclose(
        tf_mode(images).numpy(), keras.applications.mobilenet_v2.preprocess_input(images.copy()), atol=1e-5
    )
    matconvnet = ImagePreprocessing(mode="matconvnet", mean=(122.6, 116.6, 104.0))
    np.testing.assert_allclose(matconvnet(images).numpy(), images - np.array([122.6, 116.6, 104.0]), atol=1e-4)
    assert ImagePreprocessing.from_config(caffe.get_config()).get_config() == caffe.get_config()


def test_bad_input_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown backbone 'vgg17'"):
        build_model("vgg17")
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        backbones.build_backbone("tiny", weights=tmp_path / "nope.h5")
    with pytest.raises(ValueError, match="no pretrained"):
        backbones.build_backbone("tiny", weights="imagenet")
    with pytest.raises(ValueError, match="not a layer"):
        backbones.build_backbone("tiny", trainable_from="conv9")
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="local feature map"):
        NetVLADModel(plain)


@pytest.mark.parametrize("variant, whitening_dim", [("v1", None), ("v2", 5)])
def test_netvlad_model_passes_the_shared_keras_checks(tmp_path, images, variant, whitening_dim):
    """Config/JSON, serialize/deserialize, .keras round trip and mixed_float16: the backbone and the
    preprocessing compute in float16, the NetVLAD and whitening layers in float32 (float32
    descriptors)."""
    out = check_keras_class(
        lambda: build_model("tiny", num_clusters=3, variant=variant, whitening_dim=whitening_dim, name="m"),
        images[:, :24, :32], tmp_path, float32_layers=("netvlad", "whitening"))
    assert out.shape == (2, whitening_dim or 3 * 64)


def test_netvlad_model_from_config_can_use_a_config_twice():
    # keras.layers.deserialize empties the nested backbone config it reads: a shallow copy in
    # from_config let the first call consume the caller's dict.
    config = build_model("tiny", num_clusters=2).get_config()
    NetVLADModel.from_config(config)
    assert NetVLADModel.from_config(config).num_clusters == 2
