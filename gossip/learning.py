"""What a protocol may ask of the learning side.

Protocols live in `gossip` and never import torch: a model is an opaque `ModelPayload` to them,
and training, merging and evaluation happen behind this interface, which `p2pfl.Node` implements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from transport.base import PeerId
from transport.messages import ModelPayload


class Learning(Protocol):
    async def train(self) -> None:
        """Train the local model on local data (one local epoch or k steps, as the node is configured)."""

    def export_model(self) -> ModelPayload:
        """The current local model, ready to send."""

    async def merge(
        self, models: Sequence[tuple[PeerId, ModelPayload]], *, mixing: Mapping[PeerId, float] | None = None
    ) -> None:
        """Merge received models into the local one. Models that fail validation are dropped, not raised.

        By default each model weighs what its payload says (e.g. its samples). A protocol with its own
        mixing matrix (D-PSGD) passes `mixing`: a weight per sender and one for the local peer.
        """

    async def adopt(self, sender: PeerId, model: ModelPayload) -> bool:
        """Replace the local model by `model` (e.g. a round's aggregate); False if it failed validation."""

    async def aggregate(self, models: Sequence[tuple[PeerId, ModelPayload]]) -> ModelPayload | None:
        """Merge received models, as a federated server would, without touching the local model.

        The local model takes part with weight zero (rules that anchor on it, like clipping, still
        use it as reference). None when no model passed validation.
        """

    async def finish_round(self, round: int) -> None:
        """Called once per completed round, e.g. to evaluate and record metrics."""
