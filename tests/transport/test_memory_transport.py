import math

import numpy as np
import pytest
import trio
import trio.testing

from transport import codec
from transport.base import PeerConnected, PeerDisconnected, Received
from transport.errors import PeerUnreachable
from transport.links import LinkParams
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


# --- the network model: latency, bandwidth, queuing, loss, partitions ----------------------------


def sized(size: int, round_: int = 1) -> ModelUpdate:
    """A message whose frame is exactly `size` bytes (for 400 <= size < 60000)."""
    overhead = len(codec.encode(_bytes_update(1000, round_))) - 1000
    message = _bytes_update(size - overhead, round_)
    assert len(codec.encode(message)) == size
    return message


def _bytes_update(count: int, round_: int) -> ModelUpdate:
    return ModelUpdate(round=round_, model=ModelPayload({"w": np.zeros(count, dtype=np.uint8)}, 1.0))


def drain(transport) -> list:
    events = []
    while True:
        try:
            events.append(transport.events.receive_nowait())
        except trio.WouldBlock:
            return events


async def arrivals(transport, count: int) -> list[tuple[float, str, int]]:
    """(instant, sender, round) of the next `count` messages `transport` receives."""
    seen = []
    async for event in transport.events:
        if isinstance(event, Received):
            seen.append((trio.current_time(), event.sender, event.message.round))
            if len(seen) == count:
                return seen
    raise AssertionError("events channel closed")


@pytest.mark.parametrize("per_link", [True, False])
def test_arrival_is_latency_plus_size_over_bandwidth(per_link):
    async def main():
        defaults = {} if per_link else {"latency": 0.1, "bandwidth": 1000}
        async with open_memory_network(**defaults) as net:
            a, b = net.add_peer("a"), net.add_peer("b")
            if per_link:
                net.connect("a", "b", latency=0.1, bandwidth=1000)
            else:
                net.connect("a", "b")
            assert net.link("a", "b") == net.link("b", "a") == LinkParams(0.1, 1000, 0.0)
            await trio.sleep(1.0)
            await a.send("b", sized(1000))
            [(at, sender, _)] = await arrivals(b, 1)
            assert sender == "a" and at == pytest.approx(1.0 + 1.1)
            assert a.stats.bytes_sent == b.stats.bytes_received == 1000

    run_virtual(main)


def test_back_to_back_messages_queue_on_the_link_which_then_drains():
    async def main():
        async with open_memory_network(latency=0.1, bandwidth=1000) as net:
            a, b = net.add_peer("a"), net.add_peer("b")
            net.connect("a", "b")
            await a.send("b", sized(1000, round_=1))
            await a.send("b", sized(500, round_=2))
            seen = await arrivals(b, 2)
            assert [r for _, _, r in seen] == [1, 2]
            assert [at for at, _, _ in seen] == pytest.approx([1.1, 1.6])
            await trio.sleep(10.0)  # the link is idle again: no queuing
            start = trio.current_time()
            await a.send("b", sized(1000, round_=3))
            [(at, _, _)] = await arrivals(b, 1)
            assert at - start == pytest.approx(1.1)

    run_virtual(main)


def test_links_and_directions_do_not_queue_on_each_other():
    async def main():
        async with open_memory_network(latency=0.1, bandwidth=1000) as net:
            a, b, c = (net.add_peer(p) for p in "abc")
            net.connect("a", "b")
            net.connect("a", "c")
            for t in (a, b, c):
                drain(t)
            await a.send("b", sized(1000))
            await a.send("c", sized(1000))
            await b.send("a", sized(1000))
            for t in (a, b, c):
                [(at, _, _)] = await arrivals(t, 1)
                assert at == pytest.approx(1.1)

    run_virtual(main)


def test_unlinked_peers_queue_with_the_default_parameters():
    async def main():
        async with open_memory_network(latency=0.5, bandwidth=2000, dial_any=True) as net:
            a, b, c = (net.add_peer(p) for p in "abc")
            net.connect("a", "c", latency=0.0, bandwidth=math.inf)
            await a.send("b", sized(1000, round_=1))
            await a.send("b", sized(1000, round_=2))
            await a.send("c", sized(1000, round_=3))
            assert [at for at, _, _ in await arrivals(c, 1)] == [0.0]
            assert [(at, r) for at, _, r in await arrivals(b, 2)] == [(1.0, 1), (1.5, 2)]

    run_virtual(main)


@pytest.mark.parametrize(("latency", "bandwidth"), [(0.0, None), (0.05, None), (0.01, 3000.0)])
def test_each_link_delivers_in_the_order_sent(latency, bandwidth):
    async def main():
        async with open_memory_network(latency=latency, bandwidth=bandwidth, dial_any=True) as net:
            peers = [net.add_peer(f"p{i}") for i in range(4)]
            net.connect("p0", "p1")

            async def sender(transport, start):
                for i in range(30):
                    for recipient in ("p1", "p2"):
                        # mixed sizes: a big frame followed by a small one must not be overtaken
                        await transport.send(recipient, sized(2000 if i % 3 == 0 else 400, round_=start + i))
                    if i % 7 == 0:
                        await trio.sleep(0.003)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender, peers[0], 0)
                nursery.start_soon(sender, peers[3], 100)
            for recipient in peers[1:3]:
                seen = await arrivals(recipient, 60)
                for origin, start in (("p0", 0), ("p3", 100)):
                    rounds = [r for _, sender, r in seen if sender == origin]
                    assert rounds == list(range(start, start + 30))
                instants = [at for at, _, _ in seen]
                assert instants == sorted(instants)

    run_virtual(main)


def test_loss_drops_a_fraction_close_to_p_deterministically_for_a_seed():
    count, p = 2000, 0.3

    def run(seed, per_link):
        async def main():
            async with open_memory_network(seed=seed, loss=0.0 if per_link else p) as net:
                a, b = net.add_peer("a"), net.add_peer("b")
                net.connect("a", "b", loss=p if per_link else None)
                for i in range(count):
                    await a.send("b", update(i))
                await trio.sleep(1.0)
                rounds = [e.message.round for e in drain(b) if isinstance(e, Received)]
                assert a.stats.messages_sent == count and a.stats.messages_lost == count - len(rounds)
                assert a.stats.bytes_sent == sum(len(codec.encode(update(i))) for i in range(count))
                assert b.stats.messages_received == len(rounds)
                return rounds

        return run_virtual(main)

    first = run(seed=1, per_link=True)
    lost = count - len(first)
    sd = math.sqrt(count * p * (1 - p))
    assert abs(lost - count * p) < 4 * sd
    assert first == sorted(first)  # loss never reorders
    assert run(seed=1, per_link=False) == first  # same seed, same losses
    assert run(seed=2, per_link=True) != first


def test_partition_silences_traffic_between_groups_until_healed():
    async def main():
        async with open_memory_network(latency=0.1, dial_any=True) as net:
            a, b, c, d, e = (net.add_peer(p) for p in "abcde")
            net.connect("a", "c")
            for t in (a, c):
                drain(t)
            net.partition([{"a", "b"}, ["c"]])  # d and e, in no group, are a group together
            assert net.separated("a", "c") and net.separated("c", "d") and not net.separated("d", "e")
            for sender, recipient in ["ab", "ac", "ca", "ad", "de", "ea", "cd"]:
                await net._transports[sender].send(recipient, update(1))
            await trio.sleep(1.0)
            received = {t.peer_id: [ev.sender for ev in drain(t)] for t in (a, b, c, d, e)}
            assert received == {"a": [], "b": ["a"], "c": [], "d": [], "e": ["d"]}
            assert a.peers() == {"c"}  # nobody is told: links stay up, sends succeed
            assert a.stats.messages_lost == 0  # a partition is not random loss

            net.heal()
            await a.send("c", update(2))
            await c.send("a", update(3))
            await d.send("a", update(4))
            await trio.sleep(1.0)
            assert [ev.message.round for ev in drain(c)] == [2]
            assert [ev.message.round for ev in drain(a)] == [3, 4]

    run_virtual(main)


def test_partition_rejects_unknown_and_repeated_peers():
    async def main():
        async with open_memory_network() as net:
            net.add_peer("a")
            net.add_peer("b")
            with pytest.raises(KeyError):
                net.partition([{"a"}, {"nobody"}])
            with pytest.raises(ValueError, match="two groups"):
                net.partition([{"a"}, {"a", "b"}])
            with pytest.raises(TypeError):
                net.partition(["ab"])
            assert not net.separated("a", "b")  # a failed call leaves the network whole

    run_virtual(main)


def test_messages_in_flight_are_dropped_if_the_partition_holds_when_they_arrive():
    async def main():
        async with open_memory_network(latency=1.0) as net:
            a, b = net.add_peer("a"), net.add_peer("b")
            net.connect("a", "b")
            drain(b)
            await a.send("b", update(1))  # arrives at 1.0, inside the partition
            await trio.sleep(0.5)
            net.partition([{"a"}])
            await trio.sleep(1.0)
            net.heal()
            await a.send("b", update(2))  # sent at 1.5, partitioned at 2.0, healed at 2.2
            await trio.sleep(0.5)
            net.partition([{"b"}])
            await trio.sleep(0.2)
            net.heal()
            [(at, _, round_)] = await arrivals(b, 1)
            assert (at, round_) == (pytest.approx(2.5), 2)
            assert drain(b) == []

    run_virtual(main)


def test_message_in_flight_is_lost_when_the_link_is_closed_and_reopened():
    async def main():
        async with open_memory_network(latency=1.0) as net:
            a, b = net.add_peer("a"), net.add_peer("b")
            net.connect("a", "b")
            await a.send("b", update(1))
            net.disconnect("a", "b")
            net.connect("a", "b", latency=0.1)
            await a.send("b", update(2))
            await trio.sleep(2.0)
            assert [ev.message.round for ev in drain(b) if isinstance(ev, Received)] == [2]

    run_virtual(main)


def test_link_parameters_are_checked():
    async def main():
        async with open_memory_network(bandwidth=math.inf) as net:
            assert net.defaults == LinkParams(0.0, None, 0.0)
            net.add_peer("a")
            net.add_peer("b")
            for bad in ({"latency": -0.1}, {"latency": math.nan}, {"bandwidth": 0}, {"loss": 1.5}):
                with pytest.raises(ValueError):
                    net.connect("a", "b", **bad)
            assert net.link("a", "b") is None
        for bad in ({"bandwidth": -1.0}, {"loss": -0.1}):
            with pytest.raises(ValueError):
                async with open_memory_network(**bad):
                    pass

    run_virtual(main)
