"""FedAvg: the weighted mean, the baseline every other rule is measured against."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from p2pfl.aggregation.base import Aggregator, Contribution
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
        # The coefficients from Python, not tensor ops: emulations merge once per node and round,
        # and every small tensor op counts there.
        matrix = torch.stack([c.state.flat for c in contributions])
        coefficients = torch.tensor([w / total for w in weights], dtype=matrix.dtype, device=matrix.device)
        return own.state.with_flat(coefficients @ matrix)
