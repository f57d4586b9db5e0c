"""tf_netvlad: NetVLAD place recognition for Keras 3 / TensorFlow.

The public API is loaded lazily so that `tf_netvlad --help` and the pure-NumPy modules
(`tf_netvlad.data.places`, `tf_netvlad.demo.dataset`, `tf_netvlad.search.faiss_index`) do not pay for importing
TensorFlow. Accessing any Keras symbol (e.g. `tf_netvlad.NetVLAD`) imports it on first use and
registers every tf_netvlad Keras class, so `tf_netvlad.load_model(path)` works in a fresh process.
"""

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "NetVLAD": "tf_netvlad.layers.netvlad",
    "default_alpha": "tf_netvlad.layers.netvlad",
    "PCAWhitening": "tf_netvlad.layers.whitening",
    "fit_pca_whitening": "tf_netvlad.layers.whitening",
    "ImagePreprocessing": "tf_netvlad.layers.preprocessing",
    "build_backbone": "tf_netvlad.models.backbones",
    "BACKBONES": "tf_netvlad.models.backbones",
    "NetVLADModel": "tf_netvlad.models.model",
    "build_model": "tf_netvlad.models.model",
    "load_model": "tf_netvlad.models.model",
    "initialize_netvlad": "tf_netvlad.models.initialization",
    "PlaceSplit": "tf_netvlad.data.places",
    "load_split": "tf_netvlad.data.places",
    "generate_demo_data": "tf_netvlad.demo.dataset",
    "extract_descriptors": "tf_netvlad.models.extract",
    "recall_at_n": "tf_netvlad.evaluation.recall",
    "evaluate": "tf_netvlad.evaluation.recall",
    "train": "tf_netvlad.training.train",
    "TrainConfig": "tf_netvlad.training.config",
    "CPU_RECIPE": "tf_netvlad.training.config",
    "fit_whitening": "tf_netvlad.models.initialization",
    "ranking_loss": "tf_netvlad.models.losses",
    "export_saved_model": "tf_netvlad.export.saved_model",
    "export_onnx": "tf_netvlad.export.saved_model",
    "convert_matconvnet": "tf_netvlad.convert.matconvnet",
    "convert_pytorch": "tf_netvlad.convert.pytorch",
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
