"""Admission of inbound connections: a deadline on the handshake, and slots that come back.

py-libp2p 0.8.1 guards inbound connections with a capacity limiter of `max_connections` tokens and
gets two things wrong with it (measured on loopback):

- a TCP connection that never completes the Noise/Yamux handshake holds its token for the swarm's
  `inbound_upgrade_timeout`, logged at debug level only and counted nowhere: `max_connections` idle
  sockets (a port scanner, an attacker that reopens them) lock every real peer out;
- a connection that does complete it holds its token until the *swarm* stops, not until the
  connection closes: after `max_connections` inbound connections over the host's lifetime, every
  new inbound connection is refused.

`admit_inbound` replaces the swarm's inbound handler, on one host's swarm only. `max_connections`
then bounds every connection we hold, handshaking or established; a handshake holds its place for
at most `handshake_timeout` seconds, and an established connection for as long as it is open. Each
refused, failed or timed-out handshake is logged and counted in `Libp2pStats` (reasons
``inbound:full``, ``inbound:handshake_failed``, ``inbound:handshake_timeout``).

The swarm's own handler also applies its address gate (allow and deny lists); `build_host` sets
none, so there is nothing of it to keep.
"""

from __future__ import annotations

import logging

import trio
from libp2p.abc import IHost, IMuxedConn
from libp2p.io.abc import ReadWriteCloser
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.swarm import Swarm
from libp2p.stream_muxer.yamux.yamux import Yamux
from multiaddr import Multiaddr

from transport.libp2p.stats import Libp2pStats

__all__ = ["InboundAdmission", "admit_inbound"]

log = logging.getLogger(__name__)

_CLOSE_TIMEOUT = 1.0  # closing a refused socket; it only has to send a FIN


class InboundAdmission:
    """The inbound connection handler of one swarm; `handshaking` is how many are mid-handshake."""

    def __init__(
        self, swarm: Swarm, *, stats: Libp2pStats, max_connections: int, handshake_timeout: float
    ) -> None:
        if not handshake_timeout > 0:
            raise ValueError(f"handshake_timeout must be > 0, got {handshake_timeout}")
        self._swarm = swarm
        self._stats = stats
        self._max_connections = max_connections
        self._handshake_timeout = handshake_timeout
        self.handshaking = 0

    async def handle(self, stream: ReadWriteCloser, listen_addr: Multiaddr) -> None:
        """Handshake `stream` within the deadline, then hold it (the listener closes it when we
        return) until the connection closes."""
        remote = _remote(stream)
        established = len(self._swarm.get_connections())
        if self.handshaking + established >= self._max_connections:
            self._stats.reject_inbound("full")
            log.info(
                "refusing inbound connection from %s: %d connections and %d handshakes"
                " fill max_connections=%d",
                remote,
                established,
                self.handshaking,
                self._max_connections,
            )
            await _close(stream)
            return
        self.handshaking += 1
        try:
            muxed = await self._handshake(stream, listen_addr, remote)
        finally:
            self.handshaking -= 1
        if muxed is None:
            await _close(stream)
            return
        await _closed(muxed)

    async def _handshake(
        self, stream: ReadWriteCloser, listen_addr: Multiaddr, remote: str
    ) -> IMuxedConn | None:
        """The upgraded connection, registered with the swarm; None (logged, counted) if it failed."""
        with trio.move_on_after(self._handshake_timeout) as deadline:
            try:
                return await self._swarm.upgrade_inbound_raw_conn(RawConnection(stream, False), listen_addr)
            except Exception as exc:  # libp2p raises SwarmException, and on a reset OSError-likes
                self._stats.reject_inbound("handshake_failed")
                log.info("inbound handshake from %s failed: %r", remote, exc)
                return None
        assert deadline.cancelled_caught  # the upgrade returned or raised otherwise
        self._stats.reject_inbound("handshake_timeout")
        log.warning(
            "closing inbound connection from %s: no Noise/Yamux handshake within %.1f s",
            remote,
            self._handshake_timeout,
        )
        return None


def admit_inbound(
    host: IHost, *, stats: Libp2pStats, max_connections: int, handshake_timeout: float
) -> InboundAdmission:
    """Make `host`'s swarm admit inbound connections through an `InboundAdmission` (see the module).

    The swarm's listeners look `_handle_inbound_connection` up on each connection, so replacing it
    on the instance before the host listens covers every inbound connection.
    """
    swarm = host.get_network()
    if not isinstance(swarm, Swarm):
        raise TypeError(f"expected a libp2p Swarm, got {type(swarm).__name__}")
    admission = InboundAdmission(
        swarm, stats=stats, max_connections=max_connections, handshake_timeout=handshake_timeout
    )
    swarm._handle_inbound_connection = admission.handle  # type: ignore[method-assign]
    return admission


async def _closed(muxed: IMuxedConn) -> None:
    """Return once `muxed` is closed (by either side, or by the swarm stopping)."""
    if not isinstance(muxed, Yamux):  # `build_host` offers Yamux alone
        raise TypeError(f"expected a Yamux connection, got {type(muxed).__name__}")
    await muxed.event_closed.wait()


async def _close(stream: ReadWriteCloser) -> None:
    """Close a socket we refused, even while being cancelled (the host stopping)."""
    with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
        try:
            await stream.close()
        except Exception as exc:  # already reset by the peer
            log.debug("closing a refused inbound connection: %r", exc)


def _remote(stream: ReadWriteCloser) -> str:
    address = stream.get_remote_address()
    return f"{address[0]}:{address[1]}" if address is not None else "an unknown address"
