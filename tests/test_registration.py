"""`import tf_netvlad` makes the standard Keras loading path open tf_netvlad models.

Each check runs in a fresh process, as a user's script or another tool would: the classes must be
registered whatever the import order of tf_netvlad, keras and tensorflow, without `import
tf_netvlad` itself importing TensorFlow.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tf_netvlad.models.backbones import MatConvNetLRN
from tf_netvlad.models.model import build_model, with_whitening

LOAD_SCRIPT = """
import sys
{imports}
import numpy as np
x = np.load(sys.argv[2])
for path, expected in zip(sys.argv[3::2], sys.argv[4::2]):
    model = keras.{loader}(path)
    np.testing.assert_allclose(model.predict(x, verbose=0), np.load(expected), atol=1e-5)
    print(type(model).__name__, end=" ")
"""

ORDERS = {
    "tf_netvlad first": ("import tf_netvlad\nimport keras", "saving.load_model"),
    "keras first": ("import keras\nimport tf_netvlad", "saving.load_model"),
    "a layer module first": ("import tf_netvlad.layers.whitening\nimport keras", "saving.load_model"),
    "tensorflow after tf_netvlad": ("import tf_netvlad\nimport tensorflow as tf\nkeras = tf.keras",
                                    "models.load_model"),
}


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """A whitened NetVLADModel (NetVLAD, PCAWhitening, ImagePreprocessing) and a MatConvNetLRN model."""
    folder = tmp_path_factory.mktemp("keras_files")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    model = build_model("tiny", num_clusters=4)
    dim = model.output_shape[-1]
    model = with_whitening(model, rng.normal(size=(dim, 8)).astype("float32"), np.zeros(8, "float32"))
    inputs = keras.Input((32, 32, 3))
    lrn = keras.Model(inputs, MatConvNetLRN(depth=5, kappa=1.0, alpha=1e-4, beta=0.75)(inputs))
    files = []
    for name, net in (("netvlad", model), ("lrn", lrn)):
        net.save(folder / f"{name}.keras")
        np.save(folder / f"{name}_out.npy", net.predict(x, verbose=0))
        files += [str(folder / f"{name}.keras"), str(folder / f"{name}_out.npy")]
    np.save(folder / "x.npy", x)
    return [str(folder / "x.npy")] + files


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_keras_load_model_opens_tf_netvlad_models_in_a_fresh_process(order, saved_models):
    imports, loader = ORDERS[order]
    script = LOAD_SCRIPT.format(imports=imports, loader=loader)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", script, "-", *saved_models], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["NetVLADModel", "Functional"]


def test_without_tf_netvlad_keras_cannot_locate_the_classes(saved_models):
    """The control: the registration above is what makes loading work."""
    script = "import keras, sys\ntry:\n    keras.saving.load_model(sys.argv[1])\nexcept TypeError as e:\n    print(e)\n"
    out = subprocess.run([sys.executable, "-c", script, saved_models[1]], capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert "Could not locate class 'NetVLADModel'" in out.stdout


def test_import_tf_netvlad_imports_neither_tensorflow_nor_keras():
    code = ("import sys, tf_netvlad\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules, sorted(tf_netvlad.__all__)[:2])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[:2] == ["False", "False"]


def test_public_api_names_resolve_to_their_defining_modules():
    import tf_netvlad

    for name in tf_netvlad.__all__:
        value = getattr(tf_netvlad, name)
        if name == "__version__":
            continue
        module = getattr(value, "__module__", None)
        if module is not None:  # functions and classes name their defining module
            assert module == tf_netvlad._PUBLIC[name], name
