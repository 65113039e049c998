"""Real libp2p hosts on 127.0.0.1: messaging, events, gossip, refusals and deadlines.

Every host lives inside `open_libp2p_transport`'s block, so each test stops what it starts; each
test body also runs under a deadline, so a hang fails the test instead of the suite.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("libp2p")

import multiaddr
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from transport import codec
from transport.base import PeerConnected, PeerDisconnected, Received
from transport.errors import PeerUnreachable
from transport.framing import frame_prefix
from transport.libp2p import (
    ControlPlaneConfig,
    MessageTooLarge,
    ModelPlaneConfig,
    TransferRejected,
    open_libp2p_transport,
)
from transport.libp2p.model_plane import MODEL_PROTOCOL, TransferHeader, _chunks
from transport.messages import ModelPayload, ModelUpdate

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


async def next_event(transport, kind, *, timeout: float = 5.0):
    """The next event of type `kind`, skipping others (e.g. connection events)."""
    with trio.fail_after(timeout):
        while True:
            event = await transport.events.receive()
            if isinstance(event, kind):
                return event


async def connected_pair(stack: AsyncExitStack, a_kwargs=None, b_kwargs=None):
    a = await stack.enter_async_context(node(**(a_kwargs or {})))
    b = await stack.enter_async_context(node(bootstrap=a.addrs, **(b_kwargs or {})))
    assert await next_event(a, PeerConnected) == PeerConnected(b.peer_id)
    assert await next_event(b, PeerConnected) == PeerConnected(a.peer_id)
    return a, b


def assert_nothing_received(transport):
    with pytest.raises(trio.WouldBlock):
        while True:
            event = transport.events._receive.receive_nowait()[0]
            assert not isinstance(event, Received), event


async def raw_transfer(sender, peer_id: str, frames: list[bytes], *, read_status: bool = True):
    """Write hand-made model-plane bytes to `peer_id`; the status byte back, or None if reset."""
    stream = await sender.host.new_stream(ID.from_base58(peer_id), [MODEL_PROTOCOL])
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
            np.testing.assert_array_equal(event.message.model.tensors["w"], big.model.tensors["w"])
            np.testing.assert_array_equal(event.message.model.tensors["b"], big.model.tensors["b"])
            assert elapsed < 10

            await a.send(b.peer_id, Note("hello", round=1))
            event = await next_event(b, Received)
            assert event.message == Note("hello", round=1) and event.sender == a.peer_id

            encoded = len(codec.encode(big))
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


def test_oversize_headers_are_refused_before_any_allocation():
    async def main():
        async with AsyncExitStack() as stack:
            a, b = await connected_pair(stack)
            huge = TransferHeader("model_update", 1, 2**40, bytes(32)).encode()  # 1 TiB announced
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
            header = TransferHeader("model_update", 1, len(body), digest).encode()
            assert await raw_transfer(b, a.peer_id, [header, bytes(corrupted)]) == 5  # hash_mismatch
            # A well-hashed body that is no message, and one whose header lies about its kind.
            junk = b"\xc1" * 100
            header = TransferHeader("model_update", 1, len(junk), hashlib.sha256(junk).digest()).encode()
            assert await raw_transfer(b, a.peer_id, [header, junk]) == 6  # undecodable
            note = codec.encode(Note("hi"))
            header = TransferHeader("model_update", 1, len(note), hashlib.sha256(note).digest()).encode()
            assert await raw_transfer(b, a.peer_id, [header, note]) == 7  # kind_mismatch
            reasons = a.libp2p_stats.rejected_by_reason
            assert reasons["transfer:hash_mismatch"] == reasons["transfer:undecodable"] == 1
            assert reasons["transfer:kind_mismatch"] == 1
            assert_nothing_received(a)
            # The receiver keeps serving: the next good transfer arrives whole.
            good = model(2, 500_000, seed=1)
            await b.send(a.peer_id, good)
            event = await next_event(a, Received)
            np.testing.assert_array_equal(event.message.model.tensors["w"], good.model.tensors["w"])

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


@pytest.mark.parametrize(("sender_does", "reason"), [("stall", "timeout"), ("reset", "truncated")])
def test_a_sender_that_stops_mid_body_is_cut_off_and_nothing_is_emitted(sender_does, reason):
    async def main():
        async with AsyncExitStack() as stack:
            a, b = await connected_pair(stack)
            body = codec.encode(model(1, 200_000))
            header = TransferHeader("model_update", 1, len(body), hashlib.sha256(body).digest()).encode()
            stream = await b.host.new_stream(ID.from_base58(a.peer_id), [MODEL_PROTOCOL])
            await stream.write(header + body[: len(body) // 2])
            if sender_does == "reset":
                await stream.reset()
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
