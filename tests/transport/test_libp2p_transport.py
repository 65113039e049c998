"""Real libp2p hosts on 127.0.0.1: messaging, events, gossip, refusals, deadlines, compressed models
and bans of misbehaving senders.

Every host lives inside `open_libp2p_transport`'s block, so each test stops what it starts; each
test body also runs under a deadline, so a hang fails the test instead of the suite.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import socket
import threading
import time
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("libp2p")

import msgpack
import multiaddr
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p_events import next_event

from transport import codec
from transport.base import PeerConnected, PeerDisconnected, Received
from transport.body_codec import CODEC_NAME, CompressionConfig
from transport.errors import PeerUnreachable
from transport.framing import frame_prefix
from transport.libp2p import (
    ControlPlaneConfig,
    ListenFailed,
    MessageTooLarge,
    ModelPlaneConfig,
    TransferRejected,
    model_plane,
    open_libp2p_transport,
)
from transport.libp2p.host import build_host
from transport.libp2p.model_plane import MODEL_PROTOCOL, TransferHeader, _chunks
from transport.messages import ModelPayload, ModelUpdate
from transport.penalties import PenaltyConfig

MiB = 2**20
FAST = ModelPlaneConfig(io_timeout=1.0, connect_timeout=3.0, transfer_timeout=15.0, queue_timeout=0.5)


@codec.message("test_libp2p_note", version=1)
@dataclass(frozen=True, slots=True)
class Note:
    text: str
    round: int = 0


def run(fn, *, timeout: float = 30.0):
    async def main():
        with trio.fail_after(timeout):
            await fn()

    trio.run(main)


def model(round_: int, elements: int, seed: int = 0) -> ModelUpdate:
    rng = np.random.default_rng(seed)
    tensors = {"w": rng.standard_normal(elements, dtype=np.float32), "b": np.arange(3, dtype=np.int64)}
    return ModelUpdate(round=round_, model=ModelPayload(tensors, 2.0))


def node(**kwargs):
    kwargs.setdefault("model", FAST)
    return open_libp2p_transport(key_pair=create_new_key_pair(), **kwargs)


async def connected_pair(stack: AsyncExitStack, a_kwargs=None, b_kwargs=None):
    a = await stack.enter_async_context(node(**(a_kwargs or {})))
    b = await stack.enter_async_context(node(bootstrap=a.addrs, **(b_kwargs or {})))
    assert await next_event(a, PeerConnected) == PeerConnected(b.peer_id)
    assert await next_event(b, PeerConnected) == PeerConnected(a.peer_id)
    return a, b


def assert_no_event(transport, kind):
    """No event of type `kind` is queued (others are consumed)."""
    with pytest.raises(trio.WouldBlock):
        while True:
            event = transport.events._receive.receive_nowait()[0]
            assert not isinstance(event, kind), event


def assert_nothing_received(transport):
    assert_no_event(transport, Received)


async def raw_transfer(sender, peer_id: str, frames: list[bytes], *, read_status: bool = True):
    """Write hand-made model-plane bytes to `peer_id`; the status byte back, or None if reset.

    A stream the receiver resets at once may already fail to open (mid protocol negotiation): None.
    """
    try:
        stream = await sender.host.new_stream(ID.from_base58(peer_id), [MODEL_PROTOCOL])
    except Exception:
        return None
    try:
        for frame in frames:
            await stream.write(frame)
        if read_status:
            with trio.fail_after(5):
                return (await stream.read(1))[0]
    except Exception:
        return None
    finally:
        await stream.reset()


def transfer(kind: str, round_: int, body: bytes, *, digest: bytes | None = None, codec_name=CODEC_NAME):
    """The frames of a hand-made model-plane transfer: header, body, sha256 trailer (`digest` if given)."""
    header = TransferHeader(kind, round_, len(body), codec_name).encode()
    return [header, body, hashlib.sha256(body).digest() if digest is None else digest]


def test_two_hosts_exchange_typed_messages_including_a_multi_mib_tensor():
    async def main():
        async with AsyncExitStack() as stack:
            a, b = await connected_pair(stack)
            assert a.peers() == {b.peer_id} and b.peers() == {a.peer_id}
            assert all(addr.endswith(f"/p2p/{a.peer_id}") for addr in a.addrs)

            big = model(4, 3 * MiB // 4 * 4)  # 12 MiB of float32
            start = time.monotonic()
            await b.send(a.peer_id, big)
            event = await next_event(a, Received)
            elapsed = time.monotonic() - start
            assert event.sender == b.peer_id and event.topic is None
            assert event.message.round == 4 and event.message.model.weight == 2.0
            encoded = len(codec.encode(big))
            np.testing.assert_array_equal(event.message.model.tensors["w"], big.model.tensors["w"])
            np.testing.assert_array_equal(event.message.model.tensors["b"], big.model.tensors["b"])
            assert elapsed < 10
            # The big tensor is a read-only view of the buffer the body was received into, not a copy.
            w = base = event.message.model.tensors["w"]
            while isinstance(base, np.ndarray):
                base = base.base
            assert not w.flags.writeable and isinstance(base, memoryview) and base.readonly
            assert type(base.obj) is np.ndarray and base.obj.nbytes == encoded > w.nbytes  # the whole body

            await a.send(b.peer_id, Note("hello", round=1))
            event = await next_event(b, Received)
            assert event.message == Note("hello", round=1) and event.sender == a.peer_id

            assert b.stats.messages_sent == a.stats.messages_received == 1
            assert b.stats.bytes_sent == a.stats.bytes_received > encoded  # body + header on the wire
            assert a.libp2p_stats.transfers_received == 1 and b.libp2p_stats.transfers_sent == 1

    run(main)


def test_three_hosts_dial_by_known_address_and_gossip_reaches_all_subscribers():
    async def main():
        async with AsyncExitStack() as stack:
            hub = await stack.enter_async_context(node())
            b = await stack.enter_async_context(node(bootstrap=hub.addrs))
            c = await stack.enter_async_context(node(bootstrap=hub.addrs))
            for peer in (b, c):
                await next_event(peer, PeerConnected)
            # b and c are strangers; b dials c on send once it knows where c listens.
            assert c.peer_id not in b.peers()
            with pytest.raises(PeerUnreachable, match="address is unknown"):
                await b.send(c.peer_id, Note("too early"))
            b.add_peer_addrs(c.addrs)
            await b.send(c.peer_id, model(2, 300_000))
            event = await next_event(c, Received)
            assert event.sender == b.peer_id and event.message.round == 2
            assert c.peer_id in b.peers()

            for peer in (b, c):
                await peer.subscribe("rounds")
            while not {b.peer_id, c.peer_id} <= hub.control_plane.subscribers("rounds"):
                await trio.sleep(0.05)
            await hub.publish("rounds", Note("round 5 begins", round=5))
            for peer in (b, c):
                event = await next_event(peer, Received)
                assert event.topic == "rounds" and event.sender == hub.peer_id
                assert event.message == Note("round 5 begins", round=5)
            assert hub.libp2p_stats.gossip_published == 1

    run(main)


def test_gossip_refuses_oversize_publishes_and_malformed_messages():
    async def main():
        async with AsyncExitStack() as stack:
            small = ControlPlaneConfig(max_message_bytes=1024)
            a, b = await connected_pair(stack, b_kwargs={"control": small})
            await a.subscribe("ctl")
            while a.peer_id not in b.control_plane.subscribers("ctl"):
                await trio.sleep(0.05)
            with pytest.raises(MessageTooLarge, match="at most 1024 bytes"):
                await b.publish("ctl", Note("x" * 2000))
            # Bytes that are no message, published below our API: a's validator refuses them.
            await b.control_plane.pubsub.publish("ctl", b"\xc1 not msgpack")
            await b.publish("ctl", Note("fine"))
            event = await next_event(a, Received)
            assert event.message == Note("fine")
            assert a.libp2p_stats.gossip_rejected == 1
            assert a.libp2p_stats.rejected_by_reason["gossip:undecodable"] == 1
            assert a.stats.messages_rejected == 1

    run(main)


def test_equivocation_cache_is_pruned_on_a_timer():
    async def main():
        async with AsyncExitStack() as stack:
            fast = ControlPlaneConfig(equivocation_prune_interval=0.2)
            a, b = await connected_pair(stack, a_kwargs={"control": fast})
            await b.subscribe("ctl")
            while b.peer_id not in a.control_plane.subscribers("ctl"):
                await trio.sleep(0.05)
            for i in range(3):
                await a.publish("ctl", Note(f"n{i}"))
            cache = a.control_plane.router.equivocation_detection
            assert len(cache) == 3
            await trio.sleep(0.5)  # entries live one to two intervals
            assert len(cache) == 0

    run(main)


def test_connect_and_disconnect_events_on_both_ends():
    async def main():
        async with node() as a:
            async with node() as b:
                peer = await b.connect(a.addrs[0])
                assert peer == a.peer_id
                assert await next_event(a, PeerConnected) == PeerConnected(b.peer_id)
                assert await next_event(b, PeerConnected) == PeerConnected(a.peer_id)
                await b.disconnect(a.peer_id)
                assert await next_event(a, PeerDisconnected) == PeerDisconnected(b.peer_id)
                assert await next_event(b, PeerDisconnected) == PeerDisconnected(a.peer_id)
                await b.connect(a.addrs[0])
                await next_event(a, PeerConnected)
            # b shut down: a hears it leave, and sending to it fails fast.
            assert await next_event(a, PeerDisconnected) == PeerDisconnected(b.peer_id)
            assert a.peers() == frozenset()
            with pytest.raises(PeerUnreachable):
                await a.send(b.peer_id, Note("anyone?"))
        # The event stream ends with the transport.
        with pytest.raises(trio.EndOfChannel):
            await a.events.receive()

    run(main)


def test_bootstrap_peer_is_redialed_after_the_link_drops():
    async def main():
        async with AsyncExitStack() as stack:
            a, b = await connected_pair(stack, b_kwargs={"bootstrap_backoff": (0.05, 0.2)})
            await a.disconnect(b.peer_id)
            await next_event(b, PeerDisconnected)
            assert await next_event(b, PeerConnected) == PeerConnected(a.peer_id)

    run(main)


def test_our_own_address_among_the_bootstrap_peers_is_skipped_and_we_are_never_our_peer():
    async def main():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        key_pair = create_new_key_pair()
        own = ID.from_pubkey(key_pair.public_key).to_base58()
        own_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{own}"
        async with node() as other:
            bootstrap = [own_addr, other.addrs[0]]  # one shared list of every node
            async with open_libp2p_transport(
                key_pair=key_pair, model=FAST, listen=f"/ip4/127.0.0.1/tcp/{port}", bootstrap=bootstrap
            ) as a:
                assert a.addrs == [own_addr]
                assert await next_event(a, PeerConnected) == PeerConnected(other.peer_id)
                await trio.sleep(0.5)  # time enough for a dial to ourselves to connect
                assert a.peers() == frozenset({other.peer_id})
                # Dialed all the same (here by hand), a connection to ourselves is no peer of ours.
                await a.host.connect(info_from_p2p_addr(multiaddr.Multiaddr(own_addr)))
                assert a.peers() == frozenset({other.peer_id})
                assert_no_event(a, PeerConnected)

    run(main)


def test_connecting_to_our_own_address_is_refused_without_a_connection():
    async def main():
        async with node() as a:
            with pytest.raises(
                PeerUnreachable, match=f"cannot connect to {a.addrs[0]}: it is this node's own"
            ):
                await a.connect(a.addrs[0])
            assert a.host.get_network().get_total_connections() == 0
            assert a.peers() == frozenset()

    run(main)


def test_a_plaintext_only_peer_cannot_connect_either_way():
    async def main():
        key_pair = create_new_key_pair()
        plain = new_host(
            key_pair=key_pair,
            sec_opt={TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(key_pair)},
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        )
        listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
        async with node() as a, plain.run(listen):
            with pytest.raises(Exception) as refused, trio.fail_after(5):  # libp2p raises its own types
                await plain.connect(info_from_p2p_addr(multiaddr.Multiaddr(a.addrs[0])))
            assert "secure protocol" in repr(refused.value.__cause__)  # not, say, a wrong address
            with pytest.raises(PeerUnreachable):
                await a.connect(str(plain.get_addrs()[0]), timeout=5)
            assert a.peers() == frozenset() and plain.get_connected_peers() == []

    run(main)


def test_connections_beyond_the_limit_are_refused():
    async def main():
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(node(max_connections=1))
            b = await stack.enter_async_context(node())
            c = await stack.enter_async_context(node())
            await b.connect(a.addrs[0])
            await next_event(a, PeerConnected)
            with suppress(PeerUnreachable):  # refused at once, or accepted and closed
                await c.connect(a.addrs[0], timeout=5)
            await trio.sleep(0.3)
            assert a.peers() == {b.peer_id}
            assert a.peer_id not in c.peers()

    run(main)


def tcp_address(transport) -> tuple[str, int]:
    addr = multiaddr.Multiaddr(transport.addrs[0])
    return addr.value_for_protocol("ip4"), int(addr.value_for_protocol("tcp"))


async def wait_until(predicate, *, poll: float = 0.05) -> None:
    """Poll `predicate` until it holds (the test's own deadline bounds the wait)."""
    while not predicate():
        await trio.sleep(poll)


def test_idle_sockets_lose_their_slots_after_the_handshake_timeout_and_are_counted():
    async def main():
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(node(max_connections=2, handshake_timeout=2.0))
            early = await stack.enter_async_context(node())
            late = await stack.enter_async_context(node())
            # Two TCP connections that never speak: a port scanner, or an attacker filling slots.
            idle = [await trio.open_tcp_stream(*tcp_address(a)) for _ in range(2)]
            stack.push_async_callback(lambda: trio.aclose_forcefully(idle[0]))
            stack.push_async_callback(lambda: trio.aclose_forcefully(idle[1]))
            # While they handshake, they hold both slots: a real peer is refused.
            with pytest.raises(PeerUnreachable):
                await early.connect(a.addrs[0], timeout=5)
            assert a.libp2p_stats.rejected_by_reason["inbound:full"] >= 1
            # Past the deadline a closes them (EOF, whatever it wrote first)...
            for stream in idle:
                while await stream.receive_some():
                    pass
            await wait_until(lambda: a.libp2p_stats.rejected_by_reason["inbound:handshake_timeout"] == 2)
            # ...and a real peer gets in.
            await late.connect(a.addrs[0], timeout=5)
            assert await next_event(a, PeerConnected) == PeerConnected(late.peer_id)
            reasons = a.libp2p_stats.rejected_by_reason
            inbound = sum(count for reason, count in reasons.items() if reason.startswith("inbound:"))
            assert a.libp2p_stats.inbound_rejected == inbound

    run(main)


def test_slots_of_closed_inbound_connections_come_back():
    """py-libp2p itself keeps an inbound connection's slot until the host stops, not until it closes."""

    async def main():
        async with node(max_connections=2) as a:
            for _ in range(4):  # twice the cap, one after the other
                async with node() as b:
                    await b.connect(a.addrs[0], timeout=5)
                    assert await next_event(a, PeerConnected) == PeerConnected(b.peer_id)
                assert await next_event(a, PeerDisconnected, timeout=10) == PeerDisconnected(b.peer_id)
            assert a.libp2p_stats.inbound_rejected == 0

    run(main, timeout=60)


def test_oversize_headers_are_refused_before_any_allocation():
    async def main():
        async with AsyncExitStack() as stack:
            a, b = await connected_pair(stack)
            huge = TransferHeader("model_update", 1, 2**40).encode()  # 1 TiB announced
            assert await raw_transfer(b, a.peer_id, [huge]) == 2  # too_large
            long_header = frame_prefix(a.model_plane.config.max_header_bytes + 1)
            assert await raw_transfer(b, a.peer_id, [long_header]) in (2, None)
            assert a.libp2p_stats.rejected_by_reason["transfer:too_large"] == 2
            assert a.libp2p_stats.transfers_rejected == 2
            assert_nothing_received(a)
            await b.send(a.peer_id, Note("still serving"))
            assert (await next_event(a, Received)).message == Note("still serving")

    run(main)


def test_corrupted_body_is_refused_and_nothing_is_emitted():
    async def main():
        async with AsyncExitStack() as stack:
            a, b = await connected_pair(stack)
            body = codec.encode(model(1, 500_000))
            digest = hashlib.sha256(body).digest()
            corrupted = bytearray(body)
            corrupted[len(body) // 2] ^= 0xFF
            frames = transfer("model_update", 1, bytes(corrupted), digest=digest)
            assert await raw_transfer(b, a.peer_id, frames) == 5  # hash_mismatch
            # The body intact, its trailer not.
            wrong = bytes([digest[0] ^ 1]) + digest[1:]
            assert await raw_transfer(b, a.peer_id, transfer("model_update", 1, body, digest=wrong)) == 5
            # A well-hashed body that is no message, and one whose header lies about its kind.
            junk = b"\xc1" * 100
            assert await raw_transfer(b, a.peer_id, transfer("model_update", 1, junk)) == 6  # undecodable
            note = codec.encode(Note("hi"))
            assert await raw_transfer(b, a.peer_id, transfer("model_update", 1, note)) == 7  # kind_mismatch
            reasons = a.libp2p_stats.rejected_by_reason
            assert reasons["transfer:hash_mismatch"] == 2 and reasons["transfer:undecodable"] == 1
            assert reasons["transfer:kind_mismatch"] == 1
            assert_nothing_received(a)
            # The receiver keeps serving: the next good transfer arrives whole.
            good = model(2, 500_000, seed=1)
            await b.send(a.peer_id, good)
            event = await next_event(a, Received)
            np.testing.assert_array_equal(event.message.model.tensors["w"], good.model.tensors["w"])

    run(main)


def test_a_big_body_hashed_in_worker_threads_is_checked_all_the_same():
    async def main():
        async with AsyncExitStack() as stack:
            a, b = await connected_pair(stack)
            body = codec.encode(model(1, 3 * MiB))  # 12 MiB: hashed in worker threads on both sides
            assert len(body) > 2 * model_plane._HASH_STEP_BYTES
            corrupted = bytearray(body)
            corrupted[-1000] ^= 0x01  # in the last step the receiver hashes
            frames = transfer("model_update", 1, bytes(corrupted), digest=hashlib.sha256(body).digest())
            assert await raw_transfer(b, a.peer_id, frames) == 5  # hash_mismatch
            assert a.libp2p_stats.rejected_by_reason["transfer:hash_mismatch"] == 1
            assert_nothing_received(a)
            assert await raw_transfer(b, a.peer_id, transfer("model_update", 1, body)) == 0
            got = (await next_event(a, Received)).message.model.tensors["w"]
            np.testing.assert_array_equal(got, model(1, 3 * MiB).model.tensors["w"])

    run(main)


def test_read_pause_and_buffer_pool_bytes_are_validated():
    for bad in (-0.001, 0.5):
        with pytest.raises(ValueError, match="read_pause"):
            ModelPlaneConfig(read_pause=bad)
    assert ModelPlaneConfig(read_pause=0).read_pause == 0
    with pytest.raises(ValueError, match="buffer_pool_bytes"):
        ModelPlaneConfig(buffer_pool_bytes=-1)


def test_buffer_pool_gives_a_slab_again_only_once_nothing_views_it():
    pool = model_plane.BufferPool(keep_bytes=10 * MiB)
    first = pool.take(4 * MiB)
    first[:] = 1
    tensor = np.frombuffer(memoryview(first).toreadonly()[100:], np.float32)  # as decode views it
    del first
    second = pool.take(4 * MiB)  # the first slab is still viewed: a new one
    second[:] = 2
    assert pool.reused == 0 and np.all(tensor == np.frombuffer(b"\x01" * 4, np.float32)[0])
    del tensor
    assert pool.free_bytes == 4 * MiB
    third = pool.take(3 * MiB)  # fits in the free slab (at most twice as big)
    assert pool.reused == 1 and third.nbytes == 3 * MiB and pool.free_bytes == 0
    del second, third
    assert pool.free_bytes == 8 * MiB
    small = pool.take(MiB)  # the free 4 MiB slabs are more than twice too big: a new one
    assert pool.reused == 1 and pool.free_bytes == 8 * MiB
    del small
    assert pool.free_bytes == 9 * MiB
    big = pool.take(6 * MiB)  # none fits: the oldest free slabs make room for it
    assert pool.free_bytes == MiB
    del big
    assert pool.free_bytes == 7 * MiB
    in_6, new_1, new_2 = (pool.take(4 * MiB) for _ in range(3))  # one from the 6 MiB slab
    assert pool.reused == 2 and pool.free_bytes == MiB
    del in_6
    assert pool.free_bytes == 7 * MiB
    del new_1, new_2
    assert pool.free_bytes == 7 * MiB  # 11 MiB would pass keep_bytes: dropped
    nothing = model_plane.BufferPool(keep_bytes=0)
    nothing.take(4 * MiB).fill(0)  # dropped at once
    assert nothing.free_bytes == 0


def test_received_models_reuse_receive_buffers_but_never_one_still_in_use():
    async def main():
        async with AsyncExitStack() as stack:
            a, b = await connected_pair(stack)
            pool = a.model_plane._buffers
            first = model(1, 2 * MiB, seed=1)  # 8 MiB: read into a pool buffer
            await b.send(a.peer_id, first)
            kept = (await next_event(a, Received)).message.model.tensors["w"]
            assert pool.free_bytes == 0  # `kept` views it
            second = model(2, 2 * MiB, seed=2)
            await b.send(a.peer_id, second)
            event = await next_event(a, Received)
            assert pool.reused == 0
            np.testing.assert_array_equal(kept, first.model.tensors["w"])  # not overwritten
            np.testing.assert_array_equal(event.message.model.tensors["w"], second.model.tensors["w"])
            del event
            assert pool.free_bytes > 0  # the second model's buffer, no longer viewed
            await b.send(a.peer_id, first)
            got = (await next_event(a, Received)).message.model.tensors["w"]
            assert pool.reused == 1
            np.testing.assert_array_equal(got, first.model.tensors["w"])
            np.testing.assert_array_equal(kept, first.model.tensors["w"])

    run(main)


@pytest.mark.parametrize("read_pause", [0, 0.001])
def test_a_big_model_arrives_whole_whether_reads_pause_or_not(read_pause):
    async def main():
        async with AsyncExitStack() as stack:
            config = dataclasses.replace(FAST, read_pause=read_pause)
            a, b = await connected_pair(stack, a_kwargs={"model": config})
            big = model(3, 2 * MiB)
            await b.send(a.peer_id, big)
            got = (await next_event(a, Received)).message.model.tensors
            np.testing.assert_array_equal(got["w"], big.model.tensors["w"])
            np.testing.assert_array_equal(got["b"], big.model.tensors["b"])

    run(main)


def test_a_header_of_another_version_is_refused():
    async def main():
        async with AsyncExitStack() as stack:
            a, b = await connected_pair(stack)
            body = codec.encode(Note("hi"))
            digest = hashlib.sha256(body).digest()
            # Version 1 carried the digest in the header and no trailer.
            v1 = msgpack.packb([1, "test_libp2p_note", 0, len(body), digest, CODEC_NAME])
            assert await raw_transfer(b, a.peer_id, [frame_prefix(len(v1)) + v1, body]) == 1  # bad_header
            assert a.libp2p_stats.rejected_by_reason["transfer:bad_header"] == 1
            assert_nothing_received(a)

    run(main)


def test_a_refused_transfer_raises_transfer_rejected_at_the_sender():
    async def main():
        async with AsyncExitStack() as stack:
            refuse_stale = lambda sender, header: header.round >= 3  # noqa: E731
            a, b = await connected_pair(stack, a_kwargs={"accept_transfer": refuse_stale})
            with pytest.raises(TransferRejected, match="refused"):
                await b.send(a.peer_id, Note("stale", round=2))
            await b.send(a.peer_id, Note("fresh", round=3))
            assert (await next_event(a, Received)).message.text == "fresh"
            assert a.libp2p_stats.rejected_by_reason["transfer:refused"] == 1
            assert b.libp2p_stats.transfers_failed == 1

    run(main)


def test_a_receiver_that_is_not_read_refuses_as_busy_instead_of_buffering():
    async def main():
        async with AsyncExitStack() as stack:
            a, b = await connected_pair(stack, a_kwargs={"max_pending_models": 1})
            await b.send(a.peer_id, Note("one"))  # fills a's only slot; nobody reads a's events
            with pytest.raises(TransferRejected, match="busy"):
                await b.send(a.peer_id, Note("two"))
            assert (await next_event(a, Received)).message.text == "one"
            await b.send(a.peer_id, Note("three"))  # the slot is free again
            assert (await next_event(a, Received)).message.text == "three"

    run(main)


def test_a_receiver_that_stops_reading_does_not_block_the_sender():
    async def main():
        async with AsyncExitStack() as stack:
            a, b = await connected_pair(stack)

            async def stall(stream):  # reads nothing, holds the stream open
                await trio.sleep_forever()

            a.host.set_stream_handler(MODEL_PROTOCOL, stall)
            start = time.monotonic()
            with pytest.raises(PeerUnreachable, match=r"timed out|broke off"):
                await b.send(a.peer_id, model(1, 4 * MiB // 4))  # 4 MiB: far over the Yamux window
            assert time.monotonic() - start < 4  # io_timeout is 1 s
            assert b.libp2p_stats.transfers_failed == 1

    run(main)


def test_small_messages_are_not_held_up_by_big_transfers_to_a_peer_that_stopped_reading():
    async def main():
        async with AsyncExitStack() as stack:
            # b may send one big transfer at a time, and a write that does not progress fails
            # after 3 s; a reads nothing, c is a peer like any other.
            one_slot = dataclasses.replace(FAST, io_timeout=3.0, max_outbound=1)
            a, b = await connected_pair(stack, b_kwargs={"model": one_slot})
            c = await stack.enter_async_context(node(bootstrap=a.addrs))
            b.add_peer_addrs(c.addrs)

            async def stall(stream):  # reads nothing, holds the stream open
                await trio.sleep_forever()

            a.host.set_stream_handler(MODEL_PROTOCOL, stall)
            async with trio.open_nursery() as nursery:

                async def big_to_a():
                    with pytest.raises(PeerUnreachable):
                        await b.send(a.peer_id, model(1, 4 * MiB // 4))  # over the Yamux window

                nursery.start_soon(big_to_a)
                await trio.sleep(0.2)  # b's one slot is taken by the transfer to a
                start = time.monotonic()
                await b.send(c.peer_id, Note("small"))
                assert time.monotonic() - start < 1.5  # not after the big transfer failed (3 s)
                assert (await next_event(c, Received)).message == Note("small")
                with pytest.raises(trio.TooSlowError), trio.fail_after(1.0):  # a big one still waits
                    await b.send(c.peer_id, model(2, MiB // 4))

    run(main)


@pytest.mark.parametrize(
    ("sender_does", "stops_at", "reason", "elements"),
    [
        ("stall", "mid body", "timeout", 200_000),
        ("reset", "mid body", "truncated", 200_000),
        ("stall", "mid digest", "timeout", 200_000),
        ("close", "mid digest", "truncated", 200_000),
        ("close", "before the digest", "truncated", 200_000),
        # Big bodies, hashed in a worker thread that the failure must stop too.
        ("stall", "mid body", "timeout", 2 * MiB),
        ("close", "before the digest", "truncated", 2 * MiB),
    ],
)
def test_a_sender_that_stops_mid_body_is_cut_off_and_nothing_is_emitted(
    sender_does, stops_at, reason, elements
):
    async def main():
        async with AsyncExitStack() as stack:
            a, b = await connected_pair(stack)
            header, body, digest = transfer("model_update", 1, codec.encode(model(1, elements)))
            sent = {
                "mid body": header + body[: len(body) // 2],
                "mid digest": header + body + digest[:20],
                "before the digest": header + body,
            }[stops_at]
            stream = await b.host.new_stream(ID.from_base58(a.peer_id), [MODEL_PROTOCOL])
            await stream.write(sent)
            if sender_does == "reset":
                await stream.reset()
            elif sender_does == "close":
                await stream.close()
            with trio.fail_after(4):  # the receiver's io_timeout is 1 s
                while not a.libp2p_stats.transfers_rejected:
                    await trio.sleep(0.05)
            await stream.reset()
            assert a.libp2p_stats.rejected_by_reason[f"transfer:{reason}"] == 1
            assert_nothing_received(a)
            await b.send(a.peer_id, Note("after the stall"))
            assert (await next_event(a, Received)).message.text == "after the stall"

    run(main)


def test_transport_from_a_key_dir_keeps_its_peer_id_and_announces_what_it_is_told(tmp_path):
    async def main():
        async with open_libp2p_transport(key_dir=tmp_path) as first:
            peer_id = first.peer_id
        public = "/ip4/203.0.113.7/tcp/4001"
        async with open_libp2p_transport(key_dir=tmp_path, announce=[public]) as second:
            assert second.peer_id == peer_id
            assert second.addrs == [f"{public}/p2p/{peer_id}"]

    run(main)


def test_a_listen_address_that_cannot_be_bound_fails_the_open_naming_every_such_address():
    async def main():
        with socket.socket() as taken, socket.socket() as also_taken:
            for sock in (taken, also_taken):
                sock.bind(("127.0.0.1", 0))
                sock.listen()
            busy = [f"/ip4/127.0.0.1/tcp/{sock.getsockname()[1]}" for sock in (taken, also_taken)]
            # Raised as itself (not in an ExceptionGroup), and as an OSError like any failed bind.
            with pytest.raises(ListenFailed) as failed:
                async with node(listen=busy[0]):
                    pytest.fail("opened with nothing to listen on")
            assert isinstance(failed.value, OSError) and failed.value.addrs == busy[:1]
            # One address bound is not enough: all of them must be.
            with pytest.raises(ListenFailed) as failed:
                async with node(listen=[busy[0], "/ip4/127.0.0.1/tcp/0", busy[1]]):
                    pytest.fail("opened without two of its listen addresses")
            assert failed.value.addrs == busy and all(addr in str(failed.value) for addr in busy)

    run(main)


def test_a_port_another_node_listens_on_fails_the_open_instead_of_being_shared():
    # py-libp2p listens with SO_REUSEPORT, so a second node given a running node's port bound it too
    # and the kernel handed each inbound connection to either node: dials to the first one's peer ID
    # then failed at random.
    async def main():
        async with node() as first:
            port = multiaddr.Multiaddr(first.addrs[0]).value_for_protocol("tcp")
            taken = f"/ip4/127.0.0.1/tcp/{port}"
            with pytest.raises(ListenFailed) as failed:
                async with node(listen=taken):
                    pytest.fail("opened on a port another node listens on")
            assert failed.value.addrs == [taken]

    run(main)


@pytest.mark.parametrize(
    "addr",
    ["/dns4/localhost/tcp/0", "/ip4/127.0.0.1/tcp/0/tls", "/ip4/127.0.0.1/tcp/0/ws", "/ip4/127.0.0.1/udp/0"],
)
def test_only_ip_and_tcp_listen_addresses_are_taken(addr):
    """py-libp2p would listen on every interface for /dns4/..., and on plain TCP for .../tls."""
    with pytest.raises(
        ValueError, match=f"^only /ip4/<address>/tcp/<port> and /ip6/<address>/tcp/<port>, not {addr}$"
    ):
        build_host(create_new_key_pair(), listen=[addr])


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), max_size=8), chunk_bytes=st.integers(1, 16))
def test_body_chunks_are_full_size_views_except_across_segment_boundaries(sizes, chunk_bytes):
    data = bytes(range(256)) * (sum(sizes) // 256 + 1)
    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    segments = [memoryview(data)[offsets[i] : offsets[i + 1]] for i in range(len(sizes))]
    chunks = list(_chunks([s for s in segments if s.nbytes], chunk_bytes))
    assert b"".join(chunks) == data[: sum(sizes)]
    assert all(len(c) == chunk_bytes for c in chunks[:-1]) and all(0 < len(c) <= chunk_bytes for c in chunks)
    inside = [c for c in chunks if isinstance(c, memoryview)]
    assert all(c.obj is data for c in inside)  # no copy unless the chunk spans segments


# --- compressed models ------------------------------------------------------------------------------


def headers_seen(seen: list):
    """An accept hook that records every transfer header it is shown (and accepts it)."""

    def accept(sender, header):
        seen.append(header)
        return True

    return accept


@pytest.mark.parametrize(("name", "ratio"), [("fp32", 1.01), ("fp16", 0.52), ("int8", 0.27), ("topk", 0.03)])
def test_models_travel_compressed_and_arrive_as_float32_of_the_original_shapes(name, ratio):
    async def main():
        async with AsyncExitStack() as stack:
            seen = []
            a, b = await connected_pair(
                stack,
                a_kwargs={"accept_transfer": headers_seen(seen)},
                b_kwargs={"compression": CompressionConfig(codec=name, int8_block=64)},
            )
            sent = model(5, 2**18)
            await b.send(a.peer_id, sent)
            event = await next_event(a, Received)
            assert [h.codec for h in seen] == [f"{CODEC_NAME}+{name}"]
            got, want = event.message, sent.model.tensors
            assert type(got) is ModelUpdate and got.round == 5 and got.model.weight == 2.0
            w = got.model.tensors["w"]
            assert w.dtype == np.float32 and w.shape == want["w"].shape
            np.testing.assert_array_equal(got.model.tensors["b"], want["b"])  # int64: unchanged
            error = np.abs(w - want["w"])
            if name == "fp32":
                assert not error.any()
            elif name == "fp16":
                assert np.all(error <= 2.0**-11 * np.abs(want["w"]) + 2.0**-25)
            elif name == "int8":
                half_scale = np.repeat(np.abs(want["w"]).reshape(-1, 64).max(axis=1) / 127 / 2, 64)
                assert np.all(error <= half_scale * (1 + 1e-5))
            else:
                kept = w != 0
                assert kept.sum() == math.ceil(0.01 * w.size)
                np.testing.assert_array_equal(w[kept], want["w"][kept])
            # On the wire: smaller than the plain encoding by the codec's ratio, header and all.
            assert b.stats.bytes_sent < ratio * len(codec.encode(sent))
            assert a.stats.bytes_received == b.stats.bytes_sent

    run(main)


def test_error_feedback_carries_the_residual_to_the_next_model_for_the_same_peer():
    async def main():
        async with AsyncExitStack() as stack:
            topk = {"compression": CompressionConfig(codec="topk", topk_fraction=0.1)}
            a, b = await connected_pair(stack, b_kwargs=topk)
            c = await stack.enter_async_context(node())
            b.add_peer_addrs(c.addrs)
            sent = model(1, 20_000)
            want = sent.model.tensors["w"]
            received = []
            for peer in (a, a, c):
                await b.send(peer.peer_id, sent)
                received.append((await next_event(peer, Received)).message.model.tensors["w"])
            first, second, other = received
            kept = second != 0
            # The second model to a is top-k of (w + what the first one left out), not the first again.
            np.testing.assert_allclose(second[kept], (2 * want - first)[kept], rtol=1e-6)
            assert not np.array_equal(kept, first != 0)
            np.testing.assert_array_equal(other, first)  # c has a residual of its own
            # Once a disconnects its residual is dropped: the next model to it starts afresh.
            await b.disconnect(a.peer_id)
            await next_event(b, PeerDisconnected)
            await b.send(a.peer_id, sent)
            np.testing.assert_array_equal((await next_event(a, Received)).message.model.tensors["w"], first)

    run(main)


def test_a_body_codec_the_receiver_does_not_know_is_refused_and_not_charged():
    async def main():
        async with AsyncExitStack() as stack:
            strict = {"penalties": PenaltyConfig(offences=1)}  # any charge would ban at once
            a, b = await connected_pair(stack, a_kwargs=strict)
            body = codec.encode(model(1, 1000))
            for name in (f"{CODEC_NAME}+zstd", "\x00garbage"):
                frames = transfer("model_update", 1, body, codec_name=name)
                assert await raw_transfer(b, a.peer_id, frames) == 8  # unknown_codec
            # A known name over a body that is not what it says: undecodable (charged, so banned).
            frames = transfer("model_update", 1, body, codec_name=f"{CODEC_NAME}+int8")
            assert await raw_transfer(b, a.peer_id, frames) == 6
            reasons = a.libp2p_stats.rejected_by_reason
            assert reasons["transfer:unknown_codec"] == 2 and reasons["transfer:undecodable"] == 1
            assert list(a.banned_peers()) == [b.peer_id]
            assert_nothing_received(a)

    run(main)


# --- penalties --------------------------------------------------------------------------------------


def corrupted_transfer() -> list[bytes]:
    wrong = hashlib.sha256(b"another body").digest()
    return transfer("model_update", 1, codec.encode(model(1, 1000)), digest=wrong)


def test_a_peer_that_keeps_sending_bad_transfers_is_banned_and_cut_off():
    async def main():
        async with AsyncExitStack() as stack:
            three = {"penalties": PenaltyConfig(offences=3, ban_seconds=60)}
            a, b = await connected_pair(stack, a_kwargs=three)
            c = await stack.enter_async_context(node(bootstrap=a.addrs))
            assert await next_event(c, PeerConnected) == PeerConnected(a.peer_id)
            for _ in range(3):
                assert await raw_transfer(b, a.peer_id, corrupted_transfer()) == 5  # hash_mismatch
            assert await next_event(a, PeerDisconnected) == PeerDisconnected(b.peer_id)
            assert a.libp2p_stats.peers_banned == 1
            assert list(a.banned_peers()) == [b.peer_id] and 0 < a.banned_peers()[b.peer_id] <= 60
            # While banned: a connection it opens is closed unannounced, we do not send to it ...
            with suppress(PeerUnreachable):  # refused at once, or accepted and closed
                await b.connect(a.addrs[0], timeout=5)
            with pytest.raises(PeerUnreachable):
                await b.send(a.peer_id, Note("let me in"))
            with pytest.raises(PeerUnreachable, match="banned"):
                await a.send(b.peer_id, Note("no"))
            assert b.peer_id not in a.peers()
            assert a.libp2p_stats.rejected_by_reason["transfer:hash_mismatch"] == 3
            assert_nothing_received(a)
            # ... and an honest peer is still served.
            await c.send(a.peer_id, Note("honest"))
            event = await next_event(a, Received)
            assert event.sender == c.peer_id and event.message == Note("honest")

    run(main)


def test_streams_of_a_banned_peer_are_reset_unread():
    async def main():
        async with AsyncExitStack() as stack:
            a, b = await connected_pair(stack, a_kwargs={"penalties": PenaltyConfig(offences=1)})

            async def keep_connected(peer_id):  # so the stream reset is all that cuts b off
                pass

            a.host.disconnect = keep_connected
            a.penalise(b.peer_id, "test")
            frames = transfer("test_libp2p_note", 0, codec.encode(Note("hello")))
            assert await raw_transfer(b, a.peer_id, frames) is None
            assert a.libp2p_stats.rejected_by_reason["transfer:banned"] == 1
            assert b.peer_id in a.peers()
            assert_nothing_received(a)

    run(main)


def test_a_banned_peer_is_not_redialed_until_its_ban_expires():
    async def main():
        async with AsyncExitStack() as stack:
            b = await stack.enter_async_context(node())
            short = PenaltyConfig(offences=2, ban_seconds=3.0)
            a = await stack.enter_async_context(
                node(bootstrap=b.addrs, bootstrap_backoff=(0.05, 0.2), penalties=short)
            )
            await next_event(a, PeerConnected)
            await next_event(b, PeerConnected)
            a.penalise(b.peer_id, "sent a model of the wrong shape")  # as the node would
            assert not a.banned_peers()
            a.penalise(b.peer_id, "sent a model of the wrong shape")
            assert list(a.banned_peers()) == [b.peer_id]
            assert await next_event(b, PeerDisconnected) == PeerDisconnected(a.peer_id)
            # Any dial of a's host is refused while the ban lasts, not only a's sends: libp2p's own
            # (pubsub redials a peer it was registering), bootstrap's, discovery's.
            with pytest.raises(Exception, match="banned"):
                await a.host.connect(info_from_p2p_addr(multiaddr.Multiaddr(b.addrs[0])))
            assert b.peer_id in a.banned_peers()
            assert_no_event(b, PeerConnected)
            # Once the ban ends, a's bootstrap loop dials b again and they talk.
            assert await next_event(a, PeerConnected, timeout=15) == PeerConnected(b.peer_id)
            assert a.banned_peers() == {}
            await a.send(b.peer_id, Note("welcome back"))
            assert (await next_event(b, Received)).message == Note("welcome back")

    run(main)


def test_refusals_that_are_not_the_senders_fault_are_not_charged():
    async def main():
        async with AsyncExitStack() as stack:
            strict = PenaltyConfig(offences=1)  # any charge would ban at once
            refuse_stale = lambda sender, header: header.round >= 3  # noqa: E731
            a, b = await connected_pair(
                stack,
                a_kwargs={"penalties": strict, "max_pending_models": 1, "accept_transfer": refuse_stale},
            )
            await b.send(a.peer_id, Note("one", round=3))  # fills a's only slot
            for _ in range(3):
                with pytest.raises(TransferRejected, match="busy"):
                    await b.send(a.peer_id, Note("two", round=3))
            with pytest.raises(TransferRejected, match="refused"):
                await b.send(a.peer_id, Note("stale", round=2))
            assert a.libp2p_stats.rejected_by_reason["transfer:busy"] == 3
            assert a.banned_peers() == {} and a.libp2p_stats.peers_banned == 0
            assert (await next_event(a, Received)).message.text == "one"
            await b.send(a.peer_id, Note("three", round=3))
            assert (await next_event(a, Received)).message.text == "three"

    run(main)


def test_a_closed_transport_leaves_no_thread_behind():
    """py-libp2p's Pubsub starts a thread (its seen-messages cache's sweeper) and never stops it:
    every transport opened and closed (a NodeThread started and stopped) left one more running."""

    def sweepers():
        return [t for t in threading.enumerate() if "_background_cleanup" in t.name]

    before = len(sweepers())

    async def main():
        for _ in range(3):
            async with node():
                pass

    run(main)
    assert len(sweepers()) == before
