"""Gossip learning: every node trains, pushes its model to random neighbours, merges what it got.

Rounds are periods of the node's clock (virtual time in the emulator). Within a round a node
trains, sends (to its fanout peers at once), and buffers what arrives; at the round's end it merges
the buffer. A round that overruns makes the node skip the periods it missed (`gossip.rounds`).
Merging at fixed instants, with the buffer sorted by sender, makes the outcome independent of the
order in which trio happens to schedule deliveries, which is what keeps emulator runs deterministic
for a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import trio

from gossip import timers
from gossip.inbox import keep_newest
from gossip.learning import Learning
from gossip.protocol import RoundProtocol
from gossip.rounds import RoundClock, send_to_each
from transport.base import PeerId, Transport
from transport.messages import ModelPayload, ModelUpdate


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
            clock = RoundClock(trio.current_time(), self.period, self.start_round)
            round_ = self.start_round
            while round_ <= self.rounds:
                await learning.train()
                update = ModelUpdate(round=round_, model=learning.export_model())
                neighbours = sorted(transport.peers())
                # A push gets one period: a model still on its way by then is stale when it lands.
                await send_to_each(
                    transport,
                    rng.sample(neighbours, min(self.fanout, len(neighbours))),
                    update,
                    deadline=trio.current_time() + self.period,
                    what=f"round {round_} model",
                )
                await timers.sleep_until(clock.end(round_))
                received: list[tuple[PeerId, ModelPayload]] = [
                    (sender, inbox[sender].model) for sender in sorted(inbox)
                ]
                inbox.clear()
                await learning.merge(received)
                await learning.finish_round(round_)
                round_ = clock.next_round(round_, self.rounds, now=trio.current_time())
            nursery.cancel_scope.cancel()
