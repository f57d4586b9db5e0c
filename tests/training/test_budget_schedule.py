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


def test_learning_rate_callback_counts_the_step_budget_of_the_run_length():
    """400 queries, cycles of 150, batches of 4 (the last batch of a cycle is short: 38 steps per
    cycle of 150, 25 per cycle of 100). The fixed schedule runs whole cycles across passes (2 passes =
    ceil(800 / 150) = 6 cycles); MATLAB's ends a cycle at each pass end (150 + 150 + 100 per pass)."""
    from tf_netvlad.training.callbacks import (
        BudgetLearningRate,
        LearningRateSchedule,
        RunControl,
        learning_rate_callback,
    )
    from tf_netvlad.training.config import TrainConfig
    from tf_netvlad.training.refresh_schedule import RefreshSchedule

    fixed = RefreshSchedule(400, 150)
    matlab = RefreshSchedule(400, 150, slowdown=True, lr_decay_every=5, lr_decay_factor=0.5)
    base = dict(batch_size=4, lr_schedule="budget", time_limit_s=None)
    for schedule, length, steps in ((fixed, {"epochs": 2}, 76), (fixed, {"epochs": 3}, 114),
                                    (fixed, {"passes": 2}, 228), (fixed, {"passes": 1, "epochs": 1}, 38),
                                    (matlab, {"passes": 2}, 2 * (38 + 38 + 25)), (matlab, {"epochs": 3}, 101)):
        callback = learning_rate_callback(TrainConfig(**base, **length), schedule, RunControl(None))
        assert isinstance(callback, BudgetLearningRate) and callback.max_steps == steps, length
    timed = learning_rate_callback(TrainConfig(**dict(base, time_limit_s=60, passes=None)), fixed,
                                   RunControl(123.0))
    assert timed.max_steps is None and timed.control.deadline == 123.0  # the time budget alone
    step = learning_rate_callback(TrainConfig(batch_size=4, lr_schedule="step", epochs=2), fixed, RunControl(None))
    assert isinstance(step, LearningRateSchedule)


def test_validation_queries_draws_a_sorted_subset_of_the_queries():
    from types import SimpleNamespace

    from tf_netvlad.training.callbacks import validation_queries

    split = SimpleNamespace(num_queries=10, subset_queries=lambda idx: list(idx))
    picked = validation_queries(split, 4, seed=0)
    assert len(picked) == 4 and picked == sorted(set(picked)) and all(0 <= i < 10 for i in picked)
    assert picked == validation_queries(split, 4, seed=0)  # the seed decides
    assert validation_queries(split, 10, seed=0) is split and validation_queries(split, None, seed=0) is split
    assert validation_queries(None, 4, seed=0) is None
