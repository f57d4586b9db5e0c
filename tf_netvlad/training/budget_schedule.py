"""A learning-rate schedule over the run's budget (time or steps), for runs whose length is a time limit.

The paper's step decay (×0.5 every 5 passes over the queries) counts passes, so its effect depends on
the dataset's size: with 400 training queries and a 10-minute limit a pass is 100 steps and the rate
is 1e-6 long before the time is up; with 100,000 queries it never decays. Here the rate is a function
of the fraction of the budget used, `progress` in [0, 1] (the larger of elapsed time / time limit and
steps done / step budget), so a time-limited run of any dataset size spends its whole budget:

    warm-up   progress < w:  lr · (0.1 + 0.9 · progress / w)
    cosine    progress >= w: lr · (f + (1 - f) · (1 + cos(π · (progress - w) / (1 - w))) / 2)

with warm-up fraction `w` and final fraction `f` (the rate at the end is f · lr). Pure Python.
"""

import math


def budget_learning_rate(lr, progress, warmup=0.05, final_fraction=0.02):
    """The learning rate at `progress` (clipped to [0, 1]) of the budget (see the module docstring)."""
    if not lr > 0:
        raise ValueError(f"`lr` must be > 0. Received: {lr!r}")
    if not 0 <= warmup < 1 or not 0 <= final_fraction <= 1:
        raise ValueError(f"`warmup` must be in [0, 1) and `final_fraction` in [0, 1]. Received: "
                         f"warmup={warmup!r}, final_fraction={final_fraction!r}")
    progress = min(max(float(progress), 0.0), 1.0)
    if progress < warmup:
        return lr * (0.1 + 0.9 * progress / warmup)
    cosine = (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup))) / 2
    return lr * (final_fraction + (1 - final_fraction) * cosine)


def budget_progress(elapsed_s=0.0, time_limit_s=None, steps=0, max_steps=None):
    """The fraction of the budget used: the larger of the time and the step fractions (1 = over)."""
    fractions = [0.0]
    if time_limit_s:
        fractions.append(float(elapsed_s) / float(time_limit_s))
    if max_steps:
        fractions.append(float(steps) / float(max_steps))
    if len(fractions) == 1:
        raise ValueError("A budget schedule needs a time limit or a step budget; neither was given.")
    return min(max(fractions), 1.0)
