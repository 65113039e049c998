"""`Outbox`: messages sent without waiting for them, for replies an event loop must not wait on.

A protocol that answers peers from the loop reading its events (a pong to a ping, a view to a join
advertisement) must not await the answer's `Transport.send` there: on libp2p a send returns only
once the peer verified and queued the message, so a peer that asks and then stops reading would
hold up every other event until the model plane's deadline, and again with every question.

`Outbox.send` returns at once. Where `send` may block (`Transport.send_may_block`) the message is
queued for its peer, and one task per peer with anything queued sends its queue in order, each
message given up once its deadline passes. A peer that stops reading so holds up only what is queued
for it: never the caller, never what goes to another peer, and never more than one transfer at a
time (the libp2p model plane sends a few transfers at once in all: a peer must not take them all).
Where `send` never blocks (the emulator's in-memory network), the message is sent in the caller's
task at once, which costs no task per message: an emulation of 100,000 MoDeST nodes answers a ping
for every candidate any of them checks.
"""

from __future__ import annotations

import logging
from collections import deque

import trio

from transport.base import PeerId, Transport, log_unreachable
from transport.errors import PeerUnreachable

__all__ = ["Outbox"]

log = logging.getLogger(__name__)


class Outbox:
    """Sends to peers that the caller does not wait for; the sending tasks live in `nursery`.

    At most `max_queued` messages wait for one peer (the one being sent included); more are dropped
    with a log line, so a peer that keeps asking and never reads cannot make the queue grow.
    """

    __slots__ = ("_max_queued", "_nursery", "_queues", "_transport")  # one per emulated node

    def __init__(self, transport: Transport, nursery: trio.Nursery, *, max_queued: int = 16) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued}")
        self._transport = transport
        self._nursery = nursery
        self._max_queued = max_queued
        self._queues: dict[PeerId, deque[tuple[object, float]]] = {}

    async def send(self, peer: PeerId, message: object, *, timeout: float) -> None:
        """Send `message` to `peer` within `timeout` seconds from now, or not at all; never waits on it.

        A peer that cannot be reached, or does not take the message in time, is logged. With a
        transport whose `send` never blocks this sends at once and returns (and raises `Cancelled`
        if the caller is cancelled, like that `send`); otherwise it only queues the message.
        """
        transport = self._transport
        if not transport.send_may_block:
            await transport.send_each([peer], message)  # at once, in this task, failures logged
            return
        queue = self._queues.get(peer)
        if queue is None:
            queue = self._queues[peer] = deque()
            self._nursery.start_soon(self._drain, peer, queue)
        elif len(queue) >= self._max_queued:
            log.info(
                "dropped %s to %s: %d messages wait for it already", type(message).__name__, peer, len(queue)
            )
            return
        queue.append((message, trio.current_time() + timeout))

    def pending(self, peer: PeerId) -> int:
        """Messages queued for `peer` and not yet sent or given up (the one being sent included)."""
        queue = self._queues.get(peer)
        return 0 if queue is None else len(queue)

    async def _drain(self, peer: PeerId, queue: deque[tuple[object, float]]) -> None:
        """Send what is queued for `peer`, in order, until nothing is; then forget the queue."""
        try:
            while queue:
                message, deadline = queue[0]  # counted as waiting until its send ends
                given_up = trio.current_time() >= deadline  # it expired while the ones before went
                if not given_up:
                    with trio.move_on_at(deadline) as scope:
                        try:
                            await self._transport.send(peer, message)
                        except PeerUnreachable as exc:
                            log_unreachable(message, peer, exc)
                    given_up = scope.cancelled_caught
                if given_up:
                    log.info("gave up sending %s to %s at its deadline", type(message).__name__, peer)
                queue.popleft()
        finally:
            del self._queues[peer]
