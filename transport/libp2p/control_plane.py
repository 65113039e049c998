"""The control plane: GossipSub publish/subscribe for small control messages.

py-libp2p 0.8.1's GossipSub needs tuning to serve as one (measured, see DESIGN.md):

- its heartbeat defaults to 120 s, so a new peer joins a topic mesh minutes late: we beat every second;
- it rate-limits each forwarder to 10 messages/s per topic, *our own publishes included*: raised;
- it silently drops messages over 1 MiB: we refuse to publish over `max_message_bytes` (512 KiB by
  default) with `MessageTooLarge`, so a caller learns at once that a payload belongs on the model plane;
- its equivocation cache keeps every message it saw until it passes 1000 entries: pruned on a timer.

Every topic we subscribe to gets a validator that decodes with `transport.codec`: a malformed message
is refused before GossipSub relays it (and its forwarder's score drops), so garbage neither reaches
the application nor spreads through us.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from libp2p.abc import IHost, ISubscriptionAPI
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from transport import codec
from transport.base import PeerId, Received, TrafficStats
from transport.errors import DecodeError
from transport.libp2p.errors import MessageTooLarge
from transport.libp2p.inbox import Inbox, Slots
from transport.libp2p.stats import Libp2pStats

__all__ = ["ControlPlane", "ControlPlaneConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ControlPlaneConfig:
    """GossipSub settings; mesh degrees are go-libp2p's defaults."""

    heartbeat_interval: float = 1.0
    max_message_bytes: int = 512 * 2**10
    max_messages_per_topic_per_second: float = 1000.0
    equivocation_prune_interval: float = 60.0  # an entry lives one to two intervals
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    inbox_slots: int = 256  # undelivered control messages before the reader waits

    def __post_init__(self) -> None:
        if not 0 < self.max_message_bytes < 1 << 20:
            raise ValueError("max_message_bytes must be in (0, 1 MiB): GossipSub drops larger messages")
        if not (self.heartbeat_interval > 0 and self.equivocation_prune_interval > 0):
            raise ValueError("intervals must be > 0")
        if not 0 < self.degree_low <= self.degree <= self.degree_high:
            raise ValueError("need 0 < degree_low <= degree <= degree_high")


DEFAULT_CONTROL_PLANE = ControlPlaneConfig()


class ControlPlane:
    """Pubsub + GossipSub for one host; delivers what peers publish to the inbox."""

    def __init__(
        self,
        host: IHost,
        inbox: Inbox,
        *,
        traffic: TrafficStats,
        stats: Libp2pStats,
        config: ControlPlaneConfig = DEFAULT_CONTROL_PLANE,
    ) -> None:
        self.config = config
        self._host = host
        self._inbox = inbox
        self._slots = Slots("control messages", config.inbox_slots)
        self._traffic = traffic
        self._stats = stats
        self._limits = codec.Limits(max_frame_bytes=config.max_message_bytes)
        self.router = GossipSub(
            protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
            degree=config.degree,
            degree_low=config.degree_low,
            degree_high=config.degree_high,
            heartbeat_interval=config.heartbeat_interval,  # type: ignore[arg-type]  # int in the stub
            heartbeat_initial_delay=min(0.1, config.heartbeat_interval),
            max_messages_per_topic_per_second=config.max_messages_per_topic_per_second,
        )
        # Constructing Pubsub registers its stream handlers and notifee on the host: before it listens.
        self.pubsub = Pubsub(host, self.router, strict_signing=True)
        self._nursery: trio.Nursery | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ControlPlane]:
        """Run the pubsub services (inside the host's `run`) and stop them on exit."""
        async with background_trio_service(self.pubsub), background_trio_service(self.router):
            await self.pubsub.wait_until_ready()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._prune_equivocation_cache)
                try:
                    yield self
                finally:
                    self._nursery = None
                    nursery.cancel_scope.cancel()

    def close(self) -> None:
        """Stop the thread py-libp2p's `Pubsub` starts on construction and never stops: its cache of
        seen message IDs sweeps itself in a thread of its own, which would otherwise outlive the
        transport (one more thread per transport an embedding application opens and closes)."""
        self.pubsub.seen_messages.stop()

    def subscribers(self, topic: str) -> frozenset[PeerId]:
        """Peers known to be subscribed to `topic` (what a publish can reach right now)."""
        return frozenset(peer.to_base58() for peer in self.pubsub.peer_topics.get(topic, ()))

    async def subscribe(self, topic: str) -> None:
        if self._nursery is None:
            raise RuntimeError("the control plane is not running")
        if topic in self.pubsub.topic_ids:
            return
        self.pubsub.set_topic_validator(topic, self._validator(topic), is_async_validator=False)
        subscription = await self.pubsub.subscribe(topic)
        self._nursery.start_soon(self._deliver, topic, subscription)

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish encoded message `data`; `MessageTooLarge` above `max_message_bytes`."""
        if len(data) > self.config.max_message_bytes:
            raise MessageTooLarge(
                f"a control message is at most {self.config.max_message_bytes} bytes, this one is "
                f"{len(data)}: send large payloads point to point (Transport.send, the model plane)"
            )
        await self.pubsub.publish(topic, data)
        self._stats.gossip_published += 1
        self._traffic.messages_sent += 1
        self._traffic.bytes_sent += len(data)  # the payload once, not its copies to each mesh peer

    def _validator(self, topic: str) -> Callable[[ID, rpc_pb2.Message], bool]:
        def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            try:
                codec.decode(msg.data, limits=self._limits)
            except DecodeError as exc:
                self._stats.reject_gossip("undecodable")
                self._traffic.messages_rejected += 1
                log.warning("refused a message on %r from %s via %s: %s", topic, _origin(msg), forwarder, exc)
                return False
            return True

        return validate

    async def _deliver(self, topic: str, subscription: ISubscriptionAPI) -> None:
        me = self._host.get_id()
        while True:
            msg = await subscription.get()
            if msg.from_id == me.to_bytes():
                continue  # Pubsub hands our own publishes back to us
            try:
                message = codec.decode(msg.data, limits=self._limits)  # validated already: cannot fail
            except DecodeError:
                continue
            await self._slots.reserve()
            self._stats.gossip_received += 1
            self._traffic.messages_received += 1
            self._traffic.bytes_received += len(msg.data)
            self._inbox.deliver(Received(_origin(msg), message, topic), self._slots)

    async def _prune_equivocation_cache(self) -> None:
        """Forget entries older than one interval, in generations (entries carry no timestamp)."""
        cache = self.router.equivocation_detection
        previous: set[bytes] = set()
        while True:
            await trio.sleep(self.config.equivocation_prune_interval)
            for key in previous:
                cache.pop(key, None)
            previous = set(cache)


def _origin(msg: rpc_pb2.Message) -> PeerId:
    """The publisher (signed: Pubsub checked the signature against this ID before validators run)."""
    try:
        return ID(msg.from_id).to_base58()
    except Exception:
        return "<invalid peer id>"
