"""What a protocol may ask of the learning side.

Protocols live in `gossip` and never import torch: a model is an opaque `ModelPayload` to them,
and training, merging and evaluation happen behind this interface, which `p2pfl.Node` implements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from transport.base import PeerId
from transport.messages import ModelPayload


class Learning(Protocol):
    async def train(self) -> None:
        """Train the local model on local data (one local epoch or k steps, as the node is configured)."""

    def export_model(self) -> ModelPayload:
        """The current local model, ready to send."""

    async def merge(self, models: Sequence[tuple[PeerId, ModelPayload]]) -> None:
        """Merge received models into the local one. Models that fail validation are dropped, not raised."""

    async def finish_round(self, round: int) -> None:
        """Called once per completed round, e.g. to evaluate and record metrics."""
