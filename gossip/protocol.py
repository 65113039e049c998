"""The round-protocol interface, so baselines and new protocols are interchangeable."""

from __future__ import annotations

from abc import ABC, abstractmethod

from gossip.learning import Learning
from transport.base import Transport


class RoundProtocol(ABC):
    """Decides who trains, who talks to whom and when; the learning side does the math."""

    @abstractmethod
    async def run(self, transport: Transport, learning: Learning) -> None:
        """Run the protocol until it has done its rounds or is cancelled."""
