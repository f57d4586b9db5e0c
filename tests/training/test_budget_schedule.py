"""The budget learning-rate schedule against hand-computed values."""

import math

import pytest

from tf_netvlad.training.budget_schedule import budget_learning_rate, budget_progress


@pytest.mark.parametrize("progress, expected", [
    (0.0, 0.1),                  # warm-up starts at lr / 10
    (0.025, 0.1 + 0.9 * 0.5),    # half-way through the 5 % warm-up
    (0.05, 1.0),                 # the peak: lr (cosine term 1)
    (0.525, 0.02 + 0.98 * 0.5),  # half-way through the cosine: cos(π/2) = 0
    (1.0, 0.02),                 # the end: 2 % of lr
    (1.7, 0.02),                 # past the budget: clipped
])
def test_values_by_hand(progress, expected):
    assert budget_learning_rate(1e-3, progress) == pytest.approx(1e-3 * expected, rel=1e-12)


def test_monotone_after_the_warm_up():
    values = [budget_learning_rate(1.0, p / 100) for p in range(5, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert budget_learning_rate(1.0, 0.3) == pytest.approx(
        0.02 + 0.98 * (1 + math.cos(math.pi * 0.25 / 0.95)) / 2)


def test_progress_is_the_larger_fraction():
    assert budget_progress(elapsed_s=30, time_limit_s=600) == pytest.approx(0.05)
    assert budget_progress(elapsed_s=30, time_limit_s=600, steps=50, max_steps=100) == 0.5
    assert budget_progress(elapsed_s=900, time_limit_s=600) == 1.0
    with pytest.raises(ValueError, match="time limit or a step budget"):
        budget_progress(elapsed_s=3)


@pytest.mark.parametrize("kwargs", [dict(lr=0), dict(warmup=1.0), dict(final_fraction=1.5)])
def test_bad_arguments(kwargs):
    args = {"lr": 1e-3, "progress": 0.5, **kwargs}
    with pytest.raises(ValueError):
        budget_learning_rate(**args)


def test_the_callback_sets_the_rate_of_every_step_from_the_step_budget():
    import keras
    import numpy as np

    from tf_netvlad.training.callbacks import BudgetLearningRate, RunControl

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(self.model.optimizer.learning_rate))

    budget = BudgetLearningRate(1e-3, RunControl(None), max_steps=10)
    model.fit(np.zeros((20, 2)), np.zeros((20, 1)), batch_size=2, epochs=1, verbose=0,
              callbacks=[budget, Record()])
    expected = [budget_learning_rate(1e-3, k / 10) for k in range(10)]
    np.testing.assert_allclose(seen, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="needs a time limit"):
        BudgetLearningRate(1e-3, RunControl(None), max_steps=None)
