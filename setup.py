"""Packaging for tf_netvlad. Runtime requirements are read from requirements-base.txt."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "tf_netvlad" / "version.py").read_text(), re.M
).group(1)
# TensorFlow is not in install_requires: choose the build with an extra ([cpu] or [gpu]) or
# install requirements.txt / requirements-gpu.txt first (see README).
REQUIREMENTS = [
    line.strip()
    for line in (HERE / "requirements-base.txt").read_text().splitlines()
    if line.strip() and not line.startswith(("#", "-"))
]

setup(
    name="tf_netvlad",
    version=VERSION,
    description="NetVLAD place recognition for Keras 3 / TensorFlow: layer, weakly supervised "
    "training, recall@N evaluation, TensorFlow Serving export.",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(exclude=("tests*", "benchmarks*")),
    install_requires=REQUIREMENTS,
    extras_require={
        "cpu": ["tensorflow-cpu==2.21.*"],
        "gpu": ["tensorflow[and-cuda]==2.21.*"],
        "test": ["pytest>=8", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29", "h5py>=3.10",
                 "onnxruntime>=1.17"],
        "serving": ["tensorflow-serving-api"],  # install with --no-deps, see README
        "torch": ["torch"],
    },
    entry_points={"console_scripts": ["tf_netvlad=tf_netvlad.cli.main:main"]},
)
