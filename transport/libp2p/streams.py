"""Ending a stream on an error path: shielded, bounded, and never raising.

Error paths often run under an expired deadline or after the peer vanished; a reset or close that
blocks or raises there would hide the original error or hang the caller.
"""

from __future__ import annotations

import logging

import trio
from libp2p.abc import INetStream

log = logging.getLogger(__name__)

_DEADLINE = 1.0  # seconds


async def reset_quietly(stream: INetStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(_DEADLINE):
        try:
            await stream.reset()
        except Exception as exc:
            log.debug("stream reset failed: %r", exc)


async def close_quietly(stream: INetStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(_DEADLINE):
        try:
            await stream.close()
        except Exception as exc:
            log.debug("stream close failed: %r", exc)
