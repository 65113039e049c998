"""`Outbox`: sends the caller does not wait for, one queue per peer, each message under a deadline.

All in virtual time (trio's MockClock), so the instants asserted are exact and cost no wall time.
"""

import logging
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from wrapped_transport import Wrapped

from transport.base import Received, Transport
from transport.codec import message
from transport.errors import PeerUnreachable
from transport.memory import open_memory_network
from transport.outbox import Outbox


@message("test_outbox_note", version=1)
@dataclass(frozen=True, slots=True)
class Note:
    text: str


class Blocking(Wrapped):
    """The memory transport with sends that wait on the peer, as libp2p's do: `seconds` each, and a
    send to a `frozen` peer never ends by itself (only a deadline ends it)."""

    def __init__(self, inner: Transport, *, seconds: float = 0.0, frozen: frozenset[str] = frozenset()):
        super().__init__(inner)
        self.seconds, self.frozen = seconds, frozen
        self.started = []  # (peer, message, when its send began)

    async def send(self, peer, message) -> None:
        self.started.append((peer, message, trio.current_time()))
        if peer in self.frozen:
            await trio.sleep_forever()
        await trio.sleep(self.seconds)
        await self.inner.send(peer, message)


def virtual(main):
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def arrivals(transport, into):
    async for event in transport.events:
        if isinstance(event, Received):
            into.append((event.message.text, trio.current_time()))


def test_with_a_send_that_never_blocks_it_sends_at_once_in_the_callers_task():
    async def main():
        async with open_memory_network(latency=0.01, dial_any=True) as net:
            a, b = net.add_peer("a"), net.add_peer("b")
            got = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(arrivals, b, got)
                async with trio.open_nursery() as own:
                    outbox = Outbox(a, own)
                    await outbox.send("b", Note("m1"), timeout=1.0)
                    assert net.messages_sent() == 1  # on its way already
                    assert not own.child_tasks and outbox.pending("b") == 0
                    await outbox.send("nobody", Note("m2"), timeout=1.0)  # logged, not raised
                await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
            return got

    assert virtual(main) == [("m1", pytest.approx(0.01))]


def test_a_peer_that_never_reads_holds_up_only_its_own_queue(caplog):
    """Two messages for frozen `f` and one each for `b` and `c`: `b` and `c` get theirs at once;
    `f`'s go one at a time, each given up at its own deadline (the second expired while the first
    was being sent, so it is never started)."""

    async def main():
        async with open_memory_network(latency=0.01, dial_any=True) as net:
            a = Blocking(net.add_peer("a"), seconds=0.1, frozen=frozenset({"f"}))
            b, c, _ = net.add_peer("b"), net.add_peer("c"), net.add_peer("f")
            got = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(arrivals, b, got)
                nursery.start_soon(arrivals, c, got)
                async with trio.open_nursery() as own:
                    outbox = Outbox(a, own)
                    await outbox.send("f", Note("f1"), timeout=2.0)
                    await outbox.send("f", Note("f2"), timeout=1.0)
                    await outbox.send("b", Note("b1"), timeout=2.0)
                    await outbox.send("c", Note("c1"), timeout=2.0)
                    assert trio.current_time() == 0  # nothing waited
                    assert outbox.pending("f") == 2
                    await trio.sleep(1.0)
                    await outbox.send("b", Note("b2"), timeout=2.0)
                # every queue is drained and forgotten once its last message is sent or given up
                assert trio.current_time() == pytest.approx(2.0)
                assert outbox.pending("f") == outbox.pending("b") == 0
                nursery.cancel_scope.cancel()
            return got, [(peer, msg.text, at) for peer, msg, at in a.started]

    with caplog.at_level(logging.INFO, logger="transport.outbox"):
        got, started = virtual(main)
    assert sorted(got) == [
        ("b1", pytest.approx(0.11)),
        ("b2", pytest.approx(1.11)),
        ("c1", pytest.approx(0.11)),
    ]
    assert [s for s in started if s[0] == "f"] == [("f", "f1", 0)]
    assert caplog.text.count("gave up sending Note to f at its deadline") == 2


def test_a_queue_holds_at_most_max_queued_messages():
    async def main():
        async with open_memory_network(dial_any=True) as net:
            a = Blocking(net.add_peer("a"), frozen=frozenset({"f"}))
            net.add_peer("f")
            async with trio.open_nursery() as own:
                outbox = Outbox(a, own, max_queued=3)
                for i in range(5):
                    await outbox.send("f", Note(f"f{i}"), timeout=1.0)
                assert outbox.pending("f") == 3
                own.cancel_scope.cancel()
            assert outbox.pending("f") == 0

    virtual(main)


def test_an_unreachable_peer_is_logged_and_the_queue_goes_on(caplog):
    class Refuses(Blocking):
        async def send(self, peer, message) -> None:
            if message.text == "x1":
                raise PeerUnreachable("gone")
            await super().send(peer, message)

    async def main():
        async with open_memory_network(latency=0.01, dial_any=True) as net:
            a = Refuses(net.add_peer("a"))
            b = net.add_peer("b")
            got = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(arrivals, b, got)
                async with trio.open_nursery() as own:
                    outbox = Outbox(a, own)
                    await outbox.send("b", Note("x1"), timeout=1.0)
                    await outbox.send("b", Note("x2"), timeout=1.0)
                await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
            return got

    with caplog.at_level(logging.INFO):
        assert virtual(main) == [("x2", pytest.approx(0.01))]
    assert "could not send Note to b: gone" in caplog.text


def test_max_queued_must_be_positive():
    async def main():
        async with open_memory_network() as net, trio.open_nursery() as nursery:
            with pytest.raises(ValueError, match="max_queued"):
                Outbox(net.add_peer("a"), nursery, max_queued=0)

    virtual(main)
