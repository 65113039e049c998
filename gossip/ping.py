"""Liveness pings: is a peer answering right now?

MoDeST picks each round's sample from the peers that answer a ping, so a crashed peer costs one
timeout instead of a stalled round. Answers are matched by (peer, nonce), so a peer cannot answer
for another.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count

import trio

from gossip.sampling import DEFAULT_PING_TIMEOUT
from transport.base import PeerId, Received, Transport
from transport.codec import message
from transport.errors import PeerUnreachable
from transport.outbox import Outbox


@message("ping", version=1)
@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int


@message("pong", version=1)
@dataclass(frozen=True, slots=True)
class Pong:
    """The answer, with the newest round the answering peer knows of (0 if it follows no rounds)."""

    nonce: int
    round: int = 0


class Pinger:
    """Sends pings and answers them; the protocol's event loop hands it every ping and pong.

    Answers carry `round`, which the owning protocol keeps current, so a ping also tells whether a
    peer has moved past a round (`reported`). They go out through `outbox`, so a pinger that stops
    reading holds up neither the event loop nor the answers to anyone else, and each is given up
    after `answer_timeout` seconds: the pinger's own timeout (the same setting across a deployment),
    after which an answer is of no use to it.
    """

    def __init__(
        self,
        transport: Transport,
        outbox: Outbox,
        *,
        interval: float = 1.0,
        answer_timeout: float = DEFAULT_PING_TIMEOUT,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"ping interval must be > 0 seconds, got {interval}")
        if not answer_timeout > 0:
            raise ValueError(f"answer timeout must be > 0 seconds, got {answer_timeout}")
        self._transport = transport
        self._outbox = outbox
        self._interval = interval
        self._answer_timeout = answer_timeout
        self._nonces = count(1)
        self._waiting: dict[tuple[PeerId, int], trio.Event] = {}
        self.round = 0
        self.reported: dict[PeerId, int] = {}

    async def is_available(self, peer: PeerId) -> bool:
        """True once `peer` answers; wrap it in a cancel scope for the timeout. The own peer always is.

        The ping is repeated every `interval` seconds until answered, so one lost message costs an
        interval rather than the caller's whole timeout.
        """
        if peer == self._transport.peer_id:
            await trio.lowlevel.checkpoint()
            return True
        key = (peer, next(self._nonces))
        answered = self._waiting[key] = trio.Event()
        try:
            while True:
                await self._transport.send(peer, Ping(key[1]))
                with trio.move_on_after(self._interval):
                    await answered.wait()
                    return True
        except PeerUnreachable:
            return False
        finally:
            del self._waiting[key]

    async def handle(self, event: Received) -> bool:
        """Answer a ping (without waiting for the answer to arrive) or note a pong; False if neither."""
        if isinstance(event.message, Ping):
            pong = Pong(event.message.nonce, self.round)
            await self._outbox.send(event.sender, pong, timeout=self._answer_timeout)
            return True
        if isinstance(event.message, Pong):
            answered = self._waiting.get((event.sender, event.message.nonce))
            if answered is not None:
                self.reported[event.sender] = max(self.reported.get(event.sender, 0), event.message.round)
                answered.set()
            return True
        return False
