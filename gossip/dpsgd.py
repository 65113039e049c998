"""D-PSGD: synchronous rounds of local training and neighbour averaging (Lian et al., 2017).

Each round every node trains, sends its model to all neighbours, and at the round's end replaces
its model by the Metropolis-Hastings weighted average of its own and its neighbours' models:
w_ij = 1 / (1 + max(deg_i, deg_j)) for a neighbour j, and w_ii = 1 - sum_j w_ij. The weights need
the neighbour's degree, so it travels with the model. A neighbour whose model did not arrive (it
crashed, or the link is down) simply leaves its weight with the own model. Models go to all
neighbours at once, and a node whose round overran skips to the round its neighbours are in
(`gossip.rounds`).
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from gossip import timers
from gossip.inbox import keep_newest
from gossip.learning import Learning
from gossip.protocol import RoundProtocol
from gossip.rounds import RoundClock, send_to_each
from transport.base import PeerId, Transport
from transport.codec import message
from transport.messages import ModelPayload


@message("dpsgd_model", version=1)
@dataclass(frozen=True, slots=True, eq=False)
class DpsgdModel:
    """A model after `round`, with the sender's degree for the Metropolis-Hastings weights."""

    round: int
    degree: int
    model: ModelPayload

    def __post_init__(self) -> None:
        if self.degree < 1:
            raise ValueError(f"degree must be >= 1, got {self.degree}")


@dataclass(frozen=True)
class DPSGD(RoundProtocol):
    """Decentralized parallel SGD over the current neighbours; `period` is seconds per round."""

    rounds: int
    period: float = 1.0

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {self.rounds}")
        if self.period <= 0:
            raise ValueError(f"period must be > 0, got {self.period}")

    async def run(self, transport: Transport, learning: Learning) -> None:
        inbox: dict[PeerId, DpsgdModel] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_newest, transport, inbox, DpsgdModel)
            clock = RoundClock(trio.current_time(), self.period)
            round_ = 1
            while round_ <= self.rounds:
                await learning.train()
                neighbours = sorted(transport.peers())
                update = DpsgdModel(
                    round=round_, degree=max(len(neighbours), 1), model=learning.export_model()
                )
                # Neighbours merge round `round_` at its end and drop its models after that.
                await send_to_each(
                    transport, neighbours, update, deadline=clock.end(round_), what=f"round {round_} model"
                )
                await timers.sleep_until(clock.end(round_))
                current = {peer: m for peer, m in inbox.items() if m.round == round_ and peer in neighbours}
                inbox.clear()
                mixing = metropolis_hastings(
                    transport.peer_id, len(neighbours), {p: m.degree for p, m in current.items()}
                )
                await learning.merge([(p, current[p].model) for p in sorted(current)], mixing=mixing)
                await learning.finish_round(round_)
                round_ = clock.next_round(round_, self.rounds, now=trio.current_time())
            nursery.cancel_scope.cancel()


def metropolis_hastings(
    self_id: PeerId, degree: int, neighbour_degrees: dict[PeerId, int]
) -> dict[PeerId, float]:
    """Mixing weights for the neighbours heard from, the rest going to the own model."""
    weights = {peer: 1.0 / (1 + max(degree, d)) for peer, d in neighbour_degrees.items()}
    weights[self_id] = 1.0 - sum(weights.values())
    return weights
