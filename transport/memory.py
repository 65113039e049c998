"""An in-memory transport for the emulator and unit tests.

Messages are really encoded and decoded, so byte counts are the wire's and a codec bug shows up
here as it would on a real network. Delivery happens in trio time: with trio's `MockClock` a link
latency costs no wall time, which is what lets the emulator run many nodes in virtual time.

Links follow the model of `transport.links`: latency, bandwidth with a FIFO queue per direction,
and random loss drawn from the network's seeded RNG. The network can also be partitioned. One
task per network delivers every message, from a heap ordered by arrival instant and send order,
so a run's deliveries depend only on what was sent when (and on the seed).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import math
import random
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager

import trio

from transport import codec
from transport.base import (
    Event,
    EventChannel,
    PeerConnected,
    PeerDisconnected,
    PeerId,
    Received,
    TrafficStats,
    Transport,
)
from transport.errors import DecodeError, PeerUnreachable
from transport.links import Link, LinkParams, group_index

log = logging.getLogger(__name__)

_OUTSIDE = -1  # the group of peers a partition does not name
_ALWAYS_UP = Link(LinkParams())  # for messages from a remote peer with no link to the recipient


@asynccontextmanager
async def open_memory_network(
    *,
    latency: float = 0.0,
    bandwidth: float | None = None,
    loss: float = 0.0,
    seed: int = 0,
    limits: codec.Limits = codec.DEFAULT_LIMITS,
    dial_any: bool = False,
) -> AsyncIterator[MemoryNetwork]:
    """Open a network whose in-flight messages live in a nursery that closes with the block.

    `latency` (s), `bandwidth` (bytes/s, None: unlimited) and `loss` (probability that a message
    silently vanishes) are the defaults of every link; `connect` may override them per link.
    `seed` seeds the RNG that decides losses.

    With `dial_any`, a peer may send to any peer of the network, linked or not, as a libp2p node
    dials any peer whose address it knows; protocols that pick partners from a membership view
    (MoDeST) need this. Without it, only linked peers (the topology's edges) can talk. Messages
    between peers with no link travel with the default parameters.
    """
    defaults = LinkParams(latency=latency, bandwidth=bandwidth, loss=loss)
    async with trio.open_nursery() as nursery:
        yield MemoryNetwork(nursery, defaults=defaults, seed=seed, limits=limits, dial_any=dial_any)
        nursery.cancel_scope.cancel()


class MemoryNetwork:
    """Peers, the links between them, and the task that delivers messages in flight.

    Create it with `open_memory_network`.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        defaults: LinkParams | None = None,
        seed: int = 0,
        limits: codec.Limits = codec.DEFAULT_LIMITS,
        dial_any: bool = False,
    ) -> None:
        self.defaults = defaults = defaults or LinkParams()
        self.limits = limits
        self.dial_any = dial_any
        self._rng = random.Random(seed)
        self._transports: dict[PeerId, MemoryTransport] = {}
        self._subscribers: dict[str, dict[PeerId, MemoryTransport]] = {}
        self._crashed: set[PeerId] = set()
        self._groups: dict[PeerId, int] | None = None  # while partitioned: peer -> group
        # With unlimited default bandwidth a link without an edge keeps no queue, so all such
        # messages share one stateless link (its latency is fixed, so arrivals stay in order).
        self._default_link = Link(defaults) if defaults.bandwidth is None else None
        # Messages in flight: (arrival instant, send order, recipient, sender, frame, topic, link).
        self._in_flight: list[tuple[float, int, MemoryTransport, PeerId, bytes, str | None, Link]] = []
        self._order = itertools.count()
        # A frame sent to several recipients is decoded once, on its first delivery, and the decoded
        # message shared: frame id -> [frame, copies still in flight, message or DecodeError or None].
        # Sharing is safe because a decoded message is immutable where it matters: frozen
        # dataclasses whose tensors are read-only views of the frame (nothing mutates the
        # containers). An entry lives while the heap holds the frame, so its id cannot be reused.
        self._decoded: dict[int, list] = {}
        self._wake: trio.CancelScope | None = None  # the delivery task's sleep, until the next arrival
        self.traffic = TrafficLog()
        # Peers that live in another process (`mark_remote`) and the messages sent to them since the
        # last `take_outgoing`: (arrival instant, sender, recipient, frame, topic).
        self._remote: frozenset[PeerId] = frozenset()
        self._outgoing: list[tuple[float, PeerId, PeerId, bytes, str | None]] = []
        nursery.start_soon(self._deliver_forever)

    @property
    def latency(self) -> float:
        """The default link latency."""
        return self.defaults.latency

    def crash(self, peer_id: PeerId) -> None:
        """Make `peer_id` unresponsive: what it is sent vanishes and nobody is told.

        That is how a crashed or partitioned host looks from outside until a timeout says
        otherwise; the caller also stops the peer's own tasks.
        """
        if peer_id not in self._transports:
            raise KeyError(f"unknown peer {peer_id!r}")
        self._crashed.add(peer_id)

    def partition(self, groups: Sequence[Collection[PeerId]]) -> None:
        """Split the network: from now on, messages between peers of different groups vanish.

        Peers named in no group (including peers added later) form one more group together.
        Links stay up and nobody is told, as with `crash`; messages already in flight are dropped
        if the partition still holds when they arrive. A new partition replaces the current one.
        """
        self._groups = group_index(groups, self._transports)

    def heal(self) -> None:
        """End the partition: messages sent from now on (or arriving from now on) get through."""
        self._groups = None

    def separated(self, a: PeerId, b: PeerId) -> bool:
        """Whether the current partition puts `a` and `b` in different groups."""
        groups = self._groups
        return groups is not None and groups.get(a, _OUTSIDE) != groups.get(b, _OUTSIDE)

    def bytes_sent(self, *, until: float | None = None) -> int:
        """Bytes sent by all peers together, up to and including virtual instant `until` (default: now)."""
        return self.traffic.bytes_sent(until=until)

    def messages_sent(self, *, until: float | None = None) -> int:
        """Messages sent by all peers together, up to and including virtual instant `until`."""
        return self.traffic.messages_sent(until=until)

    def mark_remote(self, peers: Collection[PeerId]) -> None:
        """Declare `peers` as living in another process: messages to them are not delivered here but
        kept for `take_outgoing`, and their copies arrive through `inject` there.

        A sharded emulation runs one network per process, each with every peer and link, and moves
        the messages between shards itself. Links, crashes and partitions stay this network's: the
        sender's side decides queuing and loss, the recipient's side the rest.
        """
        unknown = set(peers) - self._transports.keys()
        if unknown:
            raise KeyError(f"unknown peers {sorted(unknown)[:3]}")
        self._remote = frozenset(peers)

    def take_outgoing(self) -> list[tuple[float, PeerId, PeerId, bytes, str | None]]:
        """The messages sent to remote peers since the last call: (arrival, sender, recipient, frame,
        topic), in send order."""
        outgoing, self._outgoing = self._outgoing, []
        return outgoing

    def inject(
        self, arrival: float, sender: PeerId, recipient: PeerId, frame: bytes, topic: str | None
    ) -> None:
        """Put a message that a remote `sender` sent on its way to local `recipient`, arriving at
        `arrival` (not before now). It is then delivered as if sent here, unless the link goes down,
        the recipient crashes or a partition separates them before it arrives."""
        if arrival < trio.current_time():
            raise ValueError(f"a message cannot arrive in the past ({arrival} < {trio.current_time()})")
        target = self._transports[recipient]
        link = target._links.get(sender) or _ALWAYS_UP
        self._schedule(arrival, target, sender, frame, topic, link)

    def add_peer(self, peer_id: PeerId) -> MemoryTransport:
        if peer_id in self._transports:
            raise ValueError(f"peer {peer_id!r} already exists")
        transport = MemoryTransport(self, peer_id)
        self._transports[peer_id] = transport
        return transport

    def connect(
        self,
        a: PeerId,
        b: PeerId,
        *,
        latency: float | None = None,
        bandwidth: float | None = None,
        loss: float | None = None,
    ) -> None:
        """Open a link between `a` and `b`; both get a `PeerConnected` event.

        The link has the given latency (s), bandwidth (bytes/s; `math.inf`: unlimited) and loss
        probability, in both directions; None takes the network's default. Connecting peers that
        are already linked changes nothing, not even the parameters.
        """
        ta, tb = self._transports[a], self._transports[b]
        params = self.defaults.override(latency=latency, bandwidth=bandwidth, loss=loss)
        if a == b or b in ta._links:
            return
        ta._links[b] = Link(params)
        tb._links[a] = Link(params)
        ta._push(PeerConnected(b))
        tb._push(PeerConnected(a))

    def disconnect(self, a: PeerId, b: PeerId) -> None:
        """Close the link between `a` and `b`; both get a `PeerDisconnected` event.

        Messages in flight on the link are lost.
        """
        ta, tb = self._transports[a], self._transports[b]
        if b not in ta._links:
            return
        ta._links.pop(b).up = False
        tb._links.pop(a).up = False
        ta._push(PeerDisconnected(b))
        tb._push(PeerDisconnected(a))

    def link(self, a: PeerId, b: PeerId) -> LinkParams | None:
        """The parameters of the link from `a` to `b`, or None when they are not linked."""
        link = self._transports[a]._links.get(b)
        return None if link is None else link.params

    def _can_send(self, sender: PeerId, recipient: PeerId) -> bool:
        if recipient in self._transports[sender]._links:
            return True
        return self.dial_any and recipient in self._transports and recipient != sender

    def _transmit(self, sender: MemoryTransport, recipient: MemoryTransport, frame: bytes, topic: str | None):
        """Put `frame` on the wire from `sender` to `recipient` and schedule its arrival."""
        size = len(frame)
        stats = sender.stats
        stats.bytes_sent += size
        stats.messages_sent += 1
        now = trio.current_time()
        self.traffic.record(now, size)
        if sender.peer_id in self._crashed:
            return
        link = (
            sender._links.get(recipient.peer_id)
            or self._default_link
            or sender._dialed_link(recipient.peer_id)
        )
        arrival = link.arrival(now, size)  # a message that will vanish still occupies the link
        if link.loss and self._rng.random() < link.loss:
            stats.messages_lost += 1
            return
        if recipient.peer_id in self._crashed or self.separated(sender.peer_id, recipient.peer_id):
            return
        if recipient.peer_id in self._remote:
            self._outgoing.append((arrival, sender.peer_id, recipient.peer_id, frame, topic))
            return
        self._schedule(arrival, recipient, sender.peer_id, frame, topic, link)

    def _schedule(
        self,
        arrival: float,
        recipient: MemoryTransport,
        sender: PeerId,
        frame: bytes,
        topic: str | None,
        link: Link,
    ) -> None:
        heapq.heappush(self._in_flight, (arrival, next(self._order), recipient, sender, frame, topic, link))
        entry = self._decoded.get(id(frame))
        if entry is None:
            self._decoded[id(frame)] = [frame, 1, None]
        else:
            entry[1] += 1
        wake = self._wake
        if wake is not None and arrival < wake.deadline:
            wake.deadline = arrival

    async def _deliver_forever(self) -> None:
        """Sleep until the next arrival, deliver everything due, repeat."""
        in_flight = self._in_flight
        while True:
            with trio.CancelScope(deadline=in_flight[0][0] if in_flight else math.inf) as self._wake:
                await trio.sleep_forever()
            self._wake = None
            now = trio.current_time()
            decoded = self._decoded
            while in_flight and in_flight[0][0] <= now:
                _, _, recipient, sender, frame, topic, link = heapq.heappop(in_flight)
                entry = decoded[id(frame)]
                entry[1] -= 1
                if not entry[1]:
                    del decoded[id(frame)]
                if topic is None and not link.up:
                    continue  # the link went down while the message was in flight
                if recipient.peer_id in self._crashed or self.separated(sender, recipient.peer_id):
                    continue
                if entry[2] is None:
                    entry[2] = self._decode(frame)
                recipient._accept(sender, frame, topic, entry[2])

    def _decode(self, frame: bytes) -> object:
        """The message in `frame`, or the `DecodeError` that refuses it."""
        try:
            return codec.decode(frame, limits=self.limits)
        except DecodeError as exc:
            return exc


class TrafficLog:
    """A network's traffic as cumulative steps: at virtual instant times[i], bytes[i] bytes and
    messages[i] messages had been sent in all. Logs of several networks (shards) merge into one."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.bytes: list[int] = []
        self.messages: list[int] = []

    def record(self, now: float, size: int) -> None:
        times, total_bytes, total_messages = self.times, self.bytes, self.messages
        if not times or times[-1] != now:
            times.append(now)
            total_bytes.append(total_bytes[-1] if total_bytes else 0)
            total_messages.append(total_messages[-1] if total_messages else 0)
        total_bytes[-1] += size
        total_messages[-1] += 1

    def bytes_sent(self, *, until: float | None = None) -> int:
        return self._until(self.bytes, until)

    def messages_sent(self, *, until: float | None = None) -> int:
        return self._until(self.messages, until)

    def _until(self, totals: list[int], until: float | None) -> int:
        index = len(totals) if until is None else bisect.bisect_right(self.times, until)
        return totals[index - 1] if index else 0

    @classmethod
    def merged(cls, logs: Sequence[TrafficLog]) -> TrafficLog:
        """One log of the traffic of all `logs` together."""
        merged = cls()
        merged.times = sorted({t for log in logs for t in log.times})
        for t in merged.times:
            merged.bytes.append(sum(log.bytes_sent(until=t) for log in logs))
            merged.messages.append(sum(log.messages_sent(until=t) for log in logs))
        return merged


class MemoryTransport(Transport):
    """One peer's end of a `MemoryNetwork`."""

    send_may_block = False  # `send` puts the message on the network and returns: it never waits

    def __init__(self, network: MemoryNetwork, peer_id: PeerId) -> None:
        self.peer_id = peer_id
        self.stats = TrafficStats()
        self._network = network
        self._links: dict[PeerId, Link] = {}  # outgoing direction of each link, by peer
        self._dialed: dict[PeerId, Link] = {}  # queues towards unlinked peers, when bandwidth is limited
        self._send_events, self._events = trio.open_memory_channel[Event](math.inf)
        # The last message sent and its frame: the same object sent to several peers in a row (a
        # model to every neighbour) is encoded once. Messages are frozen, so the frame stays valid.
        self._last_sent: tuple[object, bytes] | None = None

    def peers(self) -> frozenset[PeerId]:
        return frozenset(self._links)

    @property
    def events(self) -> EventChannel:
        return self._events

    async def send(self, peer: PeerId, message: object) -> None:
        network = self._network
        if not network._can_send(self.peer_id, peer):
            raise PeerUnreachable(f"{self.peer_id} is not connected to {peer}")
        network._transmit(self, network._transports[peer], self._encode(message), None)
        # A cancellation point but no schedule point: sending never blocks here, and yielding after
        # every message interleaves each node's round with thousands of others' (a node sending
        # to 4 neighbours went to the back of the run queue 4 times): 5,000 D-PSGD nodes ran 28%
        # faster without it. Deliveries still happen in the network's own task, later.
        await trio.lowlevel.checkpoint_if_cancelled()

    def _encode(self, message: object) -> bytes:
        last = self._last_sent
        if last is not None and last[0] is message:
            return last[1]
        frame = codec.encode(message)
        self._last_sent = (message, frame)
        return frame

    async def publish(self, topic: str, message: object) -> None:
        # One copy per subscriber, over the link to it if any (else with the defaults). Unlike a
        # direct message, it survives that link closing on the way: pubsub routes around.
        network = self._network
        frame = self._encode(message)
        for peer_id, transport in network._subscribers.get(topic, {}).items():
            if peer_id != self.peer_id:
                network._transmit(self, transport, frame, topic)
        await trio.lowlevel.checkpoint_if_cancelled()  # as in send

    async def subscribe(self, topic: str) -> None:
        self._network._subscribers.setdefault(topic, {})[self.peer_id] = self
        await trio.lowlevel.checkpoint()

    def _dialed_link(self, peer: PeerId) -> Link:
        link = self._dialed.get(peer)
        if link is None:
            link = self._dialed[peer] = Link(self._network.defaults)
        return link

    def _accept(self, sender: PeerId, frame: bytes, topic: str | None, message: object = None) -> None:
        """Take delivery of `frame`: `message` is it decoded (once for all its recipients), None: decode."""
        self.stats.bytes_received += len(frame)
        if message is None:
            message = self._network._decode(frame)
        if isinstance(message, DecodeError):
            self.stats.messages_rejected += 1
            log.warning("%s dropped a message from %s: %s", self.peer_id, sender, message)
            return
        self.stats.messages_received += 1
        self._push(Received(sender, message, topic))

    def _push(self, event: Event) -> None:
        self._send_events.send_nowait(event)
