"""tf_netvlad: NetVLAD place recognition for Keras 3 / TensorFlow.

The public API is loaded lazily so that `tf_netvlad --help` and the pure-NumPy modules
(`tf_netvlad.places`, `tf_netvlad.demo_data`, `tf_netvlad.index`) do not pay for importing
TensorFlow. Accessing any Keras symbol (e.g. `tf_netvlad.NetVLAD`) imports it on first use and
registers every tf_netvlad Keras class, so `tf_netvlad.load_model(path)` works in a fresh process.
"""

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "NetVLAD": "tf_netvlad.netvlad",
    "default_alpha": "tf_netvlad.netvlad",
    "PCAWhitening": "tf_netvlad.whitening",
    "fit_pca_whitening": "tf_netvlad.whitening",
    "ImagePreprocessing": "tf_netvlad.preprocessing",
    "build_backbone": "tf_netvlad.backbones",
    "BACKBONES": "tf_netvlad.backbones",
    "NetVLADModel": "tf_netvlad.model",
    "build_model": "tf_netvlad.model",
    "load_model": "tf_netvlad.model",
    "initialize_netvlad": "tf_netvlad.initialization",
    "PlaceSplit": "tf_netvlad.places",
    "load_split": "tf_netvlad.places",
    "generate_demo_data": "tf_netvlad.demo_data",
    "extract_descriptors": "tf_netvlad.extract",
    "recall_at_n": "tf_netvlad.evaluation",
    "evaluate": "tf_netvlad.evaluation",
    "train": "tf_netvlad.training",
    "TrainConfig": "tf_netvlad.train_config",
    "CPU_RECIPE": "tf_netvlad.train_config",
    "fit_whitening": "tf_netvlad.initialization",
    "ranking_loss": "tf_netvlad.losses",
    "export_saved_model": "tf_netvlad.export",
    "export_onnx": "tf_netvlad.export",
    "convert_matconvnet": "tf_netvlad.convert",
    "convert_pytorch": "tf_netvlad.convert",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tf_netvlad' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
