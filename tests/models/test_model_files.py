"""`.keras` model files: `load_model` refuses what is not a tf_netvlad model."""

import keras
import pytest

from tf_netvlad.models.model_files import load_model


def test_load_model_refuses_a_missing_file_and_a_plain_keras_model(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.keras")
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    plain.save(tmp_path / "plain.keras")
    with pytest.raises(ValueError, match="not a tf_netvlad"):
        load_model(tmp_path / "plain.keras")
