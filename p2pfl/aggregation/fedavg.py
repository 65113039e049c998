"""FedAvg: the weighted mean, the baseline every other rule is measured against."""

from __future__ import annotations

from collections.abc import Sequence

from p2pfl.aggregation.base import Aggregator, Contribution, stack
from p2pfl.model_state import ModelState


class FedAvg(Aggregator):
    """Weighted mean of the own model and the received ones.

    With `include_own=False` the own model is left out (a federated server's view); weights must be
    non-negative and not all zero.
    """

    def __init__(self, *, include_own: bool = True) -> None:
        self.include_own = include_own

    def aggregate(self, own: Contribution, received: Sequence[Contribution]) -> ModelState:
        contributions = [own, *received] if self.include_own else list(received)
        weights = [c.weight for c in contributions]
        total = sum(weights)
        if not (total > 0 and min(weights) >= 0):
            raise ValueError("FedAvg weights must be non-negative with a positive sum")
        # The total from Python, not a tensor sum: emulations merge once per node and round, and
        # every small tensor op counts there.
        matrix, weight_vector = stack(contributions)
        return own.state.with_flat((weight_vector / total) @ matrix)
