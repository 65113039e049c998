"""The aggregation interface: one call merges the models a node holds at the end of a round."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from p2pfl.model_state import ModelState


@dataclass(frozen=True, slots=True)
class Contribution:
    """A model offered for aggregation, who sent it, and its weight (e.g. its training samples)."""

    sender: str
    state: ModelState
    weight: float = 1.0


class Aggregator(ABC):
    """Merges the node's own model with the models it received.

    Rules work on the stacked flat vectors (`stack`), on the node's device, without per-parameter
    Python loops. `own` is always given: a rule that ignores it (plain mean of received models)
    says so, one that anchors on it (clipping around the own model) uses it.
    """

    @abstractmethod
    def aggregate(self, own: Contribution, received: Sequence[Contribution]) -> ModelState: ...

    def peer_scores(self) -> Mapping[str, float]:
        """What the rule has learned to think of each peer (e.g. reputation); empty for most rules."""
        return {}


def stack(contributions: Sequence[Contribution]) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat vectors as an (m, d) matrix and the weights as an (m,) vector, on the models' device."""
    if not contributions:
        raise ValueError("nothing to aggregate")
    matrix = torch.stack([c.state.flat for c in contributions])
    weights = torch.tensor([c.weight for c in contributions], dtype=matrix.dtype, device=matrix.device)
    return matrix, weights
