"""Multi-worker training helpers: who am I among the workers, and exact cross-worker exchanges.

`worker_group(strategy)` returns a `WorkerGroup` for a `tf.distribute.MultiWorkerMirroredStrategy`
with more than one worker and None otherwise (no strategy, one machine, `MirroredStrategy`), so
single-process code paths stay untouched.

Every exchange is an all-reduce SUM in which each worker contributes zeros outside its own part
(`x + 0 = x` in floating point, so gathered and broadcast values are bit-exact). The exchanges are
collective: every worker must call them in the same order with the same shapes.
"""

import numpy as np


def shard_range(count, num_shards, index):
    """`(lo, hi)`: the contiguous block `index` of `count` items split into `num_shards` near-equal
    blocks (the first `count % num_shards` blocks hold one more item)."""
    count, num_shards, index = int(count), int(num_shards), int(index)
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ValueError(f"`index` must be in [0, num_shards={num_shards}). Received: index={index}")
    base, extra = divmod(count, num_shards)
    lo = index * base + min(index, extra)
    return lo, lo + base + (1 if index < extra else 0)


def replica_slices(batch_rows, batch_size, num_replicas):
    """The rows of one global batch that each replica trains: `[(lo, hi), ...]` offsets into the batch.

    Replica j takes rows `j*S .. (j+1)*S` with `S = ceil(batch_size / num_replicas)`, clipped to the
    `batch_rows` rows the batch really has (a cycle's last batch may be short); missing rows are
    padding. The order is the single-device order of the batch, so the replicas together train
    exactly the rows one device would.
    """
    per_replica = -(-int(batch_size) // int(num_replicas))
    return [(min(j * per_replica, batch_rows), min((j + 1) * per_replica, batch_rows))
            for j in range(int(num_replicas))]


class WorkerGroup:
    """This worker's place among the workers of a `MultiWorkerMirroredStrategy`.

    Attributes:
        strategy: the strategy.
        num_workers: W, the number of worker processes ("chief" + "worker" tasks).
        index: this worker's rank in 0..W-1 (the chief is 0).
        is_chief: True for the worker that writes the run directory.
        local_replicas: replicas (devices) of this worker.
    """

    def __init__(self, strategy):
        import tensorflow as tf

        resolver = strategy.cluster_resolver
        spec = resolver.cluster_spec().as_dict()
        chiefs = len(spec.get("chief", []))
        self.strategy = strategy
        self.num_workers = chiefs + len(spec.get("worker", []))
        task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
        if task_type not in ("chief", "worker"):
            raise ValueError(f"Multi-worker training runs on 'chief' and 'worker' tasks; this task is "
                             f"{task_type!r} (TF_CONFIG task type).")
        self.index = 0 if task_type == "chief" else chiefs + task_id
        self.is_chief = self.index == 0
        self.local_replicas = len(strategy.extended.worker_devices)
        if strategy.num_replicas_in_sync != self.num_workers * self.local_replicas:
            raise ValueError(
                f"Every worker must have the same number of devices: {strategy.num_replicas_in_sync} "
                f"replicas in sync for {self.num_workers} workers with {self.local_replicas} local ones."
            )
        self._tf = tf
        self._reduce_fn = None

    @property
    def num_replicas(self):
        return self.strategy.num_replicas_in_sync

    def __repr__(self):
        return (f"WorkerGroup(worker {self.index} of {self.num_workers}"
                f"{', chief' if self.is_chief else ''}, {self.local_replicas} local replica(s))")

    def _reduce(self):
        if self._reduce_fn is None:
            tf, strategy, local = self._tf, self.strategy, self.local_replicas

            def replica_fn(value):
                context = tf.distribute.get_replica_context()
                first_local = tf.equal(context.replica_id_in_sync_group % local, 0)
                contribution = tf.where(first_local, value, tf.zeros_like(value))  # once per worker
                return context.all_reduce(tf.distribute.ReduceOp.SUM, contribution)

            @tf.function(reduce_retracing=True)
            def reduce(value):
                return strategy.run(replica_fn, args=(value,))

            self._reduce_fn = reduce
        return self._reduce_fn

    def all_reduce_sum(self, array):
        """The element-wise sum of `array` over the workers (same shape and dtype on every worker)."""
        array = np.asarray(array)  # (not ascontiguousarray: it turns a 0-d array into 1-d)
        if array.dtype not in (np.float32, np.float64, np.int32, np.int64):
            raise TypeError(f"all_reduce_sum needs float32/64 or int32/64 arrays. Received: {array.dtype}")
        result = self._reduce()(self._tf.convert_to_tensor(array.ravel()))  # one trace for all ranks
        total = self.strategy.experimental_local_results(result)[0].numpy()
        return np.asarray(total, array.dtype).reshape(array.shape)

    def broadcast(self, array):
        """The chief's `array` on every worker (bit-exact)."""
        array = np.asarray(array)
        return self.all_reduce_sum(array if self.is_chief else np.zeros_like(array))

    def any(self, flag):
        """True on every worker when `flag` is true on at least one."""
        return bool(self.all_reduce_sum(np.array([1 if flag else 0], np.int64))[0] > 0)

    def broadcast_variables(self, variables):
        """Assigns the chief's values to `variables` (same list, in the same order, on every worker)."""
        for var in variables:
            var.assign(self.broadcast(np.asarray(var.numpy())))


def worker_group(strategy):
    """A `WorkerGroup` for a multi-worker strategy with W > 1 workers, else None."""
    if strategy is None or getattr(strategy, "cluster_resolver", None) is None:
        return None
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    if len(spec.get("chief", [])) + len(spec.get("worker", [])) <= 1:
        return None
    return WorkerGroup(strategy)
