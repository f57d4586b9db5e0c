"""tf_netvlad: NetVLAD place recognition for Keras 3 / TensorFlow.

The public API below is what the README shows. Names are loaded on first use (PEP 562), so
`import tf_netvlad`, `tf_netvlad --help` and the NumPy-only modules (`tf_netvlad.data.places`,
`tf_netvlad.demo.dataset`, `tf_netvlad.search.faiss_index`) do not import TensorFlow.

`import tf_netvlad` also makes the standard Keras loading path work: `keras.saving.load_model`
and `keras.models.load_model` open every model tf_netvlad writes (see `tf_netvlad.registration`).

The package, along the data flow (each level imports only the levels below it):
`cli` -> `demo` -> `training`, `retrieval` -> `evaluation`, `export`, `convert` -> `models` ->
`data`, `search` -> `layers` -> `defaults`.
"""

import importlib
import os

# TensorFlow turns its oneDNN CPU kernels on by default only on some CPUs; on the 2-core AMD EPYC of
# benchmarks/RESULTS.md they make a CPU training step 1.67x faster (and the GEMMs 1.5-2x). This only
# takes effect if TensorFlow is not imported yet; TF_ENABLE_ONEDNN_OPTS=0 in the environment wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from tf_netvlad.registration import register_when_keras_loads
from tf_netvlad.version import __version__

# public name -> module that defines it
_PUBLIC = {
    # layers
    "NetVLAD": "tf_netvlad.layers.netvlad",
    "default_alpha": "tf_netvlad.layers.netvlad",
    "PCAWhitening": "tf_netvlad.layers.whitening",
    "fit_pca_whitening": "tf_netvlad.layers.whitening",
    "ImagePreprocessing": "tf_netvlad.layers.preprocessing",
    # data
    "PlaceSplit": "tf_netvlad.data.places",
    "load_split": "tf_netvlad.data.split_loading",
    "latlon_to_utm": "tf_netvlad.data.utm",
    "utm_to_latlon": "tf_netvlad.data.utm",
    # models
    "BACKBONES": "tf_netvlad.models.backbones",
    "build_backbone": "tf_netvlad.models.backbones",
    "NetVLADModel": "tf_netvlad.models.model",
    "build_model": "tf_netvlad.models.model",
    "load_model": "tf_netvlad.models.model_files",
    "save_model": "tf_netvlad.models.model_files",
    "ranking_loss": "tf_netvlad.models.losses",
    "extract_descriptors": "tf_netvlad.models.extract",
    "configure_streams": "tf_netvlad.models.streams",
    "initialize_netvlad": "tf_netvlad.models.initialization",
    "init_model": "tf_netvlad.models.initialization",
    "fit_whitening": "tf_netvlad.models.initialization",
    # training
    "TrainConfig": "tf_netvlad.training.config",
    "CPU_RECIPE": "tf_netvlad.training.config",
    "train": "tf_netvlad.training.train",
    # evaluation
    "recall_at_n": "tf_netvlad.evaluation.recall_metrics",
    "evaluate": "tf_netvlad.evaluation.recall",
    "evaluate_model": "tf_netvlad.evaluation.run",
    "format_recall_table": "tf_netvlad.evaluation.report",
    "evaluate_map": "tf_netvlad.evaluation.oxford_paris",
    "format_map_table": "tf_netvlad.evaluation.oxford_paris",
    # retrieval
    "build_retrieval_index": "tf_netvlad.retrieval.build",
    "RetrievalIndex": "tf_netvlad.retrieval.index",
    "localize": "tf_netvlad.retrieval.localize",
    "export_hloc": "tf_netvlad.retrieval.hloc",
    # export and conversion
    "export_saved_model": "tf_netvlad.export.saved_model",
    "export_onnx": "tf_netvlad.export.saved_model",
    "convert_matconvnet": "tf_netvlad.convert.matconvnet",
    "convert_pytorch": "tf_netvlad.convert.pytorch",
    "load_pretrained": "tf_netvlad.convert.pretrained",
    # demo
    "generate_demo_data": "tf_netvlad.demo.dataset",
    "run_demo": "tf_netvlad.demo.run",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'tf_netvlad' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__


register_when_keras_loads()
