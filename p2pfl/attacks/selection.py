"""Which nodes of an emulation are Byzantine."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["choose_byzantine"]


def choose_byzantine(
    num_nodes: int, fraction: float | None = None, count: int | None = None, *, seed: int
) -> list[int]:
    """Sorted indices of the Byzantine nodes among `range(num_nodes)`, drawn uniformly with `seed`.

    Give exactly one of `count` (0 to num_nodes) or `fraction` (0 to 1), which picks
    `floor(fraction * num_nodes)` nodes; a tolerance of 1e-9 keeps decimal fractions whole
    (0.29 of 100 nodes is 29, not 28 from the binary rounding of 0.29). The same arguments always
    give the same nodes. Seeds must be >= 0 (NumPy's generator; Python's `random.Random` would give
    `seed` and `-seed` the same nodes).
    """
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 0:
        raise ValueError(f"num_nodes must be an integer >= 0, got {num_nodes!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if (fraction is None) == (count is None):
        raise ValueError("give exactly one of fraction= or count=")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= num_nodes:
            raise ValueError(f"count must be an integer in [0, num_nodes={num_nodes}], got {count!r}")
        k = count
    else:
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
        k = min(num_nodes, math.floor(fraction * num_nodes + 1e-9))
    chosen = np.random.default_rng(seed).choice(num_nodes, size=k, replace=False)
    return sorted(int(i) for i in chosen)
