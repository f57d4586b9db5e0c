"""Which training queries each refresh cycle (one Keras epoch) trains, and where it sits in the run.

Two schedules, both deterministic functions of the cycle index (so a resumed run continues exactly):

* fixed (`slowdown=False`): every cycle trains `size` queries; cycles run on across passes over the
  queries (a cycle may end in the next pass).
* MATLAB (`slowdown=True`, `trainWeakly.m`): the cache is also refreshed at the end of every pass
  (MATLAB epoch), and the refresh interval grows by `1 / lr_decay_factor` at every learning-rate
  drop ("the cache becomes stale slower" as the steps get smaller): `compFeatsFrequency` = 1000
  queries, doubled with `lrDownFactor` = 2 every `lrDownFreq` = 5 epochs. Pass p uses cycles of
  `min(num_queries, round(size · (1 / lr_decay_factor) ** floor(p / lr_decay_every)))` queries;
  the last cycle of a pass holds the remainder.

With `refresh_share` (the CPU recipe) the cycles are made longer than `size` when the database
(and the validation split) is large, so that refreshing the cache and validating stay a bounded
share of a run's time: `share_cycle_size`.

Pure Python; `HardNegativeMiner` draws the query order of each pass from its seed.
"""

import itertools
import math

from tf_netvlad.training.config import TrainConfig

# A trained image costs about three forward passes (forward, input gradient, weight gradient); a
# refresh extracts each image with one forward pass.
TRAINING_PASSES_PER_IMAGE = 3


def share_cycle_size(size, share, num_db, own_query_fraction, images_per_tuple, num_queries,
                     extra_images=0):
    """Queries per refresh cycle such that a refresh is at most `share` of a cycle's image passes.

    A refresh extracts the whole database and the cycle's queries that are not database images
    (`own_query_fraction` of them; with `db_queries` the others reuse their database descriptor),
    and the cycle ends with a validation of `extra_images` images: `num_db + extra + f·Q` forward
    passes. Training the cycle's Q tuples of `images_per_tuple` images costs about
    `TRAINING_PASSES_PER_IMAGE · images_per_tuple · Q`. The refresh's share of the two stays at
    most `share` when

        Q ≥ (num_db + extra) · (1 − share) / (3 · images_per_tuple · share − f · (1 − share)).

    Returns that Q rounded up, at least `size` (MATLAB's 1000 queries: a small database keeps the
    reference interval) and at most `num_queries` (one cycle per pass). `share` None: `size`.
    """
    size, num_queries = int(size), int(num_queries)
    if share is None:
        return min(size, num_queries)
    if not 0 < share < 1:
        raise ValueError(f"`share` must be in (0, 1) or None. Received: {share!r}")
    per_query = TRAINING_PASSES_PER_IMAGE * int(images_per_tuple) * share - own_query_fraction * (1 - share)
    if per_query <= 0:
        return num_queries
    needed = math.ceil((num_db + extra_images) * (1 - share) / per_query - 1e-9)
    return min(num_queries, max(size, needed))


class RefreshSchedule:
    """Refresh cycles over `num_queries` training queries.

    Args:
        num_queries: training queries per pass (those with a positive).
        size: queries per cycle (`cache_refresh_queries`; the first passes' size when `slowdown`).
        slowdown: MATLAB's schedule (see the module docstring).
        lr_decay_every: passes between learning-rate drops; lr_decay_factor: LR multiplier per drop.
    """

    def __init__(self, num_queries, size, slowdown=False, lr_decay_every=TrainConfig.lr_decay_every,
                 lr_decay_factor=TrainConfig.lr_decay_factor):
        if int(num_queries) < 1 or int(size) < 1:
            raise ValueError(f"`num_queries` and `size` must be >= 1. Received: {num_queries}, {size}")
        if not (lr_decay_every > 0 and lr_decay_factor > 0):
            raise ValueError("`lr_decay_every` and `lr_decay_factor` must be > 0. Received: "
                             f"{lr_decay_every!r}, {lr_decay_factor!r}")
        self.num_queries = int(num_queries)
        self.size = min(int(size), self.num_queries)
        self.slowdown = bool(slowdown)
        self.lr_decay_every = float(lr_decay_every)
        self.lr_decay_factor = float(lr_decay_factor)

    @property
    def max_size(self):
        """The largest cycle (the tuple table's capacity)."""
        return self.num_queries if self.slowdown else self.size

    def drops(self, passes):
        """Learning-rate drops after `passes` (float) passes over the queries."""
        return math.floor(passes / self.lr_decay_every + 1e-9)

    def pass_cycle_size(self, pass_index):
        """Queries per cycle in pass `pass_index` (MATLAB schedule)."""
        grown = self.size * (1.0 / self.lr_decay_factor) ** self.drops(pass_index)
        return int(min(self.num_queries, max(1, round(grown))))

    def cycle(self, cycle):
        """`(pass index, offset in that pass's query order, number of queries)` of cycle `cycle`."""
        cycle = int(cycle)
        if cycle < 0:
            raise ValueError(f"`cycle` must be >= 0. Received: {cycle}")
        if not self.slowdown:
            pass_index, offset = divmod(cycle * self.size, self.num_queries)
            return pass_index, offset, self.size
        pass_index = 0
        while True:
            size = self.pass_cycle_size(pass_index)
            per_pass = -(-self.num_queries // size)
            if cycle < per_pass:
                offset = cycle * size
                return pass_index, offset, min(size, self.num_queries - offset)
            cycle -= per_pass
            pass_index += 1
            if size == self.num_queries:  # one cycle per pass from here on
                return pass_index + cycle, 0, self.num_queries

    def passes_before(self, cycle):
        """Passes over the queries completed when cycle `cycle` starts (drives the LR schedule)."""
        pass_index, offset, _ = self.cycle(cycle)
        return pass_index + offset / self.num_queries

    def learning_rate(self, lr, cycle):
        """The step-decayed learning rate of cycle `cycle`."""
        return lr * self.lr_decay_factor ** self.drops(self.passes_before(cycle))

    def num_cycles(self, passes=None, max_cycles=None):
        """Cycles of a run of `passes` passes over the queries, at most `max_cycles` (None: no bound).

        The run trains every cycle that starts before `passes` passes are done. With `slowdown`
        the cycles end at pass ends, so a whole number of passes is exact (MATLAB: `nEpoch` = 30
        passes on Pitts30k's 7,320 queries with a positive are 85 cycles); with the fixed schedule
        the last cycle may end up to one cycle beyond. Returns None when neither bounds the run.
        """
        if passes is None:
            return None if max_cycles is None else int(max_cycles)
        if not passes > 0:
            raise ValueError(f"`passes` must be > 0. Received: {passes!r}")
        if not self.slowdown:
            count = math.ceil(passes * self.num_queries / self.size - 1e-9)
        else:
            count = 0
            while self.passes_before(count) < passes - 1e-9:
                count += 1
        return count if max_cycles is None else min(count, int(max_cycles))

    def cycle_indices(self, start=0, passes=None, max_cycles=None):
        """The cycle indices `start, start + 1, ...` of a run (see `num_cycles`); endless when unbounded."""
        stop = self.num_cycles(passes, max_cycles)
        return itertools.count(start) if stop is None else range(start, stop)
