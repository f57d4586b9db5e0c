"""Shared fixtures. Tests use tiny images and tiny backbones; slow tests need --run-slow."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


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


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """A tiny generated demo dataset shared by the CLI / workflow tests (dict of paths)."""
    from tf_netvlad.demo import dataset

    out = tmp_path_factory.mktemp("tiny_demo") / "data"
    return dataset.generate_demo_data(out, seed=0, scale=0.01, progress=False)
