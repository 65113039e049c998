"""An aggregation rule of one's own, for `p2pfl sim run` and node configs: `distance_filter:DistanceFilter`.

Each node drops the received models that lie much farther from its own model than the typical one
does, then averages what is left with its own model. A rule is any `p2pfl.aggregation.Aggregator`:
one method, given the node's own model and the ones it received (each a `Contribution`: sender,
`ModelState`, weight), returns the merged `ModelState`. Work on the stacked flat vectors
(`stack`), not parameter by parameter.

    p2pfl sim run examples/custom_rule/compare.toml
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from p2pfl.aggregation import Aggregator, Contribution, stack
from p2pfl.model_state import ModelState


class DistanceFilter(Aggregator):
    """Weighted mean of the own model and the received models within `factor` x the median distance
    of the received ones from the own model."""

    def __init__(self, *, factor: float = 2.0) -> None:
        if not factor >= 1.0:  # also refuses NaN
            raise ValueError(f"factor must be >= 1, got {factor}")  # reported naming the rule
        self.factor = factor

    def aggregate(self, own: Contribution, received: Sequence[Contribution]) -> ModelState:
        if not received:
            return own.state
        matrix, weights = stack(received)
        distances = torch.linalg.vector_norm(matrix - own.state.flat, dim=1)
        kept = distances <= self.factor * distances.median()
        weights = torch.cat([weights.new_tensor([own.weight]), weights[kept]])
        rows = torch.cat([own.state.flat.unsqueeze(0), matrix[kept]])
        return own.state.with_flat((weights / weights.sum()) @ rows)
