"""Buffering models between round ends, shared by the round-based protocols."""

from __future__ import annotations

from typing import Protocol, TypeVar

import trio

from transport.base import Event, PeerId, Received, Transport


class RoundMessage(Protocol):
    round: int


M = TypeVar("M", bound=RoundMessage)


async def keep_newest(transport: Transport, inbox: dict[PeerId, M], kind: type[M]) -> None:
    """Read the transport's events until they end, keeping the newest `kind` message (by round) per
    sender.

    The protocol empties `inbox` at each round's end; other events are ignored here. Events already
    queued are taken in one go (`EventChannel.receive_nowait`): a node's neighbours' models arrive
    together, and a schedule point per model cost an emulated node a task switch each.
    """
    events = transport.events
    while True:
        try:
            event: Event = await events.receive()
            while True:
                if isinstance(event, Received) and isinstance(event.message, kind):
                    previous = inbox.get(event.sender)
                    if previous is None or event.message.round >= previous.round:
                        inbox[event.sender] = event.message
                event = events.receive_nowait()
        except trio.WouldBlock:
            continue
        except trio.EndOfChannel:
            return
