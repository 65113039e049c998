"""A round protocol of one's own for scenario files: `protocol = "periodic:PeriodicAveraging"`.

Local SGD with periodic averaging: every node trains each round, but talks to its neighbours only
every `every`-th round, where it averages as D-PSGD does. Communication falls by `every` times;
the scenario beside this file shows what that costs in accuracy.

A protocol decides who talks to whom and when; the node's learning side (`Learning`) trains,
exports, merges and records. The emulator builds one per node as
`PeriodicAveraging(rounds=..., period=..., seed=<the node's>, **protocol_params)`, runs it on the
graph's links and counts the node done when `run` returns. `gossip` has the building blocks used
here: an inbox that keeps each neighbour's newest model, a grid of round ends, sends under a
deadline, sleeps on a shared timer, and D-PSGD's message and weights.

    p2pfl sim run examples/custom_protocol/compare.toml
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from gossip import timers
from gossip.dpsgd import DpsgdModel, metropolis_hastings
from gossip.inbox import keep_newest
from gossip.learning import Learning
from gossip.protocol import RoundProtocol
from gossip.rounds import RoundClock, send_to_each
from transport.base import PeerId, Transport


@dataclass(frozen=True)
class PeriodicAveraging(RoundProtocol):
    rounds: int
    period: float
    seed: int  # every node gets one; this protocol draws nothing at random
    every: int = 5

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")  # reported naming the protocol

    async def run(self, transport: Transport, learning: Learning) -> None:
        inbox: dict[PeerId, DpsgdModel] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_newest, transport, inbox, DpsgdModel)
            clock = RoundClock(trio.current_time(), self.period)
            round_ = 1
            while round_ <= self.rounds:
                await learning.train()
                talks = round_ % self.every == 0 or round_ == self.rounds
                neighbours = sorted(transport.peers())
                if talks:
                    update = DpsgdModel(round_, max(len(neighbours), 1), learning.export_model())
                    end = clock.end(round_)
                    await send_to_each(transport, neighbours, update, deadline=end, what="model")
                await timers.sleep_until(clock.end(round_))
                current = {p: m for p, m in inbox.items() if m.round == round_ and p in neighbours}
                inbox.clear()
                if talks:
                    degrees = {p: m.degree for p, m in current.items()}
                    mixing = metropolis_hastings(transport.peer_id, len(neighbours), degrees)
                    await learning.merge([(p, current[p].model) for p in sorted(current)], mixing=mixing)
                await learning.finish_round(round_)
                round_ = clock.next_round(round_, self.rounds, now=trio.current_time())
            nursery.cancel_scope.cancel()
