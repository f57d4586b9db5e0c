"""Shared fixtures. Tests use tiny images and tiny backbones; slow tests need --run-slow."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Before any test module imports TensorFlow: `import tf_netvlad` turns on the oneDNN kernels the
# package runs with (TensorFlow imported first leaves them off on this CPU). Without it, whether a
# test trained with them depended on which test modules were collected: a test file run alone that
# imports TensorFlow first trained with other kernels, hence other float rounding, than the suite.
import tf_netvlad  # noqa: F401,E402  (importing it does not import TensorFlow)

# The `tf_netvlad` command splits each batch into streams by default (`--cpu-streams auto`), which
# sets TensorFlow's thread pools for the whole process: tests call `main.main` in this process, so
# the first of them would decide the threading of every test after it. Commands run with one stream
# here and in the console scripts the tests start; tests/models/test_streams.py tests the streams.
os.environ.setdefault("TF_NETVLAD_CPU_STREAMS", "1")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def tiny_model():
    """An untrained NetVLADModel on the tiny backbone, K = 4 (v1): 256-D descriptors of any image.

    One per test module, so a module may save it or index with it; do not change its weights.
    """
    from tf_netvlad.models.model import build_model

    return build_model("tiny", num_clusters=4)


@pytest.fixture(scope="session")
def mean_colour_model():
    """A weightless descriptor model: the L2-normalised mean RGB colour (`helpers.mean_colour_model`)."""
    from tests.helpers import mean_colour_model

    return mean_colour_model()


@pytest.fixture
def colour_images(tmp_path):
    """8 solid-colour PNG images of 6x8 pixels, image k filled with the value 10*k (lossless):
    `(root, names)`. `helpers.mean_values` reads the value back from a decoded batch."""
    from tests.helpers import write_solid_image

    names = [f"img{k}.png" for k in range(8)]
    for k, name in enumerate(names):
        write_solid_image(tmp_path / name, 10 * k, size=(6, 8))
    return tmp_path, names


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """A tiny generated demo dataset shared by the CLI / workflow tests (dict of paths)."""
    from tf_netvlad.demo import dataset

    out = tmp_path_factory.mktemp("tiny_demo") / "data"
    return dataset.generate_demo_data(out, seed=0, scale=0.01, progress=False)
