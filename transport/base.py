"""The transport interface: the one seam the libp2p transport and the emulator plug into.

A transport moves typed messages between peer IDs. Everything a node learns from the network
arrives as one ordered stream of events (a message, a peer connecting, a peer leaving), so a
protocol reads a single channel instead of juggling callbacks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import trio

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

    @abstractmethod
    def peers(self) -> frozenset[PeerId]:
        """Peers currently connected."""

    @abstractmethod
    async def send(self, peer: PeerId, message: object) -> None:
        """Deliver `message` to one connected peer; raise `PeerUnreachable` if it is not connected."""

    @abstractmethod
    async def publish(self, topic: str, message: object) -> None:
        """Send a small control message to every peer subscribed to `topic`."""

    @abstractmethod
    async def subscribe(self, topic: str) -> None:
        """Start receiving what peers publish to `topic`."""

    @property
    @abstractmethod
    def events(self) -> trio.abc.ReceiveChannel[Event]:
        """The stream of everything arriving at this peer, in arrival order."""

    def penalise(self, peer: PeerId, reason: str) -> None:  # noqa: B027 (optional, a no-op by default)
        """Charge `peer` one offence: it sent something the application refused (`reason`).

        A transport that keeps penalties bans a peer that offends too often (the libp2p one does);
        one that keeps none, like the in-memory network of the emulator, ignores it.
        """
