"""Length-prefixed frames on byte streams: a u32 big-endian body length, then the body.

A stream carries no message boundaries of its own; the prefix restores them. The reader checks the
announced length against its cap before it reads or allocates the body, so a peer cannot make us
buffer gigabytes by claiming them.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable

from transport.errors import DecodeError

__all__ = ["MAX_BODY_BYTES", "PREFIX_BYTES", "encode_frame", "frame_prefix", "read_frame", "split_frame"]

_PREFIX = struct.Struct(">I")
PREFIX_BYTES = _PREFIX.size
MAX_BODY_BYTES = 2**32 - 1  # what the prefix can announce


def frame_prefix(length: int) -> bytes:
    """The 4-byte prefix of a body of `length` bytes, for writers that send prefix and body apart."""
    if not 0 <= length <= MAX_BODY_BYTES:
        raise ValueError(f"a frame body is 0..{MAX_BODY_BYTES} bytes, not {length}")
    return _PREFIX.pack(length)


def encode_frame(body: bytes | memoryview) -> bytes:
    """Prefix and body as one bytes object (one copy of the body)."""
    return frame_prefix(memoryview(body).nbytes) + body


def _check_length(length: int, max_frame_bytes: int) -> None:
    if length > max_frame_bytes:
        raise DecodeError(f"frame of {length} bytes exceeds the {max_frame_bytes}-byte cap")


async def read_frame(receive_exactly: Callable[[int], Awaitable[bytes]], *, max_frame_bytes: int) -> bytes:
    """The body of the next frame on a stream.

    `receive_exactly(n)` returns exactly n bytes or raises. Whatever it raises (end of stream, a
    closed connection) propagates unchanged, whether at a frame boundary or in the middle of a frame:
    only the transport knows whether that is a clean close. `DecodeError` means the peer announced a
    frame over `max_frame_bytes`; the body was not read, so the stream is out of step and the caller
    should drop the connection.
    """
    (length,) = _PREFIX.unpack(await receive_exactly(PREFIX_BYTES))
    _check_length(length, max_frame_bytes)
    return await receive_exactly(length) if length else b""


def split_frame(
    buffer: bytes | bytearray | memoryview, *, max_frame_bytes: int
) -> tuple[memoryview, int] | None:
    """The first complete frame in `buffer`, for readers that buffer chunks themselves.

    Returns (body, bytes consumed) with body a view into `buffer`, or None if the frame is not
    complete yet. Raises `DecodeError` as soon as the prefix announces a frame over the cap.
    """
    view = memoryview(buffer).cast("B")
    if len(view) < PREFIX_BYTES:
        return None
    (length,) = _PREFIX.unpack_from(view)
    _check_length(length, max_frame_bytes)
    end = PREFIX_BYTES + length
    if len(view) < end:
        return None
    return view[PREFIX_BYTES:end], end
