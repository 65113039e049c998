"""Building the libp2p host: TCP, Noise and Yamux, nothing else, and a cap on connections.

`libp2p.new_host` with no `sec_opt` negotiates Noise, TLS, SECIO *or plaintext*: a plaintext peer
authenticates nothing and may claim any peer ID, so every message's sender would be forgeable. We pass
`sec_opt` with Noise alone, so a peer that cannot speak Noise fails the handshake. Likewise
`muxer_opt` has Yamux alone (the default also offers mplex, which has no flow control).

Connections beyond `max_connections` are refused (see `transport.libp2p.admission`): it bounds every
connection we hold, a handshake in progress included, and a handshake that does not complete within
`handshake_timeout` is closed, which bounds what a crowd of peers (or of idle sockets) can make us
hold. `gate_dials` lets the transport refuse to dial some peers (banned ones) whoever asks for the dial.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import multiaddr
from libp2p import new_host
from libp2p.abc import IHost, INetConn
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TMuxerOptions, TProtocol, TSecurityOptions
from libp2p.network.config import ConnectionConfig
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from transport.libp2p.admission import admit_inbound
from transport.libp2p.stats import Libp2pStats

__all__ = ["DEFAULT_LISTEN", "build_host", "gate_dials", "muxer_options", "security_options"]

DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"


def security_options(key_pair: KeyPair) -> TSecurityOptions:
    """Noise only. The Noise static key is ephemeral per host; the libp2p key signs it."""
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    return {TProtocol(NOISE_PROTOCOL_ID): noise}


def muxer_options() -> TMuxerOptions:
    """Yamux only: per-stream flow control, so one stalled model transfer cannot starve the rest."""
    return {TProtocol(YAMUX_PROTOCOL_ID): Yamux}


def parse_multiaddrs(addrs: Sequence[str | multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    """Multiaddrs from strings, with the offending string in the error."""
    result = []
    for addr in addrs:
        try:
            result.append(addr if isinstance(addr, multiaddr.Multiaddr) else multiaddr.Multiaddr(addr))
        except Exception as exc:
            raise ValueError(f"not a multiaddr: {addr!r} ({exc})") from exc
    return result


def build_host(
    key_pair: KeyPair,
    *,
    listen: Sequence[str | multiaddr.Multiaddr] = (DEFAULT_LISTEN,),
    announce: Sequence[str | multiaddr.Multiaddr] | None = None,
    max_connections: int = 128,
    dial_timeout: float = 10.0,
    handshake_timeout: float = 10.0,
    stats: Libp2pStats | None = None,
) -> IHost:
    """A host for `key_pair`, not yet listening: run it with ``host.run(parse_multiaddrs(listen))``.

    `announce` replaces the listen addresses in what the host tells peers (e.g. a public address
    behind port forwarding). The swarm's auto-connector is disabled and the pruning watermark is the
    connection cap: which peers to keep is the gossip layer's decision, not libp2p's. An inbound
    connection gets `handshake_timeout` seconds to complete Noise and Yamux; refused and dropped
    inbound connections are counted in `stats`.
    """
    if max_connections < 1:
        raise ValueError(f"max_connections must be >= 1, got {max_connections}")
    listen_addrs = parse_multiaddrs(listen)
    for addr in listen_addrs:
        # py-libp2p would listen on every interface for a host name (/dns4/...), and on plain TCP,
        # speaking Noise, whatever follows the port (/tls, /ws).
        if [p.name for p in addr.protocols()] not in (["ip4", "tcp"], ["ip6", "tcp"]):
            raise ValueError(f"only /ip4/<address>/tcp/<port> and /ip6/<address>/tcp/<port>, not {addr}")
    config = ConnectionConfig(
        max_connections=max_connections,
        min_connections=0,
        low_watermark=0,
        high_watermark=max_connections,
        max_connections_per_peer=2,  # room for a simultaneous dial in both directions
        dial_timeout=dial_timeout,
        # The admission's cancel scope is the one deadline on an inbound handshake (`admit_inbound`).
        inbound_upgrade_timeout=math.inf,
    )
    host = new_host(
        key_pair=key_pair,
        sec_opt=security_options(key_pair),
        muxer_opt=muxer_options(),
        listen_addrs=listen_addrs,
        announce_addrs=parse_multiaddrs(announce) if announce is not None else None,
        connection_config=config,
        enable_tcp=True,
    )
    _disable_auto_connector(host)
    admit_inbound(
        host,
        stats=stats if stats is not None else Libp2pStats(),
        max_connections=max_connections,
        handshake_timeout=handshake_timeout,
    )
    return host


def _disable_auto_connector(host: IHost) -> None:
    """Keep the swarm's auto-connector from ever starting.

    In 0.8.1 it aims at the midpoint of the low and high watermarks whatever they are, dialing every
    peer in the peerstore until it gets there (and again after each disconnect): a peer we dropped
    on purpose would come straight back. No ConnectionConfig turns it off without also making the
    pruner close every connection (high watermark 0), so we stub its `start`; `maybe_connect`
    returns at once while it is not started.
    """
    auto_connector = getattr(host.get_network(), "auto_connector", None)
    if auto_connector is None:
        return

    async def stay_stopped() -> None:
        return None

    auto_connector.start = stay_stopped


def gate_dials(host: IHost, may_dial: Callable[[ID], bool]) -> None:
    """Make every dial of `host` to a peer ask `may_dial(peer)` first; False fails it with SwarmException.

    py-libp2p 0.8.1 has no gate by peer ID (its ConnectionGate filters addresses), and its pubsub
    keeps redialing a peer that dropped while it was opening a stream to it, so a peer we cut off
    would be dialed straight back. Every dial (ours, pubsub's, identify's) goes through the swarm's
    `dial_peer`, so the gate wraps that, on this host's swarm only.
    """
    network = host.get_network()
    dial_peer = network.dial_peer

    async def gated_dial_peer(peer_id: ID) -> list[INetConn]:
        if not may_dial(peer_id):
            raise SwarmException(f"dialing {peer_id} is refused (banned)")
        return await dial_peer(peer_id)

    network.dial_peer = gated_dial_peer  # type: ignore[method-assign]
