"""The transport interface: the one seam the libp2p transport and the emulator plug into.

A transport moves typed messages between peer IDs. Everything a node learns from the network
arrives as one ordered stream of events (a message, a peer connecting, a peer leaving), so a
protocol reads a single channel instead of juggling callbacks.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from transport.errors import PeerUnreachable

log = logging.getLogger(__name__)

PeerId = str


@dataclass(frozen=True, slots=True)
class Received:
    """A message from `sender`; `topic` is set when it was published rather than sent directly."""

    sender: PeerId
    message: object
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class PeerConnected:
    peer: PeerId


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    peer: PeerId


Event = Received | PeerConnected | PeerDisconnected


class EventChannel(Protocol):
    """What `Transport.events` returns: trio's receive side, and `receive_nowait`.

    `receive_nowait` lets a reader take every event already queued without a schedule point per
    event (each one is a task switch, most of what reading a message costs an emulated node).
    """

    async def receive(self) -> Event:
        """The next event; `trio.EndOfChannel` once the transport has closed and none are left."""

    def receive_nowait(self) -> Event:
        """The next event if one is queued, else `trio.WouldBlock` (or `trio.EndOfChannel`)."""

    def __aiter__(self) -> EventChannel: ...

    async def __anext__(self) -> Event: ...


@dataclass(slots=True)
class TrafficStats:
    """Counters of what crossed this transport, in encoded (on-the-wire) bytes."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    messages_rejected: int = 0
    messages_lost: int = 0  # sent, then dropped at random on the way (the in-memory network's loss)


class Transport(ABC):
    """Send to peers, publish to topics, and read events, for one local peer."""

    peer_id: PeerId
    stats: TrafficStats
    #: Whether `send` may wait on the peer: the libp2p one returns only once the peer verified and
    #: queued the message, so a peer that stops reading holds it up until a deadline. A transport
    #: whose `send` only puts the message on its way and returns (the in-memory network) sets it
    #: False; `transport.outbox.Outbox` then sends in the caller's task, without a task per message.
    send_may_block: bool = True

    @abstractmethod
    def peers(self) -> frozenset[PeerId]:
        """Peers currently connected."""

    @abstractmethod
    async def send(self, peer: PeerId, message: object) -> None:
        """Deliver `message` to one connected peer; raise `PeerUnreachable` if it is not connected."""

    async def send_each(self, peers: Sequence[PeerId], message: object) -> None:
        """Send `message` to each of `peers` at once: a slow or frozen peer holds up no other.

        A peer that cannot be reached is logged and skipped. Cancelling the call (a deadline around
        it) ends the sends still running, each logged. Every send runs in its own task, unless
        `send` never blocks (`send_may_block`): then one loop in the caller's task sends to all at
        once, which costs no task per message (a task per message cost the 10,000-node D-PSGD
        emulation about 30% of its speed).
        """

        async def send_one(peer: PeerId) -> None:
            try:
                await self.send(peer, message)
            except PeerUnreachable as exc:
                log_unreachable(message, peer, exc)
            except trio.Cancelled:
                log.info("gave up sending %s to %s", type(message).__name__, peer)
                raise

        if not self.send_may_block:
            for peer in peers:
                await send_one(peer)
            return
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(send_one, peer)

    @abstractmethod
    async def publish(self, topic: str, message: object) -> None:
        """Send a small control message to every peer subscribed to `topic`."""

    @abstractmethod
    async def subscribe(self, topic: str) -> None:
        """Start receiving what peers publish to `topic`."""

    @property
    @abstractmethod
    def events(self) -> EventChannel:
        """The stream of everything arriving at this peer, in arrival order."""

    def penalise(self, peer: PeerId, reason: str) -> None:  # noqa: B027 (optional, a no-op by default)
        """Charge `peer` one offence: it sent something the application refused (`reason`).

        A transport that keeps penalties bans a peer that offends too often (the libp2p one does);
        one that keeps none, like the in-memory network of the emulator, ignores it.
        """


def log_unreachable(message: object, peer: PeerId, exc: PeerUnreachable) -> None:
    """The one log line for a send that failed because the peer could not be reached."""
    log.info("could not send %s to %s: %s", type(message).__name__, peer, exc)
