"""Independent, reproducible seeds for every random choice in a run, derived from one root seed."""

from __future__ import annotations

from enum import IntEnum

import numpy as np


def derive_seed(root: int, *keys: int) -> int:
    """A 63-bit seed that depends only on `root` and `keys` (e.g. a purpose and a node index)."""
    return int(
        np.random.SeedSequence([root, *keys]).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1
    )


class Purpose(IntEnum):
    """What a seed derived from a run's seed is for: every random choice has a stream of its own, so
    that e.g. changing the data split never changes the topology. The values are part of every
    seeded result: add new ones at the end, never renumber."""

    TOPOLOGY = 0
    SPLIT = 1
    BATCHES = 2
    PROTOCOL = 3
    INIT = 4
    CHURN = 5
    SCHEDULER = 6
    BYZANTINE = 7
    ATTACK = 8
    NETWORK = 9
    SPEED = 10
    AGGREGATION = 11
    SHARDS = 12
