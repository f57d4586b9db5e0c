"""Weak supervision from GPS: `TrainConfig` and the recipes (config, no TensorFlow), the tuple
pipeline (tuples), hard-negative mining (mining, tuple_mining, distributed_mining), MATLAB's
cache-refresh schedule (refresh_schedule), the loop with its callbacks and checkpoints (train,
callbacks, checkpointing) and the multi-worker helpers (distributed).
"""
