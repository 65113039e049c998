"""MoDeST: decentralized sampling of each round's trainers and aggregators (ALGORITHMS.md section 1).

No node is special. For round r every node that needs to know computes the same order over the peers
its membership view calls active (`sampling.sample_order`) and takes the first ones that answer a
ping. Sample(r) trains round r; the first `a` available nodes of Sample(r+1) aggregate the models of
round r and send the aggregate to all of Sample(r+1), who adopt it and train round r+1.

Round 0 is the initial model: the first `s` available nodes of order(1) train round 1 on their own
initial models (every node checks whether it is one of them).

A node knows round r is done when it adopts the aggregate of round r; that is when it records the
round (`Learning.finish_round`), so per-round metrics come from the nodes of Sample(r+1). Messages of
stale rounds are dropped and a newer aggregate pre-empts training on an older one, so a slow or
partitioned node can never drag the system back. Views ride on every model message; a node that
joins advertises itself to a few peers and a node that stops gracefully advertises its leave.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice

import trio

from gossip import timers
from gossip.learning import Learning
from gossip.membership import MemberList, View, ViewEntry
from gossip.modest_settings import ModestSettings
from gossip.ping import Ping, Pinger, Pong
from gossip.protocol import RoundProtocol
from gossip.rounds import send_to_each
from gossip.sampling import active_order, sample_order, select_available
from transport.base import PeerId, Received, Transport
from transport.codec import message
from transport.errors import PeerUnreachable
from transport.messages import ModelPayload
from transport.outbox import Outbox

log = logging.getLogger(__name__)

_LEAVE_DEADLINE = 1.0  # seconds a stopping node spends telling peers it leaves


@message("modest_model", version=2)
@dataclass(frozen=True, slots=True, eq=False)
class ModestModel:
    """A model of `round`: trained by a member of Sample(round), or (`aggregated`) their merge.

    `view` is the sender's view as its differences from the member list whose digest is `base`
    (empty `base`: the whole view). Version 1 carried the whole view every time.
    """

    round: int
    aggregated: bool
    model: ModelPayload
    view: list[ViewEntry]
    base: bytes


@message("membership_update", version=2)
@dataclass(frozen=True, slots=True, eq=False)
class MembershipUpdate:
    """A view sent outside a round: a join or leave advertisement, or (`reply`=False) the answer to one.

    `view` and `base` as in `ModestModel`. A node that gets a view against a member list it does not
    have asks for the whole view with a `reply` update of its own whole view (empty `base`).
    """

    view: list[ViewEntry]
    reply: bool
    base: bytes


@dataclass(frozen=True)
class Modest(RoundProtocol):
    """The MoDeST round protocol.

    `participants`: peers known to be members from the start (the bootstrap view; every node of a
    deployment should be given the same list, which then never travels: only the differences from
    it do). A `MemberList` shares one list between the nodes of an emulation. A node not in it
    joins: it advertises itself to `join_fanout` of them and trains once a sample picks it. The run
    ends on this node when it has adopted the aggregate of round `rounds`; a node never sampled
    again serves until cancelled. Cancelled before that, it advertises its leave to `join_fanout`
    peers unless `leave_on_stop` is False (an emulator stopping every node at once has nobody left
    to tell).
    """

    rounds: int
    participants: tuple[PeerId, ...] | MemberList
    settings: ModestSettings = field(default_factory=ModestSettings)
    join_fanout: int = 3
    leave_on_stop: bool = True

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {self.rounds}")
        if self.join_fanout < 1:
            raise ValueError(f"join_fanout must be >= 1, got {self.join_fanout}")

    async def run(self, transport: Transport, learning: Learning) -> None:
        await _ModestNode(self, transport, learning).run()


class _ModestNode:
    """One node's MoDeST state: its view, the round it follows, and what it buffers as aggregator."""

    def __init__(self, protocol: Modest, transport: Transport, learning: Learning) -> None:
        self.protocol = protocol
        self.settings = protocol.settings
        self.transport = transport
        self.learning = learning
        self.own = transport.peer_id
        self.view = View.with_members(self.own, protocol.participants)
        self.joining = self.own not in protocol.participants
        self.asked_for_views: set[PeerId] = set()  # peers with another member list, asked once
        self.view.join(self.own, 0)
        self.adopted_round = 0  # newest aggregate this node adopted (0: the initial model)
        self.aggregated_round = 0  # newest round this node aggregated
        self.buffers: dict[int, dict[PeerId, ModelPayload]] = {}
        self.training: trio.CancelScope | None = None
        # Held while a round adopts and trains. A pre-empted round may still be in a training step
        # (a worker thread, which trio cannot interrupt): the newer one waits for it to let go of
        # the model rather than load and train it from a second thread at the same time.
        self.model_in_use = trio.Lock()
        self.finished = trio.Event()

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                # Replies (pongs, answers to join adverts) go out through the outbox, never awaited
                # in `_serve`: a peer that asks and stops reading must not hold up every other event.
                self.outbox = Outbox(self.transport, nursery)
                self.pinger = Pinger(
                    self.transport,
                    self.outbox,
                    interval=self.settings.ping_interval,
                    answer_timeout=self.settings.ping_timeout,
                )
                nursery.start_soon(self._serve)
                if self.joining:
                    nursery.start_soon(self._advertise, self.protocol.join_fanout, True)
                elif self.protocol.rounds > 0:
                    nursery.start_soon(self._start_if_sampled)
                else:
                    self.finished.set()
                await self.finished.wait()
                nursery.cancel_scope.cancel()
        finally:
            if self.protocol.leave_on_stop and not self.finished.is_set():
                await self._leave()

    # --- events -------------------------------------------------------------------------------------

    async def _serve(self) -> None:
        async for event in self.transport.events:
            if not isinstance(event, Received):
                continue
            if isinstance(event.message, Ping | Pong):
                self._note_pong(event)
                await self.pinger.handle(event)
            elif isinstance(event.message, ModestModel):
                self._on_model(event.sender, event.message)
            elif isinstance(event.message, MembershipUpdate):
                await self._on_membership(event.sender, event.message)

    def _note_pong(self, event: Received) -> None:
        if isinstance(event.message, Pong):
            self.view.mark_active(event.sender, self.adopted_round)

    def _merge_view(self, sender: PeerId, entries: list[ViewEntry], base: bytes) -> bool:
        try:
            self.view.merge(entries)
        except ValueError as exc:
            self.transport.stats.messages_rejected += 1
            log.warning("%s dropped a message from %s with a bad view: %s", self.own, sender, exc)
            return False
        if base and base != self.view.base_digest and sender not in self.asked_for_views:
            self.asked_for_views.add(sender)
            self.nursery.start_soon(self._ask_for_view, sender)
        return True

    async def _ask_for_view(self, peer: PeerId) -> None:
        """`peer` started from another member list: swap whole views once."""
        log.info("%s and %s started from different member lists; exchanging whole views", self.own, peer)
        try:
            await self.transport.send(peer, MembershipUpdate(self.view.entries(), reply=True, base=b""))
        except PeerUnreachable as exc:
            log.info("%s could not ask %s for its view: %s", self.own, peer, exc)

    def _view_for(self, base: bytes) -> tuple[list[ViewEntry], bytes]:
        """The own view for a peer whose member list has digest `base`: the differences if it is ours."""
        if base and base == self.view.base_digest:
            return self.view.delta(), base
        return self.view.entries(), b""

    def _outgoing_view(self) -> tuple[list[ViewEntry], bytes]:
        return self.view.delta(), self.view.base_digest

    def _on_model(self, sender: PeerId, msg: ModestModel) -> None:
        if not self._merge_view(sender, msg.view, msg.base):
            return
        self.view.mark_active(sender, msg.round)
        if msg.aggregated:
            self._on_aggregate(sender, msg.round, msg.model)
        else:
            self._on_trained(sender, msg.round, msg.model)

    async def _on_membership(self, sender: PeerId, msg: MembershipUpdate) -> None:
        if not self._merge_view(sender, msg.view, msg.base):
            return
        if msg.reply:
            # A join advertisement: the joiner cannot know the current round, so the peers it
            # told vouch for it; its record then spreads with their model messages.
            self.view.mark_active(sender, self.adopted_round)
            view, base = self._view_for(msg.base)
            # Given up after `ping_timeout`, like a pong: a peer that cannot take a message that
            # fast fails its pings too, so no sample picks it, and the answer only hastens what the
            # views on model messages tell the joiner anyway.
            answer = MembershipUpdate(view, reply=False, base=base)
            await self.outbox.send(sender, answer, timeout=self.settings.ping_timeout)

    # --- trainer ------------------------------------------------------------------------------------

    async def _start_if_sampled(self) -> None:
        depth = self.settings.start_depth
        if depth is not None:
            ahead = islice(active_order(self.view, 1, self.settings.inactivity_threshold), depth)
            if self.own not in ahead:
                return  # too far down order(1) to be needed: wait for a sample to pick this node
        sample = await self._sample(1, self.settings.s)
        if self.own in sample and self.adopted_round == 0 and self.training is None:
            self._start_training(1, None)

    def _on_aggregate(self, sender: PeerId, round: int, model: ModelPayload) -> None:
        if round <= self.adopted_round:
            return  # stale, or a second aggregator's copy of a round already adopted
        self.adopted_round = round
        self.pinger.round = max(self.adopted_round, self.aggregated_round)
        self.view.mark_active(self.own, round)
        self._start_training(round + 1, (sender, model))

    def _start_training(self, round: int, aggregate: tuple[PeerId, ModelPayload] | None) -> None:
        if self.training is not None:
            self.training.cancel()  # a newer round pre-empts the older one
        scope = self.training = trio.CancelScope()
        self.nursery.start_soon(self._train, round, aggregate, scope)

    async def _train(
        self, round: int, aggregate: tuple[PeerId, ModelPayload] | None, scope: trio.CancelScope
    ) -> None:
        with scope:
            async with self.model_in_use:
                if aggregate is not None:
                    if not await self.learning.adopt(*aggregate):
                        return  # the learning side logged and counted the bad model
                    await self.learning.finish_round(round - 1)
                    if round - 1 >= self.protocol.rounds:
                        self.finished.set()
                        return
                await self.learning.train()
                trained = self.learning.export_model()
            round_timeout = self.settings.round_timeout
            while True:
                aggregators = await self._sample(round + 1, self.settings.a)
                if any(self.pinger.reported.get(peer, 0) >= round for peer in aggregators):
                    return  # an aggregator has merged this round already: nothing to re-send
                outgoing = ModestModel(round, False, trained, *self._outgoing_view())
                # A copy still on its way when the round times out is superseded by the re-send.
                resend_at = trio.current_time() + (math.inf if round_timeout is None else round_timeout)
                await self._send_each(aggregators, outgoing, deadline=resend_at)
                if round_timeout is None:
                    return
                await timers.sleep_until(resend_at)

    # --- aggregator ---------------------------------------------------------------------------------

    def _on_trained(self, sender: PeerId, round: int, model: ModelPayload) -> None:
        if round <= self.aggregated_round:
            return  # that round is merged already
        buffer = self.buffers.setdefault(round, {})
        first = not buffer
        buffer[sender] = model
        if len(buffer) >= self.settings.models_needed:
            self.nursery.start_soon(self._aggregate, round)
        elif first and self.settings.aggregation_timeout is not None:
            self.nursery.start_soon(self._aggregate_after_timeout, round)

    async def _aggregate_after_timeout(self, round: int) -> None:
        await timers.sleep(self.settings.aggregation_timeout or 0.0)
        if len(self.buffers.get(round, ())) >= self.settings.min_models:
            await self._aggregate(round)

    async def _aggregate(self, round: int) -> None:
        if round <= self.aggregated_round or round not in self.buffers:
            return
        self.aggregated_round = round
        self.pinger.round = max(self.adopted_round, self.aggregated_round)
        models = self.buffers.pop(round)
        for stale in [r for r in self.buffers if r <= round]:
            del self.buffers[stale]
        merged = await self.learning.aggregate([(peer, models[peer]) for peer in sorted(models)])
        if merged is None:
            return
        sample = await self._sample(round + 1, self.settings.s)
        outgoing = ModestModel(round, True, merged, *self._outgoing_view())
        # No deadline of the protocol's own: a copy is of use until a newer aggregate reaches its
        # receiver, which no timer here bounds. The transport's deadlines end a send to a peer that
        # stopped reading (libp2p: `io_timeout`), and with the sends at once it holds up no other.
        await self._send_each(sample, outgoing, deadline=math.inf)

    # --- sampling and sending -----------------------------------------------------------------------

    async def _sample(self, round: int, count: int) -> list[PeerId]:
        """The first `count` available nodes of Sample(`round`)."""
        return await select_available(
            active_order(self.view, round, self.settings.inactivity_threshold),
            count,
            self.pinger.is_available,
            timeout=self.settings.ping_timeout,
        )

    async def _send_each(self, peers: Sequence[PeerId], msg: ModestModel, *, deadline: float) -> None:
        """Send `msg` to `peers` at once (`send_to_each`), in their order; the own copy is handled here.

        The own copy goes first, so that a peer that never reads cannot hold up this node's own part
        of the round (an aggregator of round r is in Sample(r+1) and trains it). It goes last when it
        is the final aggregate: adopting that ends this node's run, which must not cut off the copies
        still on their way to the rest of the sample.
        """
        own = self.own in peers
        final = msg.aggregated and msg.round >= self.protocol.rounds
        if own and not final:
            self._on_model(self.own, msg)
        what = f"round {msg.round} {'aggregate' if msg.aggregated else 'model'}"
        others = [peer for peer in peers if peer != self.own]
        await send_to_each(self.transport, others, msg, deadline=deadline, what=what)
        if own and final:
            self._on_model(self.own, msg)

    # --- membership adverts -------------------------------------------------------------------------

    async def _advertise(self, fanout: int, reply: bool) -> None:
        """Send the own view (and so the own JOIN or LEAVE) to the first `fanout` reachable peers.

        `fanout` senders go down the order at once, each until a peer takes the message, so a peer
        that never reads holds up one of them, not the rest: a leave has `_LEAVE_DEADLINE` in all.
        """
        everyone = self.view.active(self.adopted_round, self.adopted_round)
        peers = [peer for peer in everyone if peer != self.own]
        view, base = self._outgoing_view()
        update = MembershipUpdate(view, reply=reply, base=base)
        candidates = iter(sample_order(peers, self.adopted_round))

        async def tell_one() -> None:
            for peer in candidates:
                try:
                    await self.transport.send(peer, update)
                    return
                except PeerUnreachable as exc:
                    log.info("%s could not advertise to %s: %s", self.own, peer, exc)

        async with trio.open_nursery() as nursery:
            for _ in range(fanout):
                nursery.start_soon(tell_one)

    async def _leave(self) -> None:
        self.view.leave(self.own, self.adopted_round)
        with trio.move_on_after(_LEAVE_DEADLINE) as scope:
            scope.shield = True
            await self._advertise(self.protocol.join_fanout, False)
