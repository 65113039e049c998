"""Staying connected to bootstrap peers: dial, and redial with backoff whenever the link drops.

A node's first peers are the ones it is told about; if the link to all of them breaks before it has
learned others, it is alone for good unless someone redials. Exponential backoff with jitter keeps a
restarting bootstrap node from being hammered by every node at the same instant.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from transport.libp2p.peers import ConnectionTracker

__all__ = ["keep_connected"]

log = logging.getLogger(__name__)


async def keep_connected(
    host: IHost,
    peer: PeerInfo,
    tracker: ConnectionTracker,
    *,
    dial_timeout: float,
    ban_left: Callable[[ID], float],
    initial_backoff: float = 0.5,
    max_backoff: float = 30.0,
    rng: random.Random | None = None,
) -> None:
    """Run until cancelled, keeping at least one connection to `peer` open (unless it is banned:
    `ban_left(peer)` says for how many seconds more)."""
    rng = rng or random.Random()
    delay = initial_backoff
    while True:
        banned = ban_left(peer.peer_id)
        if banned > 0:
            await trio.sleep(banned)
            continue
        if not tracker.is_connected(peer.peer_id):
            try:
                with trio.fail_after(dial_timeout):
                    await host.connect(peer)
            except Exception as exc:  # TooSlowError, SwarmException, handshake failures...
                pause = delay * rng.uniform(0.5, 1.5)
                log.info("bootstrap peer %s unreachable (%r); retry in %.1f s", peer.peer_id, exc, pause)
                await trio.sleep(pause)
                delay = min(delay * 2, max_backoff)
                continue
            log.info("connected to bootstrap peer %s", peer.peer_id)
        since = trio.current_time()
        await tracker.wait_disconnected(peer.peer_id)
        # A link that held for a while earns a fresh start; one dropped at once (the peer is full,
        # or going down) keeps backing off, so we do not knock on its door twice a second.
        delay = initial_backoff if trio.current_time() - since > max_backoff else min(delay * 2, max_backoff)
        await trio.sleep(delay * rng.uniform(0.5, 1.5))
