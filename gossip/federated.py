"""Federated learning as a baseline: one fixed server samples `s` clients per round.

The server sends its model to the round's clients (to all at once), waits for their trained models
(all of them, or what has arrived when `round_timeout` passes), merges them as the aggregation rule
says and records the round. Clients adopt, train and answer. It runs on the same transport and
learning interface as the decentralized protocols, so an emulator run can put it beside them on the
same seed and data.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass

import trio

from gossip.learning import Learning
from gossip.protocol import RoundProtocol
from gossip.rounds import send_to_each
from gossip.values import is_int, is_seconds
from transport.base import PeerId, Received, Transport
from transport.codec import message
from transport.errors import PeerUnreachable
from transport.messages import ModelPayload

log = logging.getLogger(__name__)


@message("fl_task", version=1)
@dataclass(frozen=True, slots=True, eq=False)
class FlTask:
    """The server's model, to be trained as round `round`."""

    round: int
    model: ModelPayload


@message("fl_update", version=1)
@dataclass(frozen=True, slots=True, eq=False)
class FlUpdate:
    """A client's model trained for `round`."""

    round: int
    model: ModelPayload


@dataclass(frozen=True)
class FederatedLearning(RoundProtocol):
    """FedAvg-style rounds around the fixed `server`, sampling `s` of `clients` per round with `seed`."""

    rounds: int
    server: PeerId
    clients: tuple[PeerId, ...]
    s: int = 10
    round_timeout: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not is_int(self.rounds) or self.rounds < 0:
            raise ValueError(f"rounds must be an int >= 0, got {self.rounds!r}")
        if not is_int(self.s) or not 1 <= self.s <= len(self.clients):
            raise ValueError(f"s must be an int in [1, {len(self.clients)} clients], got {self.s!r}")
        if self.server in self.clients:
            raise ValueError(f"the server {self.server!r} cannot also be a client")
        timeout = self.round_timeout
        if timeout is not None and not is_seconds(timeout):
            raise ValueError(f"round_timeout must be None or a finite number of seconds > 0, got {timeout!r}")

    async def run(self, transport: Transport, learning: Learning) -> None:
        if transport.peer_id == self.server:
            await self._serve_rounds(transport, learning)
        else:
            await _Client(transport, learning, self.server).run()

    async def _serve_rounds(self, transport: Transport, learning: Learning) -> None:
        rng = random.Random(self.seed)
        clients = sorted(self.clients)
        for round_ in range(1, self.rounds + 1):
            sample = rng.sample(clients, self.s)
            task = FlTask(round_, learning.export_model())
            # At once, so a client that never reads holds up the others' start by nothing; a task
            # still on its way when the round times out would come back too late anyway.
            timeout = self.round_timeout if self.round_timeout is not None else math.inf
            await send_to_each(
                transport, sample, task, deadline=trio.current_time() + timeout, what=f"round {round_} task"
            )
            updates = await self._collect(transport, round_, set(sample))
            merged = await learning.aggregate([(peer, updates[peer]) for peer in sorted(updates)])
            if merged is not None:
                await learning.adopt(transport.peer_id, merged)
            await learning.finish_round(round_)

    async def _collect(
        self, transport: Transport, round_: int, sample: set[PeerId]
    ) -> dict[PeerId, ModelPayload]:
        updates: dict[PeerId, ModelPayload] = {}
        with trio.move_on_after(self.round_timeout if self.round_timeout is not None else float("inf")):
            async for event in transport.events:
                if not isinstance(event, Received) or not isinstance(event.message, FlUpdate):
                    continue
                if event.message.round == round_ and event.sender in sample:
                    updates[event.sender] = event.message.model
                    if len(updates) == len(sample):
                        break
        return updates


class _Client:
    """Adopts each task from the server, trains it and answers; a newer task pre-empts an older one."""

    def __init__(self, transport: Transport, learning: Learning, server: PeerId) -> None:
        self.transport = transport
        self.learning = learning
        self.server = server
        self.latest = 0
        self.training = trio.CancelScope()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            async for event in self.transport.events:
                task = event.message if isinstance(event, Received) else None
                if isinstance(task, FlTask) and event.sender == self.server and task.round > self.latest:
                    self.latest = task.round
                    self.training.cancel()
                    self.training = trio.CancelScope()
                    nursery.start_soon(self._train, task, self.training)

    async def _train(self, task: FlTask, scope: trio.CancelScope) -> None:
        with scope:
            if not await self.learning.adopt(self.server, task.model):
                return
            await self.learning.train()
            try:
                await self.transport.send(self.server, FlUpdate(task.round, self.learning.export_model()))
            except PeerUnreachable as exc:
                log.info("%s could not return round %d: %s", self.transport.peer_id, task.round, exc)
