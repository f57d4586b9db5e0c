"""One check every Keras class of tf_netvlad runs (in the spirit of keras-hub's `run_layer_test`).

`check_keras_class(make, inputs, tmp_path)` builds an object with `make()` and checks:

1. the output shape equals `compute_output_shape`;
2. config: `get_config()` -> JSON -> `from_config` gives an identical (JSON) config, leaves the
   dict it was given unchanged, and the revived object given the same weights computes the same
   output (the config holds every option);
3. `keras.saving.serialize_keras_object` -> JSON -> `deserialize_keras_object`: same class, same
   config, registered under the `tf_netvlad>` package;
4. a `.keras` file (the object itself if it is a model, else a one-layer Functional model around it)
   loads with `keras.saving.load_model` in the same class and gives bit-identical outputs;
5. under the `mixed_float16` policy: every float variable stays float32, the layers compute in
   float16 except the ones meant to stay float32 (`float32_layers`), the outputs are finite and
   close to the float32 outputs with the same weights, and the per-layer dtype policies survive a
   config round trip made under the float32 policy.

Weights are perturbed after building so that a round trip which silently re-initialised a weight
(or dropped a zero-initialised bias) changes the output.
"""

import contextlib
import copy
import json

import keras
import numpy as np

# The classes are registered when their defining modules are imported (until `import tf_netvlad`
# registers them all).
import tf_netvlad.layers.netvlad  # noqa: F401
import tf_netvlad.layers.preprocessing  # noqa: F401
import tf_netvlad.layers.whitening  # noqa: F401
import tf_netvlad.models.backbones  # noqa: F401
import tf_netvlad.models.model  # noqa: F401


@contextlib.contextmanager
def dtype_policy(name):
    """Sets the global dtype policy for the block and restores the previous one."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def as_json(value):
    """What a config looks like after a JSON file (tuples become lists)."""
    return json.loads(json.dumps(value))


def _numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _perturb_weights(obj, seed):
    """Moves every weight off its initial value (keeps signs, so variances stay positive)."""
    rng = np.random.default_rng(seed)
    obj.set_weights([w * rng.uniform(0.5, 1.5, w.shape) + rng.uniform(0.0, 0.05, w.shape)
                     for w in obj.get_weights()])


def _all_layers(obj):
    """`obj` and, recursively, every layer inside it (nested Functional models included)."""
    found = [obj]
    for layer in getattr(obj, "layers", []):
        if layer is not obj:
            found += _all_layers(layer)
    return found


def _computing_layers(obj):
    """The layers that compute: containers (models, nested Functional backbones) and input layers
    are left out, their dtype policy is not part of a Functional config and changes nothing."""
    return [layer for layer in _all_layers(obj)
            if not isinstance(layer, (keras.Model, keras.layers.InputLayer))]


def _policies(obj):
    return {layer.name: layer.dtype_policy.name for layer in _computing_layers(obj)}


def check_keras_class(make, inputs, tmp_path, float32_layers=(), mixed_atol=2e-2, mixed_rtol=2e-3,
                      seed=0):
    """Runs the shared checks on `make()` with `inputs` (a NumPy batch). Returns the float32 output.

    `float32_layers`: names of the (sub)layers meant to compute in float32 under `mixed_float16`
    (the model's NetVLAD and whitening layers); for a standalone layer, pass `(layer.name,)` only
    if the layer is meant to ignore the global policy.
    """
    inputs = np.asarray(inputs)
    with dtype_policy("float32"):
        obj = make()
        obj(inputs)  # builds
        _perturb_weights(obj, seed)
        want = _numpy(obj(inputs))
        assert np.isfinite(want).all()

        # 1. output shape
        shape = obj.compute_output_shape(inputs.shape)
        assert tuple(shape)[1:] == want.shape[1:], (shape, want.shape)

        # 2. config -> JSON -> from_config
        config = as_json(obj.get_config())
        argument = copy.deepcopy(config)
        revived = type(obj).from_config(argument)
        assert as_json(revived.get_config()) == config
        assert argument == config, "from_config changed the config it was given (it cannot be reused)"
        revived(inputs)
        revived.set_weights(obj.get_weights())
        np.testing.assert_array_equal(_numpy(revived(inputs)), want)

        # 3. serialize_keras_object / deserialize_keras_object
        serialized = as_json(keras.saving.serialize_keras_object(obj))
        assert serialized["registered_name"] == f"tf_netvlad>{type(obj).__name__}", serialized["registered_name"]
        restored = keras.saving.deserialize_keras_object(serialized)
        assert type(restored) is type(obj)
        assert as_json(restored.get_config()) == config

        # 4. .keras save / load_model
        if isinstance(obj, keras.Model):
            model = obj
        else:
            x = keras.Input(shape=inputs.shape[1:], dtype=str(inputs.dtype))
            model = keras.Model(x, obj(x), name="wrapper")
        path = tmp_path / f"{obj.name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert type(loaded) is type(model)
        if model is not obj:
            assert type(loaded.get_layer(obj.name)) is type(obj)
        np.testing.assert_array_equal(_numpy(loaded(inputs)), want)

    # 5. mixed_float16
    with dtype_policy("mixed_float16"):
        mixed = make()
        mixed(inputs)  # builds under the policy
    mixed.set_weights(obj.get_weights())
    out = mixed(inputs)
    for variable in mixed.weights:
        if "float" in str(variable.dtype):
            assert str(variable.dtype) == "float32", (variable.path, variable.dtype)
    for layer in _computing_layers(mixed):
        expected = "float32" if layer.name in float32_layers else "float16"
        assert layer.compute_dtype == expected, (layer.name, layer.compute_dtype, expected)
    final = (_all_layers(mixed)[-1] if not isinstance(mixed, keras.Model)
             else mixed.get_layer(index=-1))
    assert str(keras.backend.standardize_dtype(out.dtype)) == final.compute_dtype
    out = _numpy(out).astype("float32")
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, want, atol=mixed_atol, rtol=mixed_rtol)
    with dtype_policy("float32"):
        revived = type(mixed).from_config(as_json(mixed.get_config()))
    assert _policies(revived) == _policies(mixed)
    return want
