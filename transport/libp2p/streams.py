"""Ending a stream on an error path: shielded, bounded, and never raising.

Error paths often run under an expired deadline or after the peer vanished; a reset or close that
blocks or raises there would hide the original error or hang the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from libp2p.abc import INetStream

log = logging.getLogger(__name__)

_DEADLINE = 1.0  # seconds


async def reset_quietly(stream: INetStream) -> None:
    await _quietly(stream.reset, "reset")


async def close_quietly(stream: INetStream) -> None:
    await _quietly(stream.close, "close")


async def _quietly(action: Callable[[], Awaitable[None]], what: str) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(_DEADLINE):
        try:
            await action()
        except Exception as exc:
            log.debug("stream %s failed: %r", what, exc)
