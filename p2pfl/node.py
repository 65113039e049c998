"""`Node`: the composition root that joins a transport, a round protocol, a learner and an aggregator."""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import trio

from gossip.learning import Learning
from gossip.protocol import RoundProtocol
from p2pfl.aggregation import Aggregator, Contribution, FedAvg
from p2pfl.attacks.model_poisoning import ModelPoisoning
from p2pfl.compute import Compute, ThreadCompute
from p2pfl.errors import IncompatibleModel
from p2pfl.learner import LocalLearner
from p2pfl.model_state import ModelState
from transport.base import PeerId, Transport
from transport.messages import ModelPayload

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """What a node measured when it finished a round. Accuracy and loss are None when not evaluated."""

    round: int
    time: float
    accuracy: float | None
    loss: float | None
    bytes_sent: int
    bytes_received: int


class RoundObserver(Protocol):
    """Told of every round a node records, as it records it (e.g. an emulator applying churn on time)."""

    def round_finished(self, node: Node, record: RoundRecord) -> None: ...


@dataclass(frozen=True, slots=True)
class NodeStatus:
    peer_id: PeerId
    round: int
    accuracy: float | None
    peers: tuple[PeerId, ...]
    bytes_in: int
    bytes_out: int
    models_rejected: int
    reputation: dict[PeerId, float]  # per-peer scores of the aggregation rule, if it keeps any


class Node:
    """A learning peer.

    `local_steps` is how many SGD steps each round trains (None: one epoch of local data);
    `evaluate_every` sets how often (in rounds) the model is tested, 0 for never; a round that
    skipped past a multiple of it is tested too (`round_due`). `resumed_round` is the round the
    learner's model comes from when the node resumes a run (a daemon restored from its checkpoint
    after round k passes k): without it the first round recorded would count as one that skipped
    past every multiple since round 0, and be tested off schedule.

    `attack` turns the node Byzantine, for experiments: every model it sends is crafted by the
    attack from its own model and the models it last received (what a real attacker in its place
    would know), with randomness from `attack_seed`. It still runs the honest protocol otherwise.
    """

    def __init__(
        self,
        transport: Transport,
        learner: LocalLearner,
        *,
        protocol: RoundProtocol,
        aggregator: Aggregator | None = None,
        local_steps: int | None = None,
        evaluate_every: int = 1,
        compute: Compute | None = None,
        observer: RoundObserver | None = None,
        attack: ModelPoisoning | None = None,
        attack_seed: int = 0,
        resumed_round: int = 0,
    ) -> None:
        if resumed_round < 0:
            raise ValueError(f"resumed_round must be >= 0, got {resumed_round}")
        if local_steps is not None and local_steps < 1:
            raise ValueError(f"local_steps must be >= 1 or None, got {local_steps}")
        if evaluate_every < 0:
            raise ValueError(f"evaluate_every must be >= 0, got {evaluate_every}")
        self.transport = transport
        self.learner = learner
        self.protocol = protocol
        self.aggregator = aggregator or FedAvg()
        self.local_steps = local_steps
        self.evaluate_every = evaluate_every
        self.compute = compute or ThreadCompute()
        self.observer = observer
        self.attack = attack
        self._attack_generator = torch.Generator().manual_seed(attack_seed)
        self._last_received: list[ModelState] = []
        self.history: list[RoundRecord] = []
        self.models_rejected = 0
        self.resumed_round = resumed_round

    @property
    def peer_id(self) -> PeerId:
        return self.transport.peer_id

    async def run(self) -> None:
        """Run the protocol to its end (or until cancelled)."""
        await self.protocol.run(self.transport, _NodeLearning(self))

    def status(self) -> NodeStatus:
        last = self.history[-1] if self.history else None
        accuracy = next((r.accuracy for r in reversed(self.history) if r.accuracy is not None), None)
        return NodeStatus(
            peer_id=self.peer_id,
            round=last.round if last else self.resumed_round,
            accuracy=accuracy,
            peers=tuple(sorted(self.transport.peers())),
            bytes_in=self.transport.stats.bytes_received,
            bytes_out=self.transport.stats.bytes_sent,
            models_rejected=self.models_rejected,
            reputation=dict(self.aggregator.peer_scores()),
        )


class _NodeLearning(Learning):
    """The node as the protocol sees it: train, export, merge, finish a round."""

    def __init__(self, node: Node) -> None:
        self._node = node

    async def train(self) -> None:
        node = self._node
        steps = node.local_steps or -(-node.learner.num_samples // node.learner.batch_size)
        await node.compute.run(lambda n: node.learner.train(steps=n), steps=steps)

    def export_model(self) -> ModelPayload:
        node = self._node
        state = node.learner.state()
        if node.attack is not None:
            state = node.attack.craft_state(
                state, node._last_received, round=len(node.history), generator=node._attack_generator
            )
        return ModelPayload(tensors=state.to_numpy(), weight=float(node.learner.num_samples))

    async def merge(
        self, models: Sequence[tuple[PeerId, ModelPayload]], *, mixing: Mapping[PeerId, float] | None = None
    ) -> None:
        node = self._node
        own = node.learner.state()
        received = self._validated(own, models)
        if mixing is not None:
            received = [Contribution(c.sender, c.state, mixing[c.sender]) for c in received]
        if received:
            own_weight = mixing[node.peer_id] if mixing is not None else float(node.learner.num_samples)
            node.learner.load(
                node.aggregator.aggregate(Contribution(node.peer_id, own, own_weight), received)
            )
        await trio.lowlevel.checkpoint()

    async def adopt(self, sender: PeerId, model: ModelPayload) -> bool:
        node = self._node
        (received,) = self._validated(node.learner.state(), [(sender, model)]) or (None,)
        if received is not None:
            node.learner.load(received.state)
        await trio.lowlevel.checkpoint()
        return received is not None

    async def aggregate(self, models: Sequence[tuple[PeerId, ModelPayload]]) -> ModelPayload | None:
        node = self._node
        own = node.learner.state()
        received = self._validated(own, models)
        await trio.lowlevel.checkpoint()
        if not received:
            return None
        merged = node.aggregator.aggregate(Contribution(node.peer_id, own, 0.0), received)
        return ModelPayload(tensors=merged.to_numpy(), weight=sum(c.weight for c in received))

    def _validated(
        self, own: ModelState, models: Sequence[tuple[PeerId, ModelPayload]]
    ) -> list[Contribution]:
        """Contributions for the models that fit the local one; the others are logged and counted."""
        node = self._node
        valid = []
        for sender, payload in models:
            try:
                valid.append(_contribution(own, sender, payload))
            except IncompatibleModel as exc:
                node.models_rejected += 1
                log.warning("%s rejected a model from %s: %s", node.peer_id, sender, exc)
                node.transport.penalise(sender, f"bad model: {exc}")
        if node.attack is not None and valid:
            node._last_received = [c.state for c in valid]
        return valid

    async def finish_round(self, round: int) -> None:
        node = self._node
        accuracy = loss = None
        previous = node.history[-1].round if node.history else node.resumed_round
        every = node.evaluate_every
        if every and round_due(round, previous, every) and node.learner.has_test_data:
            evaluation = node.learner.evaluate()
            accuracy, loss = evaluation.accuracy, evaluation.loss
        stats = node.transport.stats
        now = trio.current_time()
        record = RoundRecord(round, now, accuracy, loss, stats.bytes_sent, stats.bytes_received)
        node.history.append(record)
        if node.observer is not None:
            node.observer.round_finished(node, record)
        await trio.lowlevel.checkpoint()


def round_due(round: int, previous: int, every: int) -> bool:
    """Whether a task done every `every` rounds (testing the model, a checkpoint) is due at `round`,
    the round a node records after `previous`: a multiple of `every`, or a round that skipped past
    one. Nodes skip rounds: one that overruns its period goes on with the round whose period holds
    now (`gossip.rounds.RoundClock`), and a MoDeST node records only the rounds whose aggregate it
    adopts. With `every` = 3 and rounds 1, 4, 7, 10, ... no round is a multiple, so the task would
    never run.
    """
    return round % every == 0 or round // every > previous // every


def _contribution(own: ModelState, sender: PeerId, payload: ModelPayload) -> Contribution:
    """Validate a received model against the own one; raise `IncompatibleModel` if it does not fit."""
    if not (math.isfinite(payload.weight) and payload.weight > 0):
        raise IncompatibleModel(f"weight must be finite and positive, got {payload.weight}")
    return Contribution(sender, _state_of(own, payload), payload.weight)


# Received models already converted, by payload. In an emulation one decoded message reaches all of
# a node's neighbours as the same payload object: each converts it once, not once per recipient.
# States are never changed in place (aggregation rules build new tensors), so sharing one is safe.
_converted: weakref.WeakKeyDictionary[ModelPayload, ModelState] = weakref.WeakKeyDictionary()


def _state_of(own: ModelState, payload: ModelPayload) -> ModelState:
    """`own.from_numpy(payload.tensors)`, reused for a payload converted before against the same layout."""
    state = _converted.get(payload)
    if state is not None and not own.extras and state.layout == own.layout and state.device == own.device:
        return state
    state = own.from_numpy(payload.tensors)
    if not own.extras:
        _converted[payload] = state
    return state
