"""Peer discovery: a node that knows one peer learns the rest, and connects to some of them.

Every node is a rendezvous point. Each node registers itself under one namespace ("p2pfl") at a few
of its peers (its bootstrap peers first, then other connected peers), asks a few of them who else
registered there, remembers what it hears (and what registered at its own point), and dials
peers it learned of until it holds `target` connections. Registrations expire (`ttl`) and are
refreshed at half-life; a node that stops cleanly unregisters. Because every node serves, what one
point knows spreads to the peers of its peers, so the bootstrap node is not a single point of failure
once a node has other connections.

Wire protocol: the libp2p rendezvous protocol (``/rendezvous/1.0.0``, the protobuf `Message` of
`libp2p.discovery.rendezvous`), so a go or js rendezvous server can serve as a bootstrap point. We use
py-libp2p's messages but not its `RendezvousService` / `RendezvousClient`, whose stream handling in
0.8.1 is unsafe on an open network:

- the service reads without a deadline (an idle stream holds a handler forever) and caps neither
  concurrent streams nor namespaces; a discover creates a namespace entry that is never removed,
  and each registration may carry up to 4 MiB of addresses, so a peer can make it hold unbounded
  memory; it closes rather than resets streams on error and logs an ERROR at every client close;
- the client writes without a deadline (a write to a stopped peer blocks forever), waits 30 s,
  closes rather than resets on error, refuses TTLs under 120 s and does not check what it discovers.

So here every request runs under `io_timeout` and resets its stream on any error, the server takes
one namespace, a bounded number of registrations, streams and requests, short sanitized TCP
addresses only (an unspecified IP such as 0.0.0.0 becomes the address the registrant connected
from), and discovered records are checked before use. A record's addresses are not proof of
anything: a dial goes to a peer ID and Noise authenticates it, so a wrong address only costs a
failed dial (paced by per-peer exponential backoff).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import multiaddr
import trio
from google.protobuf.message import DecodeError as ProtobufDecodeError
from libp2p.abc import IHost, INetStream
from libp2p.discovery.rendezvous.config import RENDEZVOUS_PROTOCOL
from libp2p.discovery.rendezvous.messages import (
    create_discover_message,
    create_discover_response_message,
    create_register_message,
    create_register_response_message,
    create_unregister_message,
)
from libp2p.discovery.rendezvous.pb.rendezvous_pb2 import Message
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.utils.varint import decode_uvarint, encode_varint_prefixed

from transport.base import PeerId
from transport.libp2p.peers import ConnectionTracker
from transport.libp2p.stats import Libp2pStats
from transport.libp2p.streams import close_quietly, reset_quietly

__all__ = ["DEFAULT_DISCOVERY", "RENDEZVOUS_PROTOCOL", "Discovery", "DiscoveryConfig", "RendezvousServer"]

log = logging.getLogger(__name__)

_OK = Message.ResponseStatus.OK
_DEFAULT_TTL = 2 * 3600  # what the rendezvous spec grants when a register asks for ttl 0


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """Tuning of discovery; how often it runs and how many connections it seeks are arguments of
    `Discovery` (`open_libp2p_transport(discovery_interval=, discovery_target=)`)."""

    namespace: str = "p2pfl"
    ttl: int = 120  # seconds our registrations last at a point; refreshed at half-life
    io_timeout: float = 5.0  # one rendezvous request, either side
    dial_timeout: float = 10.0  # one dial of a discovered peer
    max_points: int = 8  # peers we register at: bootstrap peers first, then other connected ones
    fanout: int = 3  # points asked per round (one once we hold `target` connections)
    discover_limit: int = 100  # registrations asked of a point, and the most our point returns
    max_parallel_dials: int = 4
    backoff: tuple[float, float] = (1.0, 60.0)  # per-peer redial delay: initial, max (seconds)
    max_candidates: int = 1000  # discovered peers remembered
    # Our rendezvous point:
    max_registrations: int = 1000
    max_ttl: int = 2 * 3600
    max_addrs: int = 16  # per registration
    max_addr_bytes: int = 256
    max_request_bytes: int = 16 * 2**10
    max_response_bytes: int = 2**20
    max_streams: int = 16  # served at once
    max_streams_per_peer: int = 2
    max_requests_per_stream: int = 8

    def __post_init__(self) -> None:
        if not self.namespace or len(self.namespace) > 256:
            raise ValueError("namespace must be 1..256 characters")
        for name in ("io_timeout", "dial_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in (
            "ttl",
            "max_points",
            "fanout",
            "discover_limit",
            "max_parallel_dials",
            "max_candidates",
            "max_registrations",
            "max_ttl",
            "max_addrs",
            "max_addr_bytes",
            "max_request_bytes",
            "max_response_bytes",
            "max_streams",
            "max_streams_per_peer",
            "max_requests_per_stream",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 < self.backoff[0] <= self.backoff[1]:
            raise ValueError("backoff must be (initial, max) with 0 < initial <= max")


DEFAULT_DISCOVERY = DiscoveryConfig()

_Record = tuple[ID, list[multiaddr.Multiaddr], float]  # peer, addresses, seconds left


class _Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class RendezvousFailed(Exception):
    """A rendezvous request of ours failed: refused, timed out, or answered with nonsense."""


# --- addresses and peer IDs -----------------------------------------------------------------------

_HOST_PROTOCOLS = {"ip4", "ip6", "dns", "dns4", "dns6"}


def sanitize_addr(
    raw: bytes, *, max_bytes: int, observed_ip: str | None = None
) -> multiaddr.Multiaddr | None:
    """A dialable ``/<ip4|ip6|dns*>/<host>/tcp/<port>`` from untrusted bytes, or None.

    A trailing ``/p2p/<id>`` is dropped (the peer ID travels beside the address). An unspecified IP
    (0.0.0.0, ::) becomes `observed_ip` when that is given and of the same family, else the address
    is refused; a loopback IP is refused when `observed_ip` is given and is not loopback itself.
    """
    if len(raw) > max_bytes:
        return None
    try:
        items = list(multiaddr.Multiaddr(raw).items())
    except Exception:
        return None
    if len(items) == 3 and items[2][0].name == "p2p":
        items = items[:2]
    if len(items) != 2:
        return None
    (proto, host), (tcp, port) = items
    if proto.name not in _HOST_PROTOCOLS or tcp.name != "tcp" or str(port) in ("", "0"):
        return None
    if proto.name in ("ip4", "ip6"):
        ip = ipaddress.ip_address(str(host))
        seen = _parse_ip(observed_ip)
        if ip.is_unspecified:
            if seen is None or seen.version != ip.version:
                return None
            host = str(seen)
        elif ip.is_loopback and seen is not None and not seen.is_loopback:
            return None
    try:
        return multiaddr.Multiaddr(f"/{proto.name}/{host}/tcp/{port}")
    except Exception:
        return None


def _parse_ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _peer_id_from_bytes(raw: bytes) -> ID | None:
    """A peer ID from untrusted bytes, or None: a multihash, sha2-256 (32-byte digest) or identity
    (an inlined public key of up to 62 bytes, e.g. Ed25519)."""
    sha256 = len(raw) == 34 and raw[:2] == b"\x12\x20"
    identity = 2 < len(raw) <= 64 and raw[0] == 0x00 and raw[1] == len(raw) - 2
    return ID(raw) if sha256 or identity else None


def _remote_ip(stream: INetStream) -> str | None:
    try:
        address = stream.get_remote_address()
    except Exception:
        return None
    return address[0] if address else None


# --- stream helpers -------------------------------------------------------------------------------


async def _read_message(stream: INetStream, max_bytes: int) -> bytes | None:
    """The body of the next varint-length-prefixed message, or None if the stream ended cleanly
    before one began. The length is checked against `max_bytes` before the body is read, and the
    body buffer grows with what arrives. EOFError if it ends mid-message.

    (py-libp2p's `read_varint_prefixed_bytes_limited` reads a Yamux EOF as an error even at a message
    boundary, where it is the peer's normal way to say it is done.)
    """
    try:
        first = await stream.read(1)
    except EOFError:
        return None
    if not first:
        return None
    prefix = bytearray(first)
    while prefix[-1] & 0x80:
        if len(prefix) >= 4:  # 4 varint bytes already announce 256 MiB, beyond any cap of ours
            raise _Refused("too_large", "length prefix over 4 bytes")
        byte = await stream.read(1)
        if not byte:
            raise EOFError("stream ended in a length prefix")
        prefix += byte
    length = decode_uvarint(bytes(prefix))
    if length > max_bytes:
        raise _Refused("too_large", f"message of {length} bytes, cap {max_bytes}")
    body = bytearray()
    while len(body) < length:
        chunk = await stream.read(length - len(body))
        if not chunk:
            raise EOFError(f"stream ended {length - len(body)} bytes short of a message")
        body += chunk
    return bytes(body)


def _parse(data: bytes) -> Message:
    message = Message()
    try:
        message.ParseFromString(data)
    except ProtobufDecodeError as exc:
        raise _Refused("malformed", f"not a rendezvous message: {exc}") from exc
    return message


# --- our rendezvous point -------------------------------------------------------------------------


@dataclass(slots=True)
class _Registration:
    addrs: list[multiaddr.Multiaddr]
    expires: float  # trio clock


class RendezvousServer:
    """The rendezvous point every node runs: one namespace, bounded in every dimension."""

    def __init__(
        self, host: IHost, *, config: DiscoveryConfig, stats: Libp2pStats, rng: random.Random | None = None
    ) -> None:
        self.config = config
        self._host = host
        self._stats = stats
        self._rng = rng or random.Random()
        self._registrations: dict[ID, _Registration] = {}
        self._streams = 0
        self._streams_by_peer: dict[ID, int] = {}

    def install(self) -> None:
        """Register the stream handler; before the host listens, so no early stream is refused."""
        self._host.set_stream_handler(RENDEZVOUS_PROTOCOL, self._handle)

    def registrations(self) -> list[_Record]:
        """Live registrations: (peer, addresses, seconds left)."""
        self._expire()
        now = trio.current_time()
        return [(peer, reg.addrs, reg.expires - now) for peer, reg in self._registrations.items()]

    def _expire(self) -> None:
        now = trio.current_time()
        for peer in [peer for peer, reg in self._registrations.items() if reg.expires <= now]:
            del self._registrations[peer]

    async def _handle(self, stream: INetStream) -> None:
        """Stream handler: never raises."""
        peer = stream.muxed_conn.peer_id
        cfg = self.config
        if self._streams >= cfg.max_streams or self._streams_by_peer.get(peer, 0) >= cfg.max_streams_per_peer:
            self._stats.reject_rendezvous("busy")
            await reset_quietly(stream)
            return
        self._streams += 1
        self._streams_by_peer[peer] = self._streams_by_peer.get(peer, 0) + 1
        try:
            await self._serve(stream, peer)
        finally:
            self._streams -= 1
            self._streams_by_peer[peer] -= 1
            if not self._streams_by_peer[peer]:
                del self._streams_by_peer[peer]

    async def _serve(self, stream: INetStream, peer: ID) -> None:
        cfg = self.config
        observed_ip = _remote_ip(stream)
        try:
            for _ in range(cfg.max_requests_per_stream):
                with trio.fail_after(cfg.io_timeout):
                    data = await _read_message(stream, cfg.max_request_bytes)
                    if data is None:  # the client is done
                        await close_quietly(stream)
                        return
                    response = self._respond(peer, _parse(data), observed_ip)
                    if response is not None:
                        await stream.write(encode_varint_prefixed(response.SerializeToString()))
                self._stats.rendezvous_served += 1
            await close_quietly(stream)
        except _Refused as refusal:
            self._stats.reject_rendezvous(refusal.reason)
            log.warning("refused a rendezvous stream from %s: %s", peer, refusal)
            await reset_quietly(stream)
        except trio.TooSlowError:
            self._stats.reject_rendezvous("timeout")
            log.debug("rendezvous stream from %s timed out", peer)
            await reset_quietly(stream)
        except Exception as exc:  # reset by the peer, connection gone, bad varint...
            self._stats.reject_rendezvous("broken")
            log.debug("rendezvous stream from %s broke: %r", peer, exc)
            await reset_quietly(stream)

    def _respond(self, peer: ID, request: Message, observed_ip: str | None) -> Message | None:
        if request.type == Message.REGISTER:
            return self._register(peer, request.register, observed_ip)
        if request.type == Message.DISCOVER:
            return self._discover(peer, request.discover)
        if request.type == Message.UNREGISTER:
            if request.unregister.ns == self.config.namespace and request.unregister.id == peer.to_bytes():
                self._registrations.pop(peer, None)
            return None
        raise _Refused("malformed", f"unexpected message type {request.type}")

    def _register(self, peer: ID, register: Message.Register, observed_ip: str | None) -> Message:
        cfg = self.config

        def refuse(status: int, reason: str, text: str) -> Message:
            self._stats.reject_rendezvous(reason)
            log.info("refused a rendezvous registration from %s: %s", peer, text)
            return create_register_response_message(status, text)

        if register.ns != cfg.namespace:
            return refuse(Message.ResponseStatus.E_INVALID_NAMESPACE, "namespace", "unknown namespace")
        if register.peer.id != peer.to_bytes():
            return refuse(Message.ResponseStatus.E_NOT_AUTHORIZED, "not_self", "a peer registers only itself")
        if len(register.peer.addrs) > cfg.max_addrs:
            return refuse(Message.ResponseStatus.E_INVALID_PEER_INFO, "addrs", f"over {cfg.max_addrs} addrs")
        addrs = _unique(
            sanitize_addr(raw, max_bytes=cfg.max_addr_bytes, observed_ip=observed_ip)
            for raw in register.peer.addrs
        )
        if not addrs:
            return refuse(Message.ResponseStatus.E_INVALID_PEER_INFO, "addrs", "no dialable TCP address")
        if register.ttl > cfg.max_ttl:
            return refuse(Message.ResponseStatus.E_INVALID_TTL, "ttl", f"ttl over {cfg.max_ttl} s")
        ttl = register.ttl or min(_DEFAULT_TTL, cfg.max_ttl)
        if peer not in self._registrations and len(self._registrations) >= cfg.max_registrations:
            self._expire()
            if len(self._registrations) >= cfg.max_registrations:
                return refuse(Message.ResponseStatus.E_UNAVAILABLE, "full", "registrations full")
        self._registrations[peer] = _Registration(addrs, trio.current_time() + ttl)
        return create_register_response_message(_OK, "OK", ttl)

    def _discover(self, peer: ID, discover: Message.Discover) -> Message:
        cfg = self.config
        if discover.ns != cfg.namespace:
            self._stats.reject_rendezvous("namespace")
            status = Message.ResponseStatus.E_INVALID_NAMESPACE
            return create_discover_response_message([], b"", status, "unknown namespace")
        limit = min(discover.limit, cfg.discover_limit) if discover.limit > 0 else cfg.discover_limit
        others = [record for record in self.registrations() if record[0] != peer]
        # A random sample rather than pages: points then hand out different peers to different
        # askers, which mixes the overlay better than everyone learning the first registrants.
        chosen = self._rng.sample(others, min(limit, len(others)))
        records = []
        for registered, addrs, left in chosen:
            record = Message.Register()
            record.ns = cfg.namespace
            record.peer.id = registered.to_bytes()
            record.peer.addrs.extend(addr.to_bytes() for addr in addrs)
            record.ttl = max(1, int(left))
            records.append(record)
        return create_discover_response_message(records, b"", _OK, "OK")


def _unique(addrs: Iterable[multiaddr.Multiaddr | None]) -> list[multiaddr.Multiaddr]:
    result: list[multiaddr.Multiaddr] = []
    for addr in addrs:
        if addr is not None and addr not in result:
            result.append(addr)
    return result


# --- the discovering side -------------------------------------------------------------------------


@dataclass(slots=True)
class _Candidate:
    addrs: list[multiaddr.Multiaddr]
    expires: float  # trio clock; forgotten after this unless rediscovered or connected
    delay: float  # next redial delay
    next_try: float = -math.inf
    since: float | None = None  # connected since (as seen by our rounds)


class Discovery:
    """Registers, discovers and dials, every `interval` seconds, up to `target` connections.

    `target` 0 still serves, registers and discovers (so `send` can reach discovered peers by ID)
    but dials nobody.
    """

    def __init__(
        self,
        host: IHost,
        tracker: ConnectionTracker,
        *,
        stats: Libp2pStats,
        config: DiscoveryConfig = DEFAULT_DISCOVERY,
        interval: float = 5.0,
        target: int = 8,
        bootstrap: Sequence[ID] = (),
        rng: random.Random | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"discovery interval must be > 0, got {interval}")
        if target < 0:
            raise ValueError(f"discovery target must be >= 0, got {target}")
        self.config = config
        self.interval = interval
        self.target = target
        self._rng = rng or random.Random()
        self.server = RendezvousServer(host, config=config, stats=stats, rng=self._rng)
        self._host = host
        self._tracker = tracker
        self._stats = stats
        self._bootstrap = list(dict.fromkeys(bootstrap))
        self._points: list[ID] = []
        self._shunned: dict[ID, float] = {}  # points whose last request failed, until when
        self._registered_until: dict[ID, float] = {}
        # Points sent a register whose answer never came: they may hold our registration all the same.
        self._unconfirmed: set[ID] = set()
        # Registers in flight, each shielded from the shutdown so that a point handles it before our
        # unregister (its own stream could otherwise be served after the unregister's, leaving us
        # registered there for a whole TTL): unregister_all waits for them, briefly.
        self._registering: set[trio.CancelScope] = set()
        self._registers_done = trio.Event()
        self._registers_done.set()
        self._candidates: dict[ID, _Candidate] = {}
        self._quiet_until: dict[ID, float] = {}
        self._wake = trio.Event()

    def install(self) -> None:
        self.server.install()
        self._tracker.add_connected_listener(lambda peer: self._wake.set())

    def candidates(self) -> frozenset[PeerId]:
        """Peers learned through discovery and not yet forgotten."""
        return frozenset(peer.to_base58() for peer in self._candidates)

    def candidate_addrs(self, peer: PeerId) -> list[str]:
        """Where discovery last heard `peer` listens (empty if it does not know the peer)."""
        candidate = self._candidates.get(ID.from_base58(peer))
        return [str(addr) for addr in candidate.addrs] if candidate else []

    def hold_off(self, peer: ID) -> None:
        """Do not redial `peer` for the max backoff (we dropped it on purpose)."""
        self._quiet_until[peer] = trio.current_time() + self.config.backoff[1]

    async def run(self) -> None:
        """Rounds until cancelled; a new connection brings the next round forward (at most every
        quarter interval, so a burst of connections does not turn into a burst of requests)."""
        min_gap = min(1.0, self.interval / 4)
        while True:
            started = trio.current_time()
            self._wake = trio.Event()
            try:
                await self._round()
            except Exception:  # a bug here must not take the transport down; the next round may work
                log.exception("discovery round failed")
            with trio.move_on_after(self.interval * self._rng.uniform(0.8, 1.2)):
                await self._wake.wait()
            await trio.sleep_until(started + min_gap)

    async def unregister_all(self, *, timeout: float = 1.0) -> None:
        """Best effort, at shutdown: tell the points we registered at that we are leaving.

        Registers still in flight get the first half of `timeout` to finish, so that a point answers
        them before it sees our unregister. The unregisters get the second half; they also go to
        points whose register never finished.
        """
        with trio.CancelScope(shield=True):
            with trio.move_on_after(timeout / 2):
                await self._registers_done.wait()
            for scope in self._registering:
                scope.cancel()
            now = trio.current_time()
            registered = {p for p, until in self._registered_until.items() if until > now} | self._unconfirmed
            points = [p for p in registered if self._connected(p)]
            self._registered_until.clear()
            self._unconfirmed.clear()
            message = create_unregister_message(self.config.namespace, self._host.get_id())
            with trio.move_on_after(timeout / 2):
                async with trio.open_nursery() as nursery:
                    for point in points:
                        nursery.start_soon(
                            self._try, "unregister", point, self._request, point, message, None
                        )

    # --- one round --------------------------------------------------------------------------------

    async def _round(self) -> None:
        self._stats.discovery_rounds += 1
        connected = self._tracker.peer_ids()
        now = trio.current_time()
        self._note_connections(connected, now)
        points = self._choose_points(connected)
        due = [p for p in points if self._registered_until.get(p, -math.inf) - now < self.config.ttl / 2]
        fanout = 1 if self.target and len(connected) >= self.target else self.config.fanout
        asked = self._rng.sample(points, min(fanout, len(points)))
        async with trio.open_nursery() as nursery:
            for point in due:
                nursery.start_soon(self._try, "register", point, self._register, point)
            for point in asked:
                nursery.start_soon(self._try, "discover", point, self._discover, point)
        self._learn(self.server.registrations())
        self._forget(trio.current_time())
        await self._dial_some()

    def _choose_points(self, connected: frozenset[ID]) -> list[ID]:
        """Bootstrap peers we are connected to, then a sticky random set of other connected peers.

        Sticky, so our registrations stay at a few points instead of spreading over every peer
        we were ever connected to.
        """
        usable = connected - self._shunned.keys()
        kept = [p for p in self._points if p in usable and p not in self._bootstrap]
        boot = [p for p in self._bootstrap if p in usable]
        room = self.config.max_points - len(boot) - len(kept)
        if room > 0:
            fresh = [p for p in usable if p not in self._bootstrap and p not in kept]
            kept += self._rng.sample(fresh, min(room, len(fresh)))
        self._points = boot + kept[: max(0, self.config.max_points - len(boot))]
        self._registered_until = {p: t for p, t in self._registered_until.items() if p in self._points}
        self._unconfirmed &= set(self._points)
        return list(self._points)

    async def _try(
        self, what: str, point: ID, request: Callable[..., Awaitable[object]], *args: object
    ) -> None:
        try:
            await request(*args)
        except Exception as exc:
            # Rest the point a while: it may not speak rendezvous at all (discovery off there),
            # and py-libp2p logs an ERROR for every stream it fails to open.
            self._shunned[point] = trio.current_time() + min(self.config.backoff[1], 4 * self.interval)
            self._stats.rendezvous_requests_failed += 1
            log.debug("rendezvous %s at %s failed: %r", what, point, exc)

    async def _register(self, point: ID) -> None:
        cfg = self.config
        addrs = self._host.get_addrs()
        if not addrs:
            raise RendezvousFailed("we have no address to register")
        message = create_register_message(cfg.namespace, self._host.get_id(), addrs[: cfg.max_addrs], cfg.ttl)
        await trio.lowlevel.checkpoint_if_cancelled()  # no new register once the shutdown began
        self._unconfirmed.add(point)
        with trio.CancelScope(shield=True) as scope:  # see _registering
            self._registering.add(scope)
            if self._registers_done.is_set():
                self._registers_done = trio.Event()
            try:
                response = (await self._reply(point, message, Message.REGISTER_RESPONSE)).registerResponse
            finally:
                self._registering.discard(scope)
                if not self._registering:
                    self._registers_done.set()
        if scope.cancelled_caught:
            raise RendezvousFailed("register given up at shutdown")
        self._unconfirmed.discard(point)
        if response.status != _OK:
            raise RendezvousFailed(f"register refused: {response.status} {response.statusText[:100]!r}")
        granted = min(response.ttl, cfg.ttl) if response.ttl else cfg.ttl
        self._registered_until[point] = trio.current_time() + granted

    async def _discover(self, point: ID) -> None:
        cfg = self.config
        message = create_discover_message(cfg.namespace, cfg.discover_limit)
        response = (await self._reply(point, message, Message.DISCOVER_RESPONSE)).discoverResponse
        if response.status != _OK:
            raise RendezvousFailed(f"discover refused: {response.status} {response.statusText[:100]!r}")
        records = []
        for registration in response.registrations[: cfg.discover_limit]:
            peer = _peer_id_from_bytes(registration.peer.id)
            if peer is None or registration.ns != cfg.namespace:
                continue
            addrs = _unique(
                sanitize_addr(raw, max_bytes=cfg.max_addr_bytes)
                for raw in registration.peer.addrs[: cfg.max_addrs]
            )
            if addrs:
                records.append((peer, addrs, float(min(registration.ttl or cfg.ttl, cfg.max_ttl))))
        self._learn(records)

    async def _reply(self, point: ID, message: Message, expect: int) -> Message:
        response = await self._request(point, message, expect)
        assert response is not None
        return response

    async def _request(self, point: ID, message: Message, expect: int | None) -> Message | None:
        """Send `message` on a fresh stream and read the reply of type `expect` (None: no reply)."""
        cfg = self.config
        stream = None
        try:
            with trio.fail_after(cfg.io_timeout):
                stream = await self._host.new_stream(point, [RENDEZVOUS_PROTOCOL])
                await stream.write(encode_varint_prefixed(message.SerializeToString()))
                if expect is None:
                    await close_quietly(stream)
                    return None
                data = await _read_message(stream, cfg.max_response_bytes)
            if data is None:
                raise RendezvousFailed("the point closed the stream without a reply")
            response = _parse(data)
            if response.type != expect:
                raise RendezvousFailed(f"expected a reply of type {expect}, got {response.type}")
        except BaseException:
            if stream is not None:
                await reset_quietly(stream)
            raise
        await close_quietly(stream)
        return response

    # --- what we know of ---------------------------------------------------------------------------

    def _learn(self, records: Iterable[_Record]) -> None:
        now = trio.current_time()
        me = self._host.get_id()
        for peer, addrs, left in records:
            if peer == me:
                continue
            candidate = self._candidates.get(peer)
            if candidate is None:
                if len(self._candidates) >= self.config.max_candidates and not self._evict_one():
                    continue
                candidate = _Candidate(addrs, now + left, self.config.backoff[0])
                self._candidates[peer] = candidate
            candidate.addrs = addrs
            candidate.expires = max(candidate.expires, now + left)
            self._remember_addrs(peer, addrs, left)

    def _remember_addrs(self, peer: ID, addrs: list[multiaddr.Multiaddr], ttl: float) -> None:
        """Put a discovered peer's addresses in the peerstore (so `send` can dial it), unless the
        peerstore already knows some: those come from the peer itself or the application."""
        store = self._host.get_peerstore()
        try:
            if store.addrs(peer):
                return
        except Exception:  # PeerStoreError: unknown or expired
            pass
        store.add_addrs(peer, addrs, max(1, int(ttl)))

    def _evict_one(self) -> bool:
        """Make room by forgetting the unconnected candidate whose registration ends first."""
        idle = [(c.expires, p) for p, c in self._candidates.items() if not self._connected(p)]
        if not idle:
            return False
        del self._candidates[min(idle, key=lambda item: item[0])[1]]
        return True

    def _forget(self, now: float) -> None:
        for peer in [p for p, c in self._candidates.items() if c.expires <= now and not self._connected(p)]:
            del self._candidates[peer]
        for peer in [p for p, until in self._quiet_until.items() if until <= now]:
            del self._quiet_until[peer]
        for peer in [p for p, until in self._shunned.items() if until <= now]:
            del self._shunned[peer]

    def _note_connections(self, connected: frozenset[ID], now: float) -> None:
        """A peer that stayed connected for the max backoff earns a fresh (short) redial delay."""
        initial, longest = self.config.backoff
        for peer, candidate in self._candidates.items():
            if peer not in connected:
                candidate.since = None
            elif candidate.since is None:
                candidate.since = now
            elif now - candidate.since >= longest:
                candidate.delay = initial

    def _connected(self, peer: ID) -> bool:
        return self._tracker.is_connected(peer)

    # --- dialing ------------------------------------------------------------------------------------

    async def _dial_some(self) -> None:
        if not self.target:
            return
        connected = self._tracker.peer_ids()
        need = self.target - len(connected)
        if need <= 0:
            return
        now = trio.current_time()
        eligible = [
            peer
            for peer, candidate in self._candidates.items()
            if peer not in connected and candidate.next_try <= now and peer not in self._quiet_until
        ]
        chosen = self._rng.sample(eligible, min(need, self.config.max_parallel_dials, len(eligible)))
        async with trio.open_nursery() as nursery:
            for peer in chosen:
                nursery.start_soon(self._dial, peer, self._candidates[peer])

    async def _dial(self, peer: ID, candidate: _Candidate) -> None:
        # Every dial, good or bad, pushes the next one back: a peer that drops us at once is not
        # redialed in a tight loop. A link that holds resets the delay (`_note_connections`).
        candidate.next_try = trio.current_time() + candidate.delay * self._rng.uniform(0.5, 1.5)
        candidate.delay = min(candidate.delay * 2, self.config.backoff[1])
        self._stats.discovery_dials += 1
        try:
            with trio.fail_after(self.config.dial_timeout):
                await self._host.connect(PeerInfo(peer, list(candidate.addrs)))
        except Exception as exc:  # TooSlowError, SwarmException, handshake failures...
            self._stats.discovery_dials_failed += 1
            log.debug("could not dial discovered peer %s: %r", peer, exc)
        else:
            log.debug("connected to discovered peer %s", peer)
