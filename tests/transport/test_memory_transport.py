import numpy as np
import pytest
import trio
import trio.testing

from transport.base import PeerConnected, PeerDisconnected, Received
from transport.errors import PeerUnreachable
from transport.memory import open_memory_network
from transport.messages import ModelPayload, ModelUpdate


def run_virtual(fn):
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def update(round_=1):
    return ModelUpdate(
        round=round_, model=ModelPayload({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, 2.0)
    )


def test_send_delivers_after_latency_and_counts_wire_bytes():
    async def main():
        async with open_memory_network(latency=0.25) as net:
            a, b = net.add_peer("a"), net.add_peer("b")
            net.connect("a", "b")
            assert await a.events.receive() == PeerConnected("b")
            assert await b.events.receive() == PeerConnected("a")
            start = trio.current_time()
            await a.send("b", update(3))
            event = await b.events.receive()
            assert trio.current_time() - start == pytest.approx(0.25)
            assert isinstance(event, Received) and event.sender == "a" and event.topic is None
            assert event.message.round == 3
            np.testing.assert_array_equal(event.message.model.tensors["w"], update().model.tensors["w"])
            assert a.stats.messages_sent == 1 and b.stats.messages_received == 1
            assert a.stats.bytes_sent == b.stats.bytes_received > 24  # at least the tensor's bytes

    run_virtual(main)


def test_send_to_unconnected_peer_raises_and_disconnect_notifies_both_ends():
    async def main():
        async with open_memory_network() as net:
            a, b = net.add_peer("a"), net.add_peer("b")
            with pytest.raises(PeerUnreachable):
                await a.send("b", update())
            net.connect("a", "b")
            assert a.peers() == {"b"} and b.peers() == {"a"}
            net.disconnect("a", "b")
            assert a.peers() == frozenset() and b.peers() == frozenset()
            assert [await a.events.receive() for _ in range(2)] == [PeerConnected("b"), PeerDisconnected("b")]
            assert [await b.events.receive() for _ in range(2)] == [PeerConnected("a"), PeerDisconnected("a")]
            with pytest.raises(PeerUnreachable):
                await a.send("b", update())

    run_virtual(main)


def test_message_in_flight_is_lost_when_the_link_goes_down():
    async def main():
        async with open_memory_network(latency=1.0) as net:
            a, b = net.add_peer("a"), net.add_peer("b")
            net.connect("a", "b")
            await a.send("b", update())
            net.disconnect("a", "b")
            await trio.sleep(2)
            events = []
            while True:
                try:
                    events.append(b.events.receive_nowait())
                except trio.WouldBlock:
                    break
            assert not any(isinstance(e, Received) for e in events)
            assert b.stats.messages_received == 0

    run_virtual(main)


def test_publish_reaches_subscribers_only():
    async def main():
        async with open_memory_network() as net:
            a, b, c = (net.add_peer(p) for p in "abc")
            await b.subscribe("rounds")
            await a.publish("rounds", update(7))
            event = await b.events.receive()
            assert event.topic == "rounds" and event.sender == "a" and event.message.round == 7
            with pytest.raises(trio.WouldBlock):
                c.events.receive_nowait()
            assert a.stats.messages_sent == 1

    run_virtual(main)


def test_undecodable_frame_is_counted_and_dropped():
    async def main():
        async with open_memory_network() as net:
            net.add_peer("a")
            b = net.add_peer("b")
            net.connect("a", "b")
            await b.events.receive()
            b._accept("a", b"\xc1 not msgpack", None)
            assert b.stats.messages_rejected == 1 and b.stats.messages_received == 0
            with pytest.raises(trio.WouldBlock):
                b.events.receive_nowait()

    run_virtual(main)


def test_duplicate_peer_and_negative_latency_are_errors():
    async def main():
        async with open_memory_network() as net:
            net.add_peer("a")
            with pytest.raises(ValueError, match="already exists"):
                net.add_peer("a")
        with pytest.raises(ValueError, match="latency"):
            async with open_memory_network(latency=-1):
                pass

    run_virtual(main)


def test_dial_any_reaches_unlinked_peers_and_crash_silences_a_peer():
    async def main():
        async with open_memory_network(latency=0.1, dial_any=True) as net:
            a, b, c = net.add_peer("a"), net.add_peer("b"), net.add_peer("c")
            await a.send("b", update(1))  # no link needed
            assert (await b.events.receive()).message.round == 1
            with pytest.raises(PeerUnreachable):
                await a.send("nobody", update(1))
            net.crash("c")
            await a.send("c", update(2))  # a crashed host looks alive to the sender ...
            await c.send("b", update(3))
            await trio.sleep(1.0)
            assert c.stats.messages_received == 0  # ... but nothing arrives, either way
            assert b.stats.messages_received == 1
            with pytest.raises(KeyError):
                net.crash("nobody")

    run_virtual(main)


def test_without_dial_any_only_linked_peers_talk():
    async def main():
        async with open_memory_network() as net:
            a, _ = net.add_peer("a"), net.add_peer("b")
            with pytest.raises(PeerUnreachable):
                await a.send("b", update(1))

    run_virtual(main)


def test_network_bytes_timeline_counts_every_send_at_its_instant():
    async def main():
        async with open_memory_network(dial_any=True) as net:
            a, _ = net.add_peer("a"), net.add_peer("b")
            await trio.sleep(1.0)
            await a.send("b", update(1))
            first = a.stats.bytes_sent
            await trio.sleep(1.0)
            await a.send("b", update(2))
            await a.send("b", update(3))
            assert net.bytes_sent(until=0.5) == 0
            assert net.bytes_sent(until=1.5) == first
            assert net.bytes_sent() == net.bytes_sent(until=2.0) == a.stats.bytes_sent == 3 * first
            assert net.messages_sent(until=1.5) == 1 and net.messages_sent() == 3

    run_virtual(main)
