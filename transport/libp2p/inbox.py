"""The one ordered event stream of a libp2p transport, bounded where it matters.

Two needs pull apart. Events must stay in arrival order (a `PeerConnected` before that peer's first
message), and peer events must never block: the swarm awaits our connect/disconnect notifications
inside its dial path, so blocking them on a full queue while the application is itself blocked
dialing would deadlock. Yet messages must not pile up without bound when the application reads slowly:
a model is megabytes.

So everything travels on one unbounded, ordered channel, and what bounds memory is a set of slots:
a producer of messages reserves a slot *before* it reads the message off the wire (so a busy
receiver refuses a transfer instead of buffering it) and the slot comes back when the application
receives the message. Peer events take no slot.
"""

from __future__ import annotations

import contextlib
import math

import trio

from transport.base import Event, PeerConnected, PeerDisconnected

__all__ = ["Inbox", "Slots"]


class Slots:
    """Room for `capacity` undelivered messages of one kind (e.g. models, control messages)."""

    def __init__(self, name: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"{name}: capacity must be >= 1, got {capacity}")
        self.name = name
        self.capacity = capacity
        self._semaphore = trio.Semaphore(capacity)

    @property
    def free(self) -> int:
        return self._semaphore.value

    async def reserve(self) -> None:
        """Wait for room; the caller then `Inbox.deliver`s exactly once or calls `release`."""
        await self._semaphore.acquire()

    def release(self) -> None:
        self._semaphore.release()


class Inbox(trio.abc.ReceiveChannel[Event]):
    """What `Libp2pTransport.events` returns; single consumer."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[tuple[Event, Slots | None]](math.inf)

    def push_peer_event(self, event: PeerConnected | PeerDisconnected) -> None:
        """Queue a connect/disconnect event; never blocks. Dropped silently once the inbox is closed."""
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self._send.send_nowait((event, None))

    def deliver(self, event: Event, slots: Slots) -> None:
        """Queue a message for which a slot of `slots` was reserved; never blocks."""
        try:
            self._send.send_nowait((event, slots))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            slots.release()

    async def receive(self) -> Event:
        return _released(await self._receive.receive())

    def receive_nowait(self) -> Event:
        return _released(self._receive.receive_nowait())

    def close(self) -> None:
        """No more events: the consumer gets what is queued, then `trio.EndOfChannel`."""
        self._send.close()

    async def aclose(self) -> None:
        await self._receive.aclose()


def _released(queued: tuple[Event, Slots | None]) -> Event:
    """The event of a queue entry, its inbox slot (if it took one) given back: it is read now."""
    event, slots = queued
    if slots is not None:
        slots.release()
    return event
