"""Independent, reproducible seeds for every random choice in a run, derived from one root seed."""

from __future__ import annotations

import numpy as np


def derive_seed(root: int, *keys: int) -> int:
    """A 63-bit seed that depends only on `root` and `keys` (e.g. a purpose and a node index)."""
    return int(
        np.random.SeedSequence([root, *keys]).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1
    )
