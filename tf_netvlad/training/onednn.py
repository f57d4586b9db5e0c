"""Whether TensorFlow's oneDNN CPU kernels are off because TensorFlow was imported too early.

`import tf_netvlad` sets `TF_ENABLE_ONEDNN_OPTS=1` (unless it is set already) so that TensorFlow,
which reads the variable once when it loads, uses its oneDNN CPU kernels: on the 2-core AMD EPYC of
benchmarks/RESULTS.md, where TensorFlow leaves them off by itself, they make a training step 1.67×
faster. A script or notebook that imports `tensorflow` or `keras` before `tf_netvlad` loads
TensorFlow without them, and nothing says so: a 10-minute run then makes about 40 % fewer steps
(measured once by accident, docs/recipes.md). `train()` logs `onednn_off_warning()` when that
happened.
"""

import os


def onednn_off_warning():
    """The one-line warning to log when the oneDNN kernels are off although `tf_netvlad` asked for
    them (`TF_ENABLE_ONEDNN_OPTS` is "1" but TensorFlow did not load them: it was imported first),
    on an x86 CPU without GPUs; None otherwise (also when the variable was set to anything else,
    which is the user's choice, or when TensorFlow's private query is missing)."""
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "1":
        return None
    try:  # private API, read only for this diagnostic
        from tensorflow.python.util import _pywrap_util_port as port

        if not port.IsX86Available() or port.IsMklEnabled():
            return None
    except (ImportError, AttributeError):
        return None
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return None
    return ("TensorFlow's oneDNN CPU kernels are off because TensorFlow was imported before tf_netvlad "
            "could turn them on; training steps may take up to 1.7x as long. Import tf_netvlad before "
            "tensorflow and keras, or set TF_ENABLE_ONEDNN_OPTS=1 before Python starts.")
