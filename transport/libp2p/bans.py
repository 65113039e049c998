"""Enforcing `transport.penalties` on a libp2p host: a banned peer is cut off until its ban ends.

A ban closes every connection to the peer; a connection it opens while banned is closed at once
without the application hearing of it (`admit`, the connection tracker's gate), its model-plane
streams are reset unread, and every dial to it is refused (`may_dial`, the host's dial gate: ours,
bootstrap's, discovery's, and pubsub's, which would otherwise redial it at once).
Connections are closed by `run`, a task of the transport's nursery: the places that decide on a ban
(a stream handler, the swarm's connect notification) must not close a connection from inside it.
"""

from __future__ import annotations

import logging
import math

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID

from transport.libp2p.stats import Libp2pStats
from transport.penalties import Penalties

__all__ = ["Bans"]

log = logging.getLogger(__name__)

_CLOSE_DEADLINE = 5.0  # seconds to close one banned peer's connections


class Bans:
    """Charges offences to peers, and cuts off the ones `penalties` bans."""

    def __init__(self, host: IHost, penalties: Penalties, *, stats: Libp2pStats) -> None:
        self.penalties = penalties
        self._host = host
        self._stats = stats
        self._to_close, self._closing = trio.open_memory_channel[ID](math.inf)
        self._queued: set[ID] = set()  # at most one pending close per peer

    def charge(self, peer: ID, reason: str) -> None:
        """Record one offence of `peer` (`reason` is for the log); ban and disconnect it at too many."""
        if not self.penalties.charge(peer.to_base58()):
            return
        self._stats.peers_banned += 1
        log.warning(
            "banned peer %s for %.0f s after repeated offences (last: %s)",
            peer,
            self.penalties.config.ban_seconds,
            reason,
        )
        self._close_soon(peer)

    def ban_left(self, peer: ID) -> float:
        """Seconds until `peer`'s ban ends; 0 if it is not banned."""
        return self.penalties.ban_left(peer.to_base58())

    def may_dial(self, peer: ID) -> bool:
        """For `gate_dials`: whether we may dial `peer` (not while it is banned)."""
        return self.ban_left(peer) <= 0

    def admit(self, peer: ID) -> bool:
        """Whether a new connection of `peer` may stay; a banned peer's is closed soon after."""
        if self.ban_left(peer) <= 0:
            return True
        log.info("closing a connection of banned peer %s", peer)
        self._close_soon(peer)
        return False

    async def run(self) -> None:
        """Close the connections of newly banned peers, until cancelled."""
        async for peer in self._closing:
            self._queued.discard(peer)
            with trio.move_on_after(_CLOSE_DEADLINE):
                try:
                    await self._host.disconnect(peer)
                except Exception as exc:
                    log.debug("closing the connections of banned peer %s failed: %r", peer, exc)

    def _close_soon(self, peer: ID) -> None:
        if peer not in self._queued:
            self._queued.add(peer)
            self._to_close.send_nowait(peer)
