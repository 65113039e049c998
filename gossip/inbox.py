"""Buffering models between round ends, shared by the round-based protocols."""

from __future__ import annotations

from typing import Protocol, TypeVar

from transport.base import PeerId, Received, Transport


class RoundMessage(Protocol):
    round: int


M = TypeVar("M", bound=RoundMessage)


async def keep_newest(transport: Transport, inbox: dict[PeerId, M], kind: type[M]) -> None:
    """Read the transport's events forever, keeping the newest `kind` message (by round) per sender.

    The protocol empties `inbox` at each round's end; other events are ignored here.
    """
    async for event in transport.events:
        if isinstance(event, Received) and isinstance(event.message, kind):
            previous = inbox.get(event.sender)
            if previous is None or event.message.round >= previous.round:
                inbox[event.sender] = event.message
