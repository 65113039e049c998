"""An in-memory transport for the emulator and unit tests.

Messages are really encoded and decoded, so byte counts are the wire's and a codec bug shows up
here as it would on a real network. Delivery happens in trio time: with trio's `MockClock` a link
latency costs no wall time, which is what lets the emulator run many nodes in virtual time.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from transport import codec
from transport.base import Event, PeerConnected, PeerDisconnected, PeerId, Received, TrafficStats, Transport
from transport.errors import DecodeError, PeerUnreachable

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_memory_network(
    *, latency: float = 0.0, limits: codec.Limits = codec.DEFAULT_LIMITS, dial_any: bool = False
) -> AsyncIterator[MemoryNetwork]:
    """Open a network whose in-flight messages live in a nursery that closes with the block.

    With `dial_any`, a peer may send to any peer of the network, linked or not, as a libp2p node
    dials any peer whose address it knows; protocols that pick partners from a membership view
    (MoDeST) need this. Without it, only linked peers (the topology's edges) can talk.
    """
    if latency < 0:
        raise ValueError(f"latency must be >= 0, got {latency}")
    async with trio.open_nursery() as nursery:
        yield MemoryNetwork(nursery, latency=latency, limits=limits, dial_any=dial_any)
        nursery.cancel_scope.cancel()


class MemoryNetwork:
    """Peers, the links between them, and the nursery in which messages travel.

    `latency` (seconds) is charged on every delivery. Create it with `open_memory_network`.
    """

    def __init__(
        self, nursery: trio.Nursery, *, latency: float, limits: codec.Limits, dial_any: bool
    ) -> None:
        self.latency = latency
        self.limits = limits
        self.dial_any = dial_any
        self._nursery = nursery
        self._transports: dict[PeerId, MemoryTransport] = {}
        self._crashed: set[PeerId] = set()
        # Network-wide traffic as steps: at virtual instant times[i], bytes[i] bytes and
        # messages[i] messages had been sent in all (cumulative).
        self._traffic_times: list[float] = []
        self._traffic_bytes: list[int] = []
        self._traffic_messages: list[int] = []

    def crash(self, peer_id: PeerId) -> None:
        """Make `peer_id` unresponsive: what it is sent vanishes and nobody is told.

        That is how a crashed or partitioned host looks from outside until a timeout says
        otherwise; the caller also stops the peer's own tasks.
        """
        if peer_id not in self._transports:
            raise KeyError(f"unknown peer {peer_id!r}")
        self._crashed.add(peer_id)

    def bytes_sent(self, *, until: float | None = None) -> int:
        """Bytes sent by all peers together, up to and including virtual instant `until` (default: now)."""
        return self._traffic_until(self._traffic_bytes, until)

    def messages_sent(self, *, until: float | None = None) -> int:
        """Messages sent by all peers together, up to and including virtual instant `until`."""
        return self._traffic_until(self._traffic_messages, until)

    def _traffic_until(self, totals: list[int], until: float | None) -> int:
        index = len(totals) if until is None else bisect.bisect_right(self._traffic_times, until)
        return totals[index - 1] if index else 0

    def add_peer(self, peer_id: PeerId) -> MemoryTransport:
        if peer_id in self._transports:
            raise ValueError(f"peer {peer_id!r} already exists")
        transport = MemoryTransport(self, peer_id)
        self._transports[peer_id] = transport
        return transport

    def connect(self, a: PeerId, b: PeerId) -> None:
        """Open a link between `a` and `b`; both get a `PeerConnected` event."""
        ta, tb = self._transports[a], self._transports[b]
        if a == b or b in ta._links:
            return
        ta._links.add(b)
        tb._links.add(a)
        ta._push(PeerConnected(b))
        tb._push(PeerConnected(a))

    def disconnect(self, a: PeerId, b: PeerId) -> None:
        """Close the link between `a` and `b`; both get a `PeerDisconnected` event."""
        ta, tb = self._transports[a], self._transports[b]
        if b not in ta._links:
            return
        ta._links.discard(b)
        tb._links.discard(a)
        ta._push(PeerDisconnected(b))
        tb._push(PeerDisconnected(a))

    def _can_send(self, sender: PeerId, recipient: PeerId) -> bool:
        if recipient in self._transports[sender]._links:
            return True
        return self.dial_any and recipient in self._transports and recipient != sender

    def _deliver(self, sender: PeerId, recipient: PeerId, frame: bytes, topic: str | None) -> None:
        now = trio.current_time()
        if not self._traffic_times or self._traffic_times[-1] != now:
            self._traffic_times.append(now)
            self._traffic_bytes.append(self.bytes_sent())
            self._traffic_messages.append(self.messages_sent())
        self._traffic_bytes[-1] += len(frame)
        self._traffic_messages[-1] += 1
        if recipient in self._crashed or sender in self._crashed:
            return
        self._nursery.start_soon(self._deliver_after_latency, sender, recipient, frame, topic)

    async def _deliver_after_latency(
        self, sender: PeerId, recipient: PeerId, frame: bytes, topic: str | None
    ):
        if self.latency:
            await trio.sleep(self.latency)
        self._transports[recipient]._accept(sender, frame, topic)


class MemoryTransport(Transport):
    """One peer's end of a `MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, peer_id: PeerId) -> None:
        self.peer_id = peer_id
        self.stats = TrafficStats()
        self._network = network
        self._links: set[PeerId] = set()
        self._topics: set[str] = set()
        self._send_events, self._events = trio.open_memory_channel[Event](math.inf)

    def peers(self) -> frozenset[PeerId]:
        return frozenset(self._links)

    @property
    def events(self) -> trio.abc.ReceiveChannel[Event]:
        return self._events

    async def send(self, peer: PeerId, message: object) -> None:
        if not self._network._can_send(self.peer_id, peer):
            raise PeerUnreachable(f"{self.peer_id} is not connected to {peer}")
        self._transmit(peer, codec.encode(message), topic=None)
        await trio.lowlevel.checkpoint()

    async def publish(self, topic: str, message: object) -> None:
        frame = codec.encode(message)
        for peer_id, transport in self._network._transports.items():
            if peer_id != self.peer_id and topic in transport._topics:
                self._transmit(peer_id, frame, topic=topic)
        await trio.lowlevel.checkpoint()

    async def subscribe(self, topic: str) -> None:
        self._topics.add(topic)
        await trio.lowlevel.checkpoint()

    def _transmit(self, peer: PeerId, frame: bytes, *, topic: str | None) -> None:
        self.stats.bytes_sent += len(frame)
        self.stats.messages_sent += 1
        self._network._deliver(self.peer_id, peer, frame, topic)

    def _accept(self, sender: PeerId, frame: bytes, topic: str | None) -> None:
        if topic is None and not self._network._can_send(sender, self.peer_id):
            return  # the link went down while the message was in flight
        if self.peer_id in self._network._crashed:
            return
        self.stats.bytes_received += len(frame)
        try:
            message = codec.decode(frame, limits=self._network.limits)
        except DecodeError as exc:
            self.stats.messages_rejected += 1
            log.warning("%s dropped a message from %s: %s", self.peer_id, sender, exc)
            return
        self.stats.messages_received += 1
        self._push(Received(sender, message, topic))

    def _push(self, event: Event) -> None:
        self._send_events.send_nowait(event)
