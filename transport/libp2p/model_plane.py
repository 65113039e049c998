"""The model plane: one libp2p stream per message, for payloads of any size up to a cap.

GossipSub drops anything over 1 MiB and request_response breaks near 6.5 MB, so direct messages
(models above all) travel on their own protocol. One transfer on a fresh stream::

    sender:   u32 header length | msgpack header [version, kind, round, size, codec]
              body: `size` bytes, written in chunks of `chunk_bytes`
              sha256 of the body: 32 bytes
    receiver: one status byte (0 = accepted; otherwise why it refused), then the stream ends

The header's codec names what the body is (plain msgpack, or with its models compressed; see
`transport.body_codec`). The digest trails the body so that neither side waits for a pass over the
body of its own: the sender hashes while it writes, the receiver while it reads, both in a worker
thread for big bodies (hashlib releases the GIL), so hashing takes no time from the event loop.
The receiver checks the header before it allocates anything (size against its cap, known codec, the
optional accept hook, a free slot in the inbox), reads exactly `size` bytes into one buffer, checks
the digest, decodes (big tensors stay views of that buffer: no copy of the model on the way in),
and only then hands the message on; any failure resets the stream, logs a line and bumps a counter,
and the model that reaches the application is never partial.

A refusal through the sender's fault (not "busy", not a transfer we do not want) is also charged to
the sender (`Bans`): a peer that keeps sending bad transfers is banned, and while it is, its streams
are reset unread.

Every read and write runs under a deadline (`io_timeout`), and the whole transfer under another
(`transfer_timeout`): on py-libp2p an EOF, a reset and a dead peer look alike, and a writer to a
stopped peer would otherwise block forever. Concurrent transfers are bounded in each direction.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import struct
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import msgpack
import numpy as np
import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from transport import codec
from transport.base import PeerId, Received, TrafficStats
from transport.body_codec import CODEC_NAME, decode_body, is_known_codec
from transport.errors import DecodeError, PeerUnreachable
from transport.framing import frame_prefix, read_frame
from transport.libp2p.bans import Bans
from transport.libp2p.errors import MessageTooLarge, TransferRejected
from transport.libp2p.inbox import Inbox, Slots
from transport.libp2p.stats import Libp2pStats
from transport.libp2p.streams import close_quietly, reset_quietly

__all__ = ["MODEL_PROTOCOL", "ModelPlane", "ModelPlaneConfig", "TransferHeader", "tag_of"]

log = logging.getLogger(__name__)

# Version 2 moved the digest from the header to a trailer; a peer of the other version fails to
# negotiate the protocol (PeerUnreachable), rather than have its transfers refused as bad headers.
MODEL_PROTOCOL = TProtocol("/p2pfl/model/2.0.0")
HEADER_VERSION = 2
DIGEST_BYTES = 32  # the sha256 trailer
# Bodies from this size on are hashed in a worker thread, this many bytes at a time at the receiver:
# a thread takes the GIL back after each piece, and while the event loop is busy that can wait for
# the interpreter's switch interval (5 ms), so pieces are big.
_HASH_IN_THREAD_BYTES = 4 * 2**20
_HASH_STEP_BYTES = 4 * 2**20
_MAX_READ_BYTES = 16 * 2**20  # Yamux's largest window: more than an honest peer has in flight

STATUS_OK = 0
_STATUS_BY_REASON = {
    "bad_header": 1,
    "too_large": 2,
    "refused": 3,
    "busy": 4,
    "hash_mismatch": 5,
    "undecodable": 6,
    "kind_mismatch": 7,
    "unknown_codec": 8,
}
_REASON_BY_STATUS = {code: reason for reason, code in _STATUS_BY_REASON.items()}
# Refusals that are the sender's fault, charged to it. Not: "busy" (our capacity), "refused" (the
# application does not want it, e.g. a closed round), "unknown_codec" (a newer peer), "banned".
SENDER_FAULTS = frozenset(
    {"bad_header", "too_large", "hash_mismatch", "undecodable", "kind_mismatch", "timeout", "truncated"}
)


@dataclass(frozen=True, slots=True)
class ModelPlaneConfig:
    """Deadlines (seconds), sizes (bytes) and concurrency of the model plane."""

    io_timeout: float = 10.0  # each read or write of the stream
    transfer_timeout: float = 600.0  # one whole transfer, either side (bounds a trickling peer)
    connect_timeout: float = 10.0  # dial and protocol negotiation of a new stream
    # How long a receiver waits for a free slot before refusing "busy". Yamux gives up on a writer
    # whose window stays shut for 5 s, so waiting longer would only turn "busy" into a reset.
    queue_timeout: float = 2.0
    chunk_bytes: int = 2**20  # writes of the body; a read takes whatever has arrived of it
    # After a read that brought less than `chunk_bytes` of a big body, wait this long before the
    # next, so that more has arrived: each read sends a Yamux window update (a frame through Noise),
    # and reading every 64 KiB frame as it comes makes about a thousand of them per 64 MiB.
    # 0 reads at once.
    read_pause: float = 0.001
    max_header_bytes: int = 4096
    max_body_bytes: int = codec.DEFAULT_LIMITS.max_frame_bytes
    max_inbound: int = 4  # transfers being received at once
    max_outbound: int = 4  # transfers of bodies over `small_body_bytes` being sent at once
    # Bodies up to this size (pings, pongs, views, a small model) are sent outside `max_outbound`:
    # the limit bounds the memory and bandwidth of big transfers, and peers that stop reading hold
    # their slots for up to `io_timeout` each, which must not silence a node's answers to the rest.
    small_body_bytes: int = 64 * 2**10
    # Receive buffers of big bodies that nothing views any more, kept for the next bodies: filling
    # fresh memory costs a page fault per page, which for a model is about as much CPU as hashing
    # it (more on a VM). At most this many bytes are kept; 0 keeps none.
    buffer_pool_bytes: int = 2 * 2**30

    def __post_init__(self) -> None:
        for name in ("io_timeout", "transfer_timeout", "connect_timeout", "queue_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("chunk_bytes", "max_header_bytes", "max_body_bytes", "max_inbound", "max_outbound"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.small_body_bytes < 0:
            raise ValueError("small_body_bytes must be >= 0")
        if not 0 <= self.read_pause <= 0.1:  # a long pause would stall the sender's window
            raise ValueError("read_pause must be in [0, 0.1]")
        if self.buffer_pool_bytes < 0:
            raise ValueError("buffer_pool_bytes must be >= 0")


DEFAULT_MODEL_PLANE = ModelPlaneConfig()


@dataclass(frozen=True, slots=True)
class TransferHeader:
    """What a receiver learns before the body, enough to refuse it unread.

    `kind` is the codec tag of the message and `round` its round (or -1), so the layer above can
    refuse, say, a model for a round it has closed without downloading it (`accept` hook).
    """

    kind: str
    round: int
    size: int
    codec: str = CODEC_NAME

    def encode(self) -> bytes:
        body = msgpack.packb([HEADER_VERSION, self.kind, self.round, self.size, self.codec])
        return frame_prefix(len(body)) + body

    @classmethod
    def decode(cls, data: bytes) -> TransferHeader:
        """The header in `data`; `DecodeError` if it is not exactly a well-typed version-2 header."""
        try:
            raw = msgpack.unpackb(
                data, raw=False, max_str_len=256, max_bin_len=64, max_array_len=16, max_map_len=0
            )
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise DecodeError(f"malformed transfer header: {exc}") from exc
        if not (isinstance(raw, list) and len(raw) == 5 and raw[0] == HEADER_VERSION):
            raise DecodeError(f"not a version-{HEADER_VERSION} transfer header")
        _, kind, round_, size, codec_name = raw
        if not (
            isinstance(kind, str)
            and type(round_) is int
            and type(size) is int
            and size >= 0
            and isinstance(codec_name, str)
        ):
            raise DecodeError("transfer header fields have the wrong types")
        return cls(kind, round_, size, codec_name)


AcceptFn = Callable[[PeerId, TransferHeader], bool]

_TAGS: dict[type, str] = {}


def tag_of(message: object) -> str:
    """The codec tag `message`'s type is registered under (TypeError if none)."""
    tag = _TAGS.get(type(message))
    if tag is None:
        _TAGS.update({cls: tag for tag, cls in codec.message_types().items()})
        tag = _TAGS.get(type(message))
        if tag is None:
            raise TypeError(f"{type(message).__qualname__} is not a registered message type")
    return tag


class _Refused(Exception):
    """A transfer we refuse, with the reason that goes to the counters and the status byte."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ModelPlane:
    """Sends and receives model-plane transfers for one host; received messages go to the inbox."""

    def __init__(
        self,
        host: IHost,
        inbox: Inbox,
        *,
        traffic: TrafficStats,
        stats: Libp2pStats,
        bans: Bans,
        config: ModelPlaneConfig = DEFAULT_MODEL_PLANE,
        limits: codec.Limits = codec.DEFAULT_LIMITS,
        accept: AcceptFn | None = None,
        inbox_slots: int = 16,
    ) -> None:
        self.config = config
        self._host = host
        self._inbox = inbox
        self._slots = Slots("models", inbox_slots)
        self._traffic = traffic
        self._stats = stats
        self._bans = bans
        self._limits = limits
        self._accept = accept
        self._inbound = trio.Semaphore(config.max_inbound)
        self._outbound = trio.Semaphore(config.max_outbound)
        self._buffers = BufferPool(config.buffer_pool_bytes)
        self.closing = False  # set at shutdown: transfers cut off by it are not the peer's fault

    def install(self) -> None:
        """Register the stream handler; before the host listens, so no early stream is refused."""
        self._host.set_stream_handler(MODEL_PROTOCOL, self._handle)

    # --- sending --------------------------------------------------------------------------------

    async def send(
        self,
        peer: ID,
        *,
        kind: str,
        round_: int,
        body: bytes | Sequence[bytes | memoryview],
        codec_name: str = CODEC_NAME,
    ) -> None:
        """Transfer `body` (an encoded message, or its segments) to `peer`; await the verdict.

        `codec_name` says what the body is (`transport.body_codec`). Segments are sent as they are,
        without joining them, and hashed as they go: what they view must not change until this
        returns. Raises
        `TransferRejected` if the peer refused it after reading, `PeerUnreachable` if the dial, a
        write or the verdict failed or timed out.
        """
        cfg = self.config
        parts = [body] if isinstance(body, (bytes, bytearray, memoryview)) else body
        segments = [view for view in (memoryview(part).cast("B") for part in parts) if view.nbytes]
        size = sum(view.nbytes for view in segments)
        if size > cfg.max_body_bytes:
            raise MessageTooLarge(f"message of {size} bytes exceeds the {cfg.max_body_bytes}-byte cap")
        header = TransferHeader(kind, round_, size, codec_name).encode()
        slot = self._outbound if size > cfg.small_body_bytes else contextlib.nullcontext()
        try:
            with trio.fail_after(cfg.transfer_timeout):
                async with slot:
                    await self._transfer(peer, header, segments)
        except trio.TooSlowError as exc:
            self._stats.transfers_failed += 1
            raise PeerUnreachable(f"transfer to {peer} exceeded {cfg.transfer_timeout} s") from exc
        except PeerUnreachable:
            self._stats.transfers_failed += 1
            raise
        self._stats.transfers_sent += 1
        self._traffic.messages_sent += 1

    async def _transfer(self, peer: ID, header: bytes, segments: list[memoryview]) -> None:
        cfg = self.config
        try:
            with trio.fail_after(cfg.connect_timeout):
                stream = await self._host.new_stream(peer, [MODEL_PROTOCOL])
        except trio.TooSlowError as exc:
            raise PeerUnreachable(f"no stream to {peer} within {cfg.connect_timeout} s") from exc
        except Exception as exc:  # dial and negotiation errors come in many libp2p types
            raise PeerUnreachable(f"no stream to {peer}: {exc!r}") from exc
        step = "header"
        try:
            await self._write(stream, header)
            step = "body"
            await self._write_body(stream, segments)
            step = "verdict"
            with trio.fail_after(cfg.io_timeout):
                status = await stream.read(1)
            if not status:
                raise EOFError("stream ended before the verdict")
            self._traffic.bytes_received += len(status)
        except BaseException as exc:
            await reset_quietly(stream)
            if isinstance(exc, trio.TooSlowError):
                raise PeerUnreachable(f"{peer}: {step} timed out after {cfg.io_timeout} s") from exc
            if isinstance(exc, Exception):
                raise PeerUnreachable(f"{peer}: transfer broke off at the {step}: {exc!r}") from exc
            raise  # Cancelled and friends
        if status[0] != STATUS_OK:
            await reset_quietly(stream)
            reason = _REASON_BY_STATUS.get(status[0], f"status {status[0]}")
            raise TransferRejected(f"{peer} refused the transfer: {reason}")
        await close_quietly(stream)

    async def _write_body(self, stream: INetStream, segments: list[memoryview]) -> None:
        """The body in chunks of `chunk_bytes`, then its sha256, hashed while the chunks go out."""
        chunks = _chunks(segments, self.config.chunk_bytes)
        if sum(segment.nbytes for segment in segments) < _HASH_IN_THREAD_BYTES:
            hasher = hashlib.sha256()
            for chunk in chunks:
                hasher.update(chunk)
                await self._write(stream, chunk)
            await self._write(stream, hasher.digest())
            return
        digest: list[bytes] = []

        async def hash_all() -> None:
            digest.append(await trio.to_thread.run_sync(_sha256, segments, abandon_on_cancel=True))

        async def write_all() -> None:
            for chunk in chunks:
                await self._write(stream, chunk)

        await _alongside(hash_all, write_all)
        await self._write(stream, digest[0])

    async def _write(self, stream: INetStream, data: bytes | memoryview) -> None:
        with trio.fail_after(self.config.io_timeout):
            await stream.write(data)
        self._traffic.bytes_sent += len(data)

    # --- receiving ------------------------------------------------------------------------------

    async def _handle(self, stream: INetStream) -> None:
        """Stream handler: never raises, so a bad peer cannot disturb the connection's other streams."""
        sender = stream.muxed_conn.peer_id.to_base58()
        left = self._bans.ban_left(stream.muxed_conn.peer_id)
        if left > 0:
            await self._refuse(stream, sender, _Refused("banned", f"banned for {left:.0f} more s"))
            return
        acquired = False
        with trio.move_on_after(self.config.queue_timeout):
            await self._inbound.acquire()
            acquired = True
        if not acquired:
            refusal = _Refused("busy", f"all {self.config.max_inbound} inbound transfer slots taken")
            await self._refuse(stream, sender, refusal)
            return
        try:
            await self._receive(stream, sender)
        finally:
            self._inbound.release()

    async def _receive(self, stream: INetStream, sender: PeerId) -> None:
        cfg = self.config
        reserved = False
        try:
            with trio.fail_after(cfg.transfer_timeout):
                header = await self._read_header(stream)
                self._check(sender, header)
                with trio.move_on_after(cfg.queue_timeout):
                    await self._slots.reserve()
                    reserved = True
                if not reserved:
                    raise _Refused("busy", f"{self._slots.capacity} received messages not yet consumed")
                body = await self._read_body(stream, header)
                message = await self._decode(body, header)
        except _Refused as refusal:
            await self._refuse(stream, sender, refusal)
        except trio.TooSlowError:
            await self._refuse(stream, sender, _Refused("timeout", "a read or the transfer ran late"))
        except Exception as exc:  # the peer reset, closed early or vanished mid-transfer
            await self._refuse(stream, sender, _Refused("truncated", repr(exc)))
        else:
            self._stats.transfers_received += 1
            self._traffic.messages_received += 1
            self._inbox.deliver(Received(sender, message), self._slots)
            reserved = False
            await self._reply(stream, STATUS_OK)
            await close_quietly(stream)
        finally:
            if reserved:
                self._slots.release()

    async def _read_header(self, stream: INetStream) -> TransferHeader:
        try:
            raw = await read_frame(
                lambda n: self._read_exactly(stream, n), max_frame_bytes=self.config.max_header_bytes
            )
        except DecodeError as exc:  # the only DecodeError of read_frame: length over the cap
            raise _Refused("too_large", f"header: {exc}") from exc
        try:
            return TransferHeader.decode(raw)
        except DecodeError as exc:
            raise _Refused("bad_header", str(exc)) from exc

    def _check(self, sender: PeerId, header: TransferHeader) -> None:
        if not is_known_codec(header.codec):
            raise _Refused("unknown_codec", f"unknown body codec {header.codec[:40]!r}")
        if header.size > self.config.max_body_bytes:
            raise _Refused("too_large", f"{header.size} bytes announced, cap {self.config.max_body_bytes}")
        if self._accept is None:
            return
        try:
            wanted = self._accept(sender, header)
        except Exception:
            log.exception("the accept_transfer hook failed; refusing the transfer")
            wanted = False
        if not wanted:
            raise _Refused("refused", f"{header.kind[:40]!r} round {header.round} not wanted")

    async def _read_body(self, stream: INetStream, header: TransferHeader) -> memoryview:
        """Exactly `header.size` bytes, hashed as they come, checked against the digest that trails them.

        Returns a read-only view of the one buffer the body was read into, a free one of the pool
        when one fits (`BufferPool`). A fresh buffer is as big as the header says, but memory backs
        only what was written into it: a peer that announces 500 MB and trickles a byte at a time
        holds address space, not memory.
        """
        size = header.size
        try:
            buffer = self._buffers.take(size) if size >= _HASH_IN_THREAD_BYTES else np.empty(size, np.uint8)
        except MemoryError as exc:
            raise _Refused("busy", f"no memory for a {size}-byte body") from exc
        body = memoryview(buffer)
        hasher = hashlib.sha256()
        if size < _HASH_IN_THREAD_BYTES:  # small: hashed as it comes, read at once
            await self._fill(stream, body, lambda start, stop: hasher.update(body[start:stop]), pause=0)
            trailer = await self._read_exactly(stream, DIGEST_BYTES)
        else:  # hashed in a worker thread, a step behind the bytes as they arrive
            arrived_to, arrived = trio.open_memory_channel[int](math.inf)
            marked = 0

            def progress(start: int, stop: int) -> None:
                nonlocal marked
                if stop - marked >= _HASH_STEP_BYTES or stop == size:
                    arrived_to.send_nowait(stop)
                    marked = stop

            async def fill_then_trailer() -> bytes:
                with arrived_to:
                    await self._fill(stream, body, progress, pause=self.config.read_pause)
                return await self._read_exactly(stream, DIGEST_BYTES)

            trailer = await _alongside(partial(_hash_behind, hasher, body, arrived), fill_then_trailer)
        if trailer != hasher.digest():
            raise _Refused("hash_mismatch", f"sha256 of the {size}-byte body differs from its trailer")
        return body.toreadonly()

    async def _fill(
        self, stream: INetStream, body: memoryview, progress: Callable[[int, int], None], *, pause: float
    ) -> None:
        """Read `body` full, whatever has arrived at a time; `progress(start, stop)` after each piece.

        After a piece shorter than `chunk_bytes`, wait `pause` seconds for more to arrive.
        """
        done = 0
        while done < body.nbytes:
            chunk = await self._read_some(stream, min(body.nbytes - done, _MAX_READ_BYTES))
            body[done : done + len(chunk)] = chunk
            progress(done, done + len(chunk))
            done += len(chunk)
            if pause and len(chunk) < self.config.chunk_bytes and done < body.nbytes:
                await trio.sleep(pause)

    async def _decode(self, body: memoryview, header: TransferHeader) -> object:
        try:
            message = await decode_body(header.codec, body, limits=self._limits)
        except DecodeError as exc:
            raise _Refused("undecodable", str(exc)) from exc
        if tag_of(message) != header.kind:
            raise _Refused("kind_mismatch", f"header says {header.kind[:40]!r}, body is another type")
        return message

    async def _read_exactly(self, stream: INetStream, n: int) -> bytes:
        parts = []
        while n:
            chunk = await self._read_some(stream, n)
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    async def _read_some(self, stream: INetStream, n: int) -> bytes:
        """1..n bytes; EOFError at end of stream; TooSlowError past `io_timeout`."""
        with trio.fail_after(self.config.io_timeout):
            chunk = await stream.read(n)
        if not chunk:
            raise EOFError("stream ended mid-transfer")
        self._traffic.bytes_received += len(chunk)
        return chunk

    async def _refuse(self, stream: INetStream, sender: PeerId, refusal: _Refused) -> None:
        if self.closing:
            log.debug("transfer from %s cut off by shutdown: %s", sender, refusal)
            await reset_quietly(stream)
            return
        self._stats.reject_transfer(refusal.reason)
        self._traffic.messages_rejected += 1
        log.warning("refused a model-plane transfer from %s (%s): %s", sender, refusal.reason, refusal.detail)
        code = _STATUS_BY_REASON.get(refusal.reason)
        if code is not None:  # the stream is still in step: tell the sender why, best effort
            await self._reply(stream, code)
        await reset_quietly(stream)
        if refusal.reason in SENDER_FAULTS:
            self._bans.charge(stream.muxed_conn.peer_id, refusal.reason)

    async def _reply(self, stream: INetStream, status: int) -> None:
        with trio.move_on_after(self.config.io_timeout):
            try:
                await stream.write(struct.pack("B", status))
                self._traffic.bytes_sent += 1
            except Exception as exc:
                log.debug("could not send status %d: %r", status, exc)


class BufferPool:
    """Receive buffers for big bodies, each used again once nothing views it any more.

    `take` hands out `slab[:size]` of a free slab (at most twice `size`) or of a new one; decoded
    tensors view that slice, and when the last view of it goes, a finalizer returns the slab, as
    long as the free slabs stay within `keep_bytes`. A new slab first drops the oldest free ones
    that would leave no room for it, so free slabs of sizes no longer asked for do not linger.
    Slabs come from `np.empty`: numpy asks for huge pages for them, so even a new one fills with
    few page faults.
    """

    def __init__(self, keep_bytes: int) -> None:
        self.keep_bytes = keep_bytes
        self._free: list[np.ndarray] = []
        self._free_bytes = 0
        self.reused = 0  # takes served from a free slab
        # Finalizers run in whichever thread drops the last view, maybe during a take (reentrant).
        self._lock = threading.RLock()

    @property
    def free_bytes(self) -> int:
        return self._free_bytes

    def take(self, size: int) -> np.ndarray:
        """A writable uint8 array of `size` bytes; its contents are undefined."""
        slab = None
        with self._lock:
            fits = [i for i, free in enumerate(self._free) if size <= free.nbytes <= 2 * size]
            if fits:
                slab = self._free.pop(min(fits, key=lambda i: self._free[i].nbytes))
                self._free_bytes -= slab.nbytes
                self.reused += 1
            else:
                while self._free and self._free_bytes + size > self.keep_bytes:
                    self._free_bytes -= self._free.pop(0).nbytes
        if slab is None:
            slab = np.empty(size, np.uint8)
        view = slab[:size]
        weakref.finalize(view, self._give_back, slab).atexit = False
        return view

    def _give_back(self, slab: np.ndarray) -> None:
        with self._lock:
            if self._free_bytes + slab.nbytes <= self.keep_bytes:
                self._free.append(slab)
                self._free_bytes += slab.nbytes


_T = TypeVar("_T")


async def _alongside(background: Callable[[], Awaitable[None]], work: Callable[[], Awaitable[_T]]) -> _T:
    """`await work()` with `background()` running meanwhile; returns once both are done.

    An exception of `work` stops `background` and propagates as itself (not in an ExceptionGroup),
    so the callers' error handling sees what it would have seen without the background task.
    """
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(background)
        try:
            result = await work()
        except Exception as exc:
            failure = exc
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return result


def _sha256(segments: list[memoryview]) -> bytes:
    hasher = hashlib.sha256()
    for segment in segments:
        hasher.update(segment)
    return hasher.digest()


async def _hash_behind(
    hasher: hashlib._Hash, body: memoryview, arrived: trio.MemoryReceiveChannel[int]
) -> None:
    """Feed `hasher` the bytes of `body` up to each mark received on `arrived`, in a worker thread.

    Marks that queued up while the thread worked are taken together, so a slow thread hashes bigger
    pieces rather than falling behind.
    """
    hashed = 0
    with arrived:
        async for mark in arrived:
            while True:
                try:
                    mark = arrived.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await trio.to_thread.run_sync(hasher.update, body[hashed:mark], abandon_on_cancel=True)
            hashed = mark


def _chunks(segments: list[memoryview], chunk_bytes: int) -> Iterator[bytes | memoryview]:
    """The bytes of `segments` in pieces of exactly `chunk_bytes` (the last one shorter).

    A piece inside one segment is a view of it; only a piece across segment boundaries is copied.
    """
    pending: list[memoryview] = []
    pending_bytes = 0
    for segment in segments:
        start = 0
        if pending:  # complete the piece begun in earlier segments
            start = min(chunk_bytes - pending_bytes, segment.nbytes)
            pending.append(segment[:start])
            pending_bytes += start
            if pending_bytes < chunk_bytes:
                continue
            yield b"".join(pending)
            pending, pending_bytes = [], 0
        while segment.nbytes - start >= chunk_bytes:
            yield segment[start : start + chunk_bytes]
            start += chunk_bytes
        if start < segment.nbytes:
            pending.append(segment[start:])
            pending_bytes += segment.nbytes - start
    if pending:
        yield b"".join(pending) if len(pending) > 1 else pending[0]
