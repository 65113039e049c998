"""Which peers are connected, from the swarm's connect/disconnect notifications.

libp2p reports connections, not peers: two hosts dialing each other at once hold two connections,
and one may close while the other stays. A peer is connected while it has at least one connection,
so `PeerConnected` fires on its first and `PeerDisconnected` on its last.

A gate (`admit`) may refuse a peer's connections (a banned peer): those are not tracked at all, so
the application never hears of them, and whoever refused them closes them. Connections of our own
peer ID (a host that dialed one of its own addresses) are not tracked either: we are never our peer.
"""

from __future__ import annotations

from collections.abc import Callable

import multiaddr
import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.peer.id import ID

from transport.base import PeerConnected, PeerDisconnected, PeerId
from transport.libp2p.inbox import Inbox

__all__ = ["ConnectionTracker"]


class ConnectionTracker(INotifee):
    """Swarm notifee: keeps the connected-peer set and turns its changes into inbox events."""

    def __init__(self, inbox: Inbox, *, own: ID, admit: Callable[[ID], bool]) -> None:
        self._inbox = inbox
        self._own = own
        self._admit = admit
        self._conns: dict[ID, set[INetConn]] = {}
        self._gone: dict[ID, trio.Event] = {}
        self._on_connected: list[Callable[[ID], None]] = []
        self._on_disconnected: list[Callable[[ID], None]] = []

    def add_connected_listener(self, listener: Callable[[ID], None]) -> None:
        """Call `listener(peer)` (synchronously, so it must not block) whenever a peer connects."""
        self._on_connected.append(listener)

    def add_disconnected_listener(self, listener: Callable[[ID], None]) -> None:
        """Call `listener(peer)` (synchronously, so it must not block) when a peer's last connection ends."""
        self._on_disconnected.append(listener)

    def peers(self) -> frozenset[PeerId]:
        return frozenset(peer.to_base58() for peer in self._conns)

    def peer_ids(self) -> frozenset[ID]:
        return frozenset(self._conns)

    def is_connected(self, peer: ID) -> bool:
        return peer in self._conns

    async def wait_disconnected(self, peer: ID) -> None:
        """Return once `peer` has no connection left (at once if it has none now)."""
        if peer in self._conns:
            await self._gone.setdefault(peer, trio.Event()).wait()

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if peer == self._own or not self._admit(peer):
            return
        conns = self._conns.setdefault(peer, set())
        first = not conns
        conns.add(conn)
        if first:
            self._inbox.push_peer_event(PeerConnected(peer.to_base58()))
            for listener in self._on_connected:
                listener(peer)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        conns = self._conns.get(peer)
        if conns is None or conn not in conns:
            return  # a connection we never saw open (refused at registration)
        conns.discard(conn)
        if conns:
            return
        del self._conns[peer]
        self._inbox.push_peer_event(PeerDisconnected(peer.to_base58()))
        for listener in self._on_disconnected:
            listener(peer)
        event = self._gone.pop(peer, None)
        if event is not None:
            event.set()

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass
