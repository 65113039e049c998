"""`Wrapped`: a transport that passes everything to another one, for tests that change how it sends.

Tests model a peer that stops reading (libp2p's `send` then waits until a deadline) by overriding
`send` on top of the in-memory transport, whose own `send` never blocks.
"""

from __future__ import annotations

from transport.base import Transport


class Wrapped(Transport):
    """`inner` with every call passed through; subclasses override `send`."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.peer_id, self.stats = inner.peer_id, inner.stats

    def peers(self):
        return self.inner.peers()

    @property
    def events(self):
        return self.inner.events

    async def send(self, peer, message) -> None:
        await self.inner.send(peer, message)

    async def publish(self, topic, message) -> None:
        await self.inner.publish(topic, message)

    async def subscribe(self, topic) -> None:
        await self.inner.subscribe(topic)
