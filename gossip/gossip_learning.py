"""Gossip learning: every node trains, pushes its model to random neighbours, merges what it got.

Rounds are periods of the node's clock (virtual time in the emulator). Within a round a node
trains, sends, and buffers what arrives; at the round's end it merges the buffer. Merging at fixed
instants, with the buffer sorted by sender, makes the outcome independent of the order in which
trio happens to schedule deliveries, which is what keeps emulator runs deterministic for a seed.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import trio

from gossip import timers
from gossip.inbox import keep_newest
from gossip.learning import Learning
from gossip.protocol import RoundProtocol
from transport.base import PeerId, Transport
from transport.errors import PeerUnreachable
from transport.messages import ModelPayload, ModelUpdate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GossipLearning(RoundProtocol):
    """Push gossip of models.

    `rounds`: the last round to run; `period`: seconds per round; `fanout`: neighbours each model
    is pushed to per round; `seed`: the choice of neighbours. `start_round` > 1 resumes a node
    (e.g. a restarted daemon from its checkpoint) at that round: it runs rounds start_round..rounds.
    """

    rounds: int
    period: float = 1.0
    fanout: int = 1
    seed: int = 0
    start_round: int = 1

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {self.rounds}")
        if self.period <= 0:
            raise ValueError(f"period must be > 0, got {self.period}")
        if self.fanout < 1:
            raise ValueError(f"fanout must be >= 1, got {self.fanout}")
        if self.start_round < 1:
            raise ValueError(f"start_round must be >= 1, got {self.start_round}")

    async def run(self, transport: Transport, learning: Learning) -> None:
        # A resumed node draws a fresh stream for its seed and round rather than replaying round 1's.
        rng = random.Random(self.seed if self.start_round == 1 else f"{self.seed}:{self.start_round}")
        inbox: dict[PeerId, ModelUpdate] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_newest, transport, inbox, ModelUpdate)
            start = trio.current_time()
            first = self.start_round
            for round_ in range(first, self.rounds + 1):
                await learning.train()
                update = ModelUpdate(round=round_, model=learning.export_model())
                neighbours = sorted(transport.peers())
                for peer in rng.sample(neighbours, min(self.fanout, len(neighbours))):
                    try:
                        await transport.send(peer, update)
                    except PeerUnreachable as exc:
                        log.info("could not push round %d model: %s", round_, exc)
                await timers.sleep_until(start + (round_ - first + 1) * self.period)
                received: list[tuple[PeerId, ModelPayload]] = [
                    (sender, inbox[sender].model) for sender in sorted(inbox)
                ]
                inbox.clear()
                await learning.merge(received)
                await learning.finish_round(round_)
            nursery.cancel_scope.cancel()
