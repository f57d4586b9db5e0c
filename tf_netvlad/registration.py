"""Registers tf_netvlad's Keras classes, so `keras.saving.load_model` opens tf_netvlad models.

Keras finds a custom class of a `.keras` file (`"registered_name": "tf_netvlad>NetVLADModel"`)
only once the module that defines it has run its `register_keras_serializable` decorator.
`import tf_netvlad` calls `register_when_keras_loads()`:

* if Keras is already imported, the classes are registered at once;
* otherwise a one-shot import hook registers them right after the first `import keras`
  finishes, so a program that never touches Keras (`tf_netvlad --help`, the NumPy-only
  modules) never pays for importing TensorFlow.

When that first `import keras` comes from a tf_netvlad module that is itself still being imported
(`import tf_netvlad.layers.whitening` in a fresh process), the classes that depend on it cannot be
imported yet; the hook then waits until that tf_netvlad module has finished executing.

Either way, `import tf_netvlad; keras.saving.load_model("best.keras")` works in a fresh process,
as does every tool built on the standard Keras loading path.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# Every module that defines a Keras class stored in the models tf_netvlad writes.
KERAS_CLASS_MODULES = (
    "tf_netvlad.layers.netvlad",          # NetVLAD
    "tf_netvlad.layers.whitening",        # PCAWhitening
    "tf_netvlad.layers.preprocessing",    # ImagePreprocessing
    "tf_netvlad.models.backbones",        # MatConvNetLRN (converted AlexNet-style backbones), ChannelGroupNormalization, StandardizedConv2D, GemmGradConv2D
    "tf_netvlad.models.model",            # NetVLADModel
)


def register_keras_classes():
    """Imports every module that defines a tf_netvlad Keras class (registering the classes)."""
    for name in KERAS_CLASS_MODULES:
        importlib.import_module(name)


def _initializing(module):
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _package_busy(finished):
    """True while a tf_netvlad module other than `finished` (whose body just ran) is still executing."""
    return any(name.startswith("tf_netvlad.") and module is not finished and _initializing(module)
               for name, module in list(sys.modules.items()))


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """Wraps the loaders of `keras` and of tf_netvlad's modules to register once both allow it.

    The hook stays until the classes are registered: a mere `importlib.util.find_spec("keras")`
    (TensorFlow asks one before importing Keras) must not use it up.
    """

    _finding = False

    def find_spec(self, fullname, path=None, target=None):
        if self._finding or not (fullname == "keras" or fullname.startswith("tf_netvlad.")):
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)  # the import system flags `module` as initialising until this returns
            keras = module if fullname == "keras" else sys.modules.get("keras")
            keras_ready = keras is module or (keras is not None and not _initializing(keras))
            if keras_ready and not _package_busy(finished=module):
                _register_now()

        spec.loader.exec_module = exec_module
        return spec


def _remove_hook():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterAfterKeras)]


def _register_now():
    _remove_hook()
    try:
        register_keras_classes()
    except Exception as err:  # never break the user's own import
        warnings.warn(f"tf_netvlad could not register its Keras classes: {err!r}; "
                      "`import tf_netvlad.models.model` before loading a tf_netvlad model.",
                      stacklevel=3)


def register_when_keras_loads():
    """Registers the Keras classes now if Keras is loaded, else as soon as it is."""
    if "keras" in sys.modules and not _initializing(sys.modules["keras"]):
        register_keras_classes()
    elif not any(isinstance(f, _RegisterAfterKeras) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterKeras())
