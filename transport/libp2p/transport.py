"""`Libp2pTransport`: the `Transport` interface on a real libp2p host, for the node daemon.

Direct messages (`send`) go over the model plane, one verified stream per message, their models
compressed if so configured (`transport.body_codec`); `publish` and `subscribe` go over GossipSub;
connects, disconnects and arrivals come out of `events` in order. Peers that keep sending bad
transfers are banned for a while (`transport.penalties`, enforced by `transport.libp2p.bans`).
`open_libp2p_transport` owns the whole lifetime: it builds the host, starts listening, the pubsub
services and the bootstrap dialers, and on exit stops them all, closes every connection and ends the
event stream.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from os import PathLike

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.peer.peerstore import PERMANENT_ADDR_TTL

from transport import codec
from transport.base import EventChannel, PeerId, TrafficStats, Transport
from transport.body_codec import NO_COMPRESSION, BodyEncoder, CompressionConfig
from transport.errors import PeerUnreachable
from transport.libp2p.bans import Bans
from transport.libp2p.bootstrap import keep_connected
from transport.libp2p.control_plane import DEFAULT_CONTROL_PLANE, ControlPlane, ControlPlaneConfig
from transport.libp2p.discovery import DEFAULT_DISCOVERY, Discovery, DiscoveryConfig
from transport.libp2p.errors import ListenFailed
from transport.libp2p.host import DEFAULT_LISTEN, build_host, gate_dials, parse_multiaddrs
from transport.libp2p.identity import load_or_create_key_pair
from transport.libp2p.inbox import Inbox
from transport.libp2p.model_plane import DEFAULT_MODEL_PLANE, AcceptFn, ModelPlane, ModelPlaneConfig, tag_of
from transport.libp2p.peers import ConnectionTracker
from transport.libp2p.stats import Libp2pStats
from transport.penalties import DEFAULT_PENALTIES, Penalties, PenaltyConfig

__all__ = ["Libp2pTransport", "open_libp2p_transport"]

log = logging.getLogger(__name__)


class Libp2pTransport(Transport):
    """One node's libp2p endpoint. Create it with `open_libp2p_transport`."""

    def __init__(
        self,
        host: IHost,
        *,
        inbox: Inbox,
        tracker: ConnectionTracker,
        model_plane: ModelPlane,
        control_plane: ControlPlane,
        traffic: TrafficStats,
        stats: Libp2pStats,
        encoder: BodyEncoder,
        bans: Bans,
        discovery: Discovery | None = None,
    ) -> None:
        self.host = host
        self.peer_id: PeerId = host.get_id().to_base58()
        self.stats = traffic
        self.libp2p_stats = stats
        self.model_plane = model_plane
        self.control_plane = control_plane
        self.discovery = discovery
        self._inbox = inbox
        self._tracker = tracker
        self._encoder = encoder
        self._bans = bans

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs peers can dial, each ending in ``/p2p/<our peer id>``."""
        return [str(addr) for addr in self.host.get_addrs()]

    @property
    def events(self) -> EventChannel:
        return self._inbox

    def peers(self) -> frozenset[PeerId]:
        return self._tracker.peers()

    def add_peer_addrs(self, addrs: Sequence[str]) -> list[PeerId]:
        """Remember where peers listen (full multiaddrs with /p2p/), so `send` can dial them."""
        peers = []
        for addr in parse_multiaddrs(addrs):
            info = _peer_info(addr)
            self.host.get_peerstore().add_addrs(info.peer_id, info.addrs, PERMANENT_ADDR_TTL)
            peers.append(info.peer_id.to_base58())
        return peers

    async def connect(self, addr: str, *, timeout: float | None = None) -> PeerId:
        """Dial the peer at full multiaddr `addr` now; its peer ID, or `PeerUnreachable`.

        An address with our own peer ID is refused (`PeerUnreachable`) before any dial: a connection
        to ourselves would be no peer of ours (bootstrap entries of our own are skipped for the same
        reason), only a stray connection, and returning our ID would pass for a connected peer.
        """
        info = _peer_info(parse_multiaddrs([addr])[0])
        if info.peer_id == self.host.get_id():
            raise PeerUnreachable(f"cannot connect to {addr}: it is this node's own address")
        self._refuse_if_banned(info.peer_id)
        timeout = self.model_plane.config.connect_timeout if timeout is None else timeout
        try:
            with trio.fail_after(timeout):
                await self.host.connect(info)
        except Exception as exc:
            raise PeerUnreachable(f"cannot connect to {addr}: {exc!r}") from exc
        return info.peer_id.to_base58()

    async def disconnect(self, peer: PeerId) -> None:
        """Close every connection to `peer` (a `PeerDisconnected` follows).

        Discovery, if on, leaves the peer alone for its max backoff rather than redialing it.
        """
        peer_id = _peer_id(peer)
        if self.discovery is not None:
            self.discovery.hold_off(peer_id)
        await self.host.disconnect(peer_id)

    async def send(self, peer: PeerId, message: object) -> None:
        """Deliver `message` to `peer` over the model plane, dialing it if its address is known.

        Returns once the peer verified and queued it. Raises `PeerUnreachable` (or its subclass
        `TransferRejected`) otherwise, within the model plane's deadlines; at once for a banned
        peer. Uncompressed, big tensors are sent from the arrays themselves, not from a copy: they
        must not change until this returns.
        """
        kind = tag_of(message)  # TypeError for an unregistered type, before anything else
        peer_id = _peer_id(peer)
        if peer_id == self.host.get_id():
            raise PeerUnreachable("a node does not send to itself")
        self._refuse_if_banned(peer_id)
        if not self._tracker.is_connected(peer_id) and not self._known_addrs(peer_id):
            raise PeerUnreachable(f"{peer} is not connected and its address is unknown")
        codec_name, body = await self._encoder.encode(message, destination=peer_id)
        round_ = getattr(message, "round", -1)
        await self.model_plane.send(
            peer_id,
            kind=kind,
            round_=round_ if type(round_) is int else -1,
            body=body,
            codec_name=codec_name,
        )

    def penalise(self, peer: PeerId, reason: str) -> None:
        """Charge `peer` one offence, e.g. a model the application refused (wrong shape, NaN).

        Transfers the model plane refuses through the sender's fault are charged already; enough
        offences within the penalty window ban the peer (see `transport.penalties`).
        """
        self._bans.charge(_peer_id(peer), reason)

    def banned_peers(self) -> dict[PeerId, float]:
        """Peers banned now, with the seconds left of each ban."""
        return self._bans.penalties.banned()

    def _refuse_if_banned(self, peer_id: ID) -> None:
        left = self._bans.ban_left(peer_id)
        if left > 0:
            raise PeerUnreachable(f"{peer_id} is banned for {left:.0f} more s")

    def _known_addrs(self, peer_id: ID) -> list[multiaddr.Multiaddr]:
        try:
            return self.host.get_peerstore().addrs(peer_id)
        except KeyError:  # PeerStoreError: unknown, or its addresses expired
            return []

    async def publish(self, topic: str, message: object) -> None:
        """Gossip a small control message; `MessageTooLarge` above the control plane's cap."""
        await self.control_plane.publish(topic, codec.encode(message))

    async def subscribe(self, topic: str) -> None:
        await self.control_plane.subscribe(topic)


@asynccontextmanager
async def open_libp2p_transport(
    *,
    key_dir: str | PathLike[str] | None = None,
    key_pair: KeyPair | None = None,
    listen: str | Sequence[str] = DEFAULT_LISTEN,
    announce: Sequence[str] | None = None,
    bootstrap: Sequence[str] = (),
    max_connections: int = 128,
    handshake_timeout: float = 10.0,
    model: ModelPlaneConfig = DEFAULT_MODEL_PLANE,
    control: ControlPlaneConfig = DEFAULT_CONTROL_PLANE,
    limits: codec.Limits = codec.DEFAULT_LIMITS,
    compression: CompressionConfig = NO_COMPRESSION,
    penalties: PenaltyConfig = DEFAULT_PENALTIES,
    accept_transfer: AcceptFn | None = None,
    max_pending_models: int = 16,
    bootstrap_backoff: tuple[float, float] = (0.5, 30.0),
    rng: random.Random | None = None,
    discovery: bool = False,
    discovery_interval: float = 5.0,
    discovery_target: int = 8,
    discovery_config: DiscoveryConfig = DEFAULT_DISCOVERY,
) -> AsyncIterator[Libp2pTransport]:
    """A running libp2p transport, stopped (hosts, services, connections) when the block exits.

    Identity: `key_pair`, or the key in `key_dir` (created there on first use); one of the two.
    `listen` and `bootstrap` are multiaddrs, bootstrap ones with ``/p2p/<peer id>``; bootstrap peers
    are redialed with backoff (`bootstrap_backoff` = initial, max seconds) for as long as we run;
    entries with our own peer ID are skipped. Every listen address must be bound, or `ListenFailed`.
    At most `max_connections` connections are held, handshakes in progress included; an inbound one
    that completes no Noise/Yamux handshake within `handshake_timeout` seconds is closed and counted.
    `accept_transfer(sender, header)` may refuse a model-plane transfer before its body is read.
    At most `max_pending_models` received models wait unread in `events`; beyond that, senders
    are refused as busy rather than buffered. `compression` is how models we send travel (we
    decode every codec whatever it says); `penalties` when a misbehaving sender is banned.

    With `discovery`, the node serves as a rendezvous point, registers at its bootstrap and some
    connected peers every `discovery_interval` seconds, learns who else registered there, and dials
    learned peers until it holds `discovery_target` connections (0: learn addresses, dial nobody);
    see `transport.libp2p.discovery`. Off by default, so a transport connects only where told.
    """
    if (key_dir is None) == (key_pair is None):
        raise ValueError("give exactly one of key_dir and key_pair")
    if key_pair is None:
        key_pair = load_or_create_key_pair(key_dir)  # type: ignore[arg-type]
    listen_addrs = parse_multiaddrs([listen] if isinstance(listen, str) else listen)
    bootstrap_peers = _others(key_pair, [_peer_info(addr) for addr in parse_multiaddrs(bootstrap)])

    traffic, stats = TrafficStats(), Libp2pStats()
    host = build_host(
        key_pair,
        listen=listen_addrs,
        announce=announce,
        max_connections=max_connections,
        dial_timeout=model.connect_timeout,
        handshake_timeout=handshake_timeout,
        stats=stats,
    )
    inbox = Inbox()
    bans = Bans(host, Penalties(penalties), stats=stats)
    gate_dials(host, bans.may_dial)
    tracker = ConnectionTracker(inbox, own=host.get_id(), admit=bans.admit)
    host.get_network().register_notifee(tracker)
    encoder = BodyEncoder(compression)
    tracker.add_disconnected_listener(encoder.forget)
    model_plane = ModelPlane(
        host,
        inbox,
        traffic=traffic,
        stats=stats,
        bans=bans,
        config=model,
        limits=limits,
        accept=accept_transfer,
        inbox_slots=max_pending_models,
    )
    model_plane.install()
    control_plane = ControlPlane(host, inbox, traffic=traffic, stats=stats, config=control)
    finder = None
    if discovery:
        finder = Discovery(
            host,
            tracker,
            stats=stats,
            config=discovery_config,
            interval=discovery_interval,
            target=discovery_target,
            bootstrap=[info.peer_id for info in bootstrap_peers],
            rng=rng,
        )
        finder.install()
    transport = Libp2pTransport(
        host,
        inbox=inbox,
        tracker=tracker,
        model_plane=model_plane,
        control_plane=control_plane,
        traffic=traffic,
        stats=stats,
        encoder=encoder,
        bans=bans,
        discovery=finder,
    )
    unbound: list[str] = []
    try:
        if taken := _taken(listen_addrs):
            raise ListenFailed(taken)
        async with host.run(listen_addrs):
            # Checked here and raised below, once `host.run` has exited: raised inside its nurseries,
            # the error would reach the caller wrapped in an ExceptionGroup.
            unbound = _unbound(host, listen_addrs)
            if not unbound:
                async with control_plane.running(), trio.open_nursery() as nursery:
                    nursery.start_soon(bans.run)
                    for info in bootstrap_peers:
                        host.get_peerstore().add_addrs(info.peer_id, info.addrs, PERMANENT_ADDR_TTL)
                        nursery.start_soon(
                            lambda info=info: keep_connected(
                                host,
                                info,
                                tracker,
                                ban_left=bans.ban_left,
                                dial_timeout=model.connect_timeout,
                                initial_backoff=bootstrap_backoff[0],
                                max_backoff=bootstrap_backoff[1],
                                rng=rng,
                            )
                        )
                    if finder is not None:
                        nursery.start_soon(finder.run)
                    log.info(
                        "libp2p transport %s listening on %s", transport.peer_id, ", ".join(transport.addrs)
                    )
                    try:
                        yield transport
                    finally:
                        nursery.cancel_scope.cancel()
                        if finder is not None:
                            await finder.unregister_all()
                        model_plane.closing = True
                        await _close_connections(host)
        if unbound:
            raise ListenFailed(unbound)
    finally:
        inbox.close()
        control_plane.close()


def _taken(listen_addrs: Sequence[multiaddr.Multiaddr]) -> list[str]:
    """The listen addresses with a fixed port that a socket of this machine listens on already.

    py-libp2p listens with SO_REUSEPORT, as does every other node: a node given the port of a running
    one would share it with it (the kernel handing each inbound connection to either of the two)
    rather than fail. A bind without SO_REUSEPORT fails on a port any socket listens on, so one is
    tried first. Two nodes started at the same instant can still both pass this check.
    """
    taken = []
    for addr in listen_addrs:
        port = int(addr.value_for_protocol("tcp"))
        if port == 0:
            continue
        family, ip = (
            (socket.AF_INET6, "ip6")
            if "ip6" in [p.name for p in addr.protocols()]
            else (socket.AF_INET, "ip4")
        )
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As the listener itself: a port whose last connections are in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((addr.value_for_protocol(ip), port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    taken.append(str(addr))
    return taken


def _unbound(host: IHost, listen_addrs: Sequence[multiaddr.Multiaddr]) -> list[str]:
    """The listen addresses `host.run` got no listener for.

    py-libp2p's `Swarm.listen` only logs a failed bind, and reports success if any one address was
    bound; the listeners it did start are keyed by the address as requested.
    """
    listeners = host.get_network().listeners
    return [str(addr) for addr in listen_addrs if str(addr) not in listeners]


async def _close_connections(host: IHost) -> None:
    """Close listeners and connections while pubsub still runs.

    Stopping pubsub first would leave its stream readers alive on open connections; the next
    message to arrive makes them schedule work on the stopped service, and the RuntimeError
    that raises tears down the swarm with an exception group.
    """
    with trio.CancelScope(shield=True), trio.move_on_after(5.0) as scope:
        try:
            await host.get_network().close()
        except Exception as exc:
            log.warning("error while closing connections: %r", exc)
    if scope.cancelled_caught:
        log.warning("closing connections took over 5 s; stopping anyway")


def _others(key_pair: KeyPair, bootstrap_peers: list[PeerInfo]) -> list[PeerInfo]:
    """The bootstrap peers that are not us: one config listing every node is often shared by all of
    them, and a node that dialed its own entry would count itself as a peer and gossip to itself."""
    own = ID.from_pubkey(key_pair.public_key)
    others = [info for info in bootstrap_peers if info.peer_id != own]
    if len(others) < len(bootstrap_peers):
        log.info("skipping bootstrap peer %s: it is this node", own)
    return others


def _peer_info(addr: multiaddr.Multiaddr) -> PeerInfo:
    try:
        return info_from_p2p_addr(addr)
    except Exception as exc:
        raise ValueError(f"{addr} is not a full peer address (it must end in /p2p/<peer id>)") from exc


def _peer_id(peer: PeerId) -> ID:
    try:
        return ID.from_base58(peer)
    except Exception as exc:
        raise PeerUnreachable(f"{peer!r} is not a peer ID") from exc
