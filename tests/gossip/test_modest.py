import logging

import numpy as np
import pytest
import trio
import trio.testing
from scalar_learning import ScalarLearning
from wrapped_transport import Wrapped

from gossip.membership import MemberList, ViewEntry
from gossip.modest import MembershipUpdate, Modest, ModestModel
from gossip.modest_settings import ModestSettings
from gossip.ping import Ping, Pong
from gossip.sampling import sample_order
from transport import codec
from transport.base import Received, Transport
from transport.errors import PeerUnreachable
from transport.memory import open_memory_network
from transport.messages import ModelPayload

STALL = 10.0  # what a write to a peer that never reads takes to fail on the libp2p transport


class SlowSends(Wrapped):
    """The memory transport with sends that take time, as libp2p's do (a send returns once the peer
    has the message): `seconds` each, and to a `frozen` peer, anything but a ping or its answer
    fails only after `STALL` s: a peer that froze after a sample picked it. With `pings_too`, pings
    and pongs to it stall as well: a peer that asked something and then stopped reading.
    """

    def __init__(
        self,
        inner: Transport,
        *,
        seconds: float = 0.0,
        frozen: frozenset[str] = frozenset(),
        pings_too: bool = False,
    ):
        super().__init__(inner)
        self.seconds, self.frozen, self.pings_too = seconds, frozen, pings_too
        self.stalled = []  # (peer, message type, when the send failed or was given up)

    async def send(self, peer, message) -> None:
        if peer in self.frozen and (self.pings_too or not isinstance(message, Ping | Pong)):
            try:
                await trio.sleep(STALL)
            finally:
                self.stalled.append((peer, type(message).__name__, trio.current_time()))
            raise PeerUnreachable(f"{peer}: write timed out after {STALL} s")
        await trio.sleep(self.seconds)
        await self.inner.send(peer, message)


def run_modest(
    n: int,
    rounds: int,
    settings: ModestSettings,
    *,
    crash: dict[str, float] | None = None,
    leave: dict[str, float] | None = None,
    join: dict[str, float] | None = None,
    frozen: frozenset[str] = frozenset(),
    until: float = 1_000.0,
    learning=lambda peer: ScalarLearning(0.0, peer_id=peer, step=1.0),
):
    """Run MoDeST on `n` peers (plus `join`ers, started late) with scalar models that gain 1 per training.

    `crash` and `leave` map a peer to the virtual time it stops: crashed peers vanish silently,
    leaving ones stop gracefully. What is sent to `frozen` peers stalls (`SlowSends`). The run ends
    when a node finished round `rounds` or at `until`. `learning(peer)` makes a peer's learning side.
    """
    founders = [f"p{i:02d}" for i in range(n)]
    everyone = founders + sorted(join or {})
    learnings = {p: learning(p) for p in everyone}
    protocol = Modest(rounds=rounds, participants=tuple(founders), settings=settings)

    async def main():
        async with open_memory_network(latency=0.01, dial_any=True) as net:
            transports = {p: net.add_peer(p) for p in everyone}
            if frozen:
                transports = {p: SlowSends(t, frozen=frozen) for p, t in transports.items()}
            scopes = {p: trio.CancelScope() for p in everyone}

            async def node(peer, start):
                await trio.sleep(start)
                with scopes[peer]:
                    await protocol.run(transports[peer], learnings[peer])

            async def stop(peer, at, crashed):
                await trio.sleep(at)
                if crashed:
                    net.crash(peer)
                scopes[peer].cancel()

            async with trio.open_nursery() as nursery:
                for peer in everyone:
                    nursery.start_soon(node, peer, (join or {}).get(peer, 0.0))
                for peer, at in (crash or {}).items():
                    nursery.start_soon(stop, peer, at, True)
                for peer, at in (leave or {}).items():
                    nursery.start_soon(stop, peer, at, False)
                with trio.move_on_after(until):
                    while not any(r == rounds for lr in learnings.values() for r, _ in lr.finished):
                        await trio.sleep(0.5)
                nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return learnings


def finishers(learnings, round_):
    return sorted(p for p, lr in learnings.items() if any(r == round_ for r, _ in lr.finished))


def test_each_round_is_trained_by_s_nodes_and_adopted_by_the_next_sample():
    settings = ModestSettings(s=3, a=1)
    learnings = run_modest(10, 6, settings)
    for round_ in range(1, 7):
        assert len(finishers(learnings, round_)) == 3
    # every node trained the shared model once per round it was in: the aggregate of round r is r
    for lr in learnings.values():
        for round_, _ in lr.finished:
            assert round_ >= 1
    assert all(lr.value == 6.0 for p, lr in learnings.items() if p in finishers(learnings, 6))
    assert sum(lr.trained for lr in learnings.values()) == 3 * 6


def test_the_sample_is_the_hash_order_of_the_view():
    peers = [f"p{i:02d}" for i in range(10)]
    learnings = run_modest(10, 4, ModestSettings(s=3, a=1))
    for round_ in range(1, 5):
        assert finishers(learnings, round_) == sorted(sample_order(peers, round_ + 1)[:3])


def test_aggregators_merge_exactly_the_models_of_their_round():
    learnings = run_modest(12, 5, ModestSettings(s=4, a=1))
    merges = [senders for lr in learnings.values() for senders in lr.merged_senders]
    assert len(merges) == 5
    assert all(len(senders) == 4 for senders in merges)


def test_a_crashed_aggregator_does_not_stall_the_round_when_a_is_two():
    peers = [f"p{i:02d}" for i in range(10)]
    settings = ModestSettings(s=3, a=2, ping_timeout=2.0)
    # The first aggregator of round 3's models is first in order(4); crash it while round 3 trains.
    victim = sample_order(peers, 4)[0]
    learnings = run_modest(10, 8, settings, crash={victim: 0.3})
    assert finishers(learnings, 8), "the run stalled"
    assert victim not in finishers(learnings, 3)


def test_a_crashed_trainer_does_not_stall_the_round_with_an_aggregation_timeout():
    peers = [f"p{i:02d}" for i in range(10)]
    settings = ModestSettings(s=3, a=1, aggregation_timeout=3.0, min_models=1)
    victim = sample_order(peers, 2)[1]  # a trainer of round 2: it crashes after answering its ping
    learnings = run_modest(10, 6, settings, crash={victim: 0.2})
    assert finishers(learnings, 6), "the run stalled"
    assert learnings[victim].finished == [(1, pytest.approx(learnings[victim].finished[0][1]))]


def test_without_timeout_or_spare_a_crashed_trainer_stalls_the_round():
    """The reference defaults (sf=1, a=1, no timeout) really do stall: what the options are for."""
    peers = [f"p{i:02d}" for i in range(10)]
    victim = sample_order(peers, 2)[1]
    learnings = run_modest(10, 6, ModestSettings(s=3, a=1), crash={victim: 0.2}, until=200.0)
    assert not finishers(learnings, 2)


class StepsInAThread(ScalarLearning):
    """Training that runs on for `seconds` when cancelled, as a step in a worker thread does (trio
    waits for the thread). `overlaps` counts trainings and adoptions begun while a training runs."""

    def __init__(self, peer_id: str, seconds: float) -> None:
        super().__init__(0.0, peer_id, step=1.0)
        self.seconds, self.running, self.overlaps, self.adopted = seconds, 0, 0, 0

    async def train(self) -> None:
        self.overlaps += self.running > 0
        self.running += 1
        try:
            with trio.CancelScope(shield=True):
                await trio.sleep(self.seconds)
            self.trained += 1
            self.value += self.step
        finally:
            self.running -= 1

    async def adopt(self, sender, model) -> bool:
        self.overlaps += self.running > 0
        self.adopted += 1
        return await super().adopt(sender, model)


def test_a_newer_aggregate_waits_for_the_pre_empted_training_to_let_go_of_the_model():
    peers = [f"p{i:02d}" for i in range(10)]
    slow = sample_order(peers, 2)[1]  # trains for 5 s: later aggregates reach it meanwhile
    settings = ModestSettings(s=3, a=1, aggregation_timeout=3.0, min_models=1)
    learnings = run_modest(
        10, 8, settings, learning=lambda peer: StepsInAThread(peer, 5.0 if peer == slow else 0.1)
    )
    assert finishers(learnings, 8), "the run stalled"
    assert learnings[slow].adopted, "no newer aggregate reached the slow node: the test shows nothing"
    assert [lr.overlaps for lr in learnings.values()] == [0] * 10


def test_most_nodes_crashing_does_not_stop_training():
    peers = [f"p{i:02d}" for i in range(20)]
    crashed = {p: 1.05 for p in peers[4:]}  # 80% gone at once
    settings = ModestSettings(s=3, a=1, ping_timeout=1.0, aggregation_timeout=2.0)
    learnings = run_modest(20, 10, settings, crash=crashed, until=2_000.0)
    assert finishers(learnings, 10)
    assert set(finishers(learnings, 10)) <= set(peers[:4])


def test_a_joining_node_gets_sampled_and_a_leaving_node_does_not():
    settings = ModestSettings(s=3, a=1, ping_timeout=1.0, aggregation_timeout=2.0)
    learnings = run_modest(6, 40, settings, join={"q-new": 1.0}, leave={"p00": 1.0})
    assert learnings["q-new"].trained > 0
    assert all(time < 1.0 for _, time in learnings["p00"].finished)
    # Once its leave has spread nobody waits on it; a crash costs a ping timeout whenever it is drawn.
    crashed = run_modest(6, 40, settings, join={"q-new": 1.0}, crash={"p00": 1.0})

    def end(runs):
        return max(time for lr in runs.values() for r, time in lr.finished if r == 40)

    assert end(learnings) < end(crashed) - 3 * settings.ping_timeout


def test_a_message_with_a_bad_view_is_dropped_and_the_node_keeps_serving():
    bad = ModestModel(1, True, ModelPayload({"x": np.array([99.0])}, 1.0), [ViewEntry("x", -1, 0, 0)], b"")
    learning = ScalarLearning(0.0, peer_id="a")

    async def main():
        async with open_memory_network(dial_any=True) as net:
            a, b = net.add_peer("a"), net.add_peer("b")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    Modest(rounds=3, participants=("a",), settings=ModestSettings(s=1)).run, a, learning
                )
                await trio.sleep(0.05)
                await b.send("a", bad)
                await trio.sleep(1.0)
                nursery.cancel_scope.cancel()
            return a.stats.messages_rejected

    rejected = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert rejected == 1
    assert 99.0 not in [v for _, v in learning.finished]
    assert learning.trained >= 3  # alone, it keeps running its own rounds


@pytest.mark.parametrize(
    "msg",
    [
        ModestModel(
            3, False, ModelPayload({"w": np.zeros(2, np.float32)}, 2.0), [ViewEntry("p", 1, 2, 0)], b"\x01"
        ),
        MembershipUpdate([ViewEntry("p", 1, 2, 1), ViewEntry("q", 0, 0, 0)], reply=True, base=b""),
    ],
)
def test_messages_round_trip(msg):
    decoded = codec.decode(codec.encode(msg))
    assert type(decoded) is type(msg)
    assert decoded.view == msg.view


@pytest.mark.parametrize("round_timeout", [None, 2.0])
def test_a_round_timeout_recovers_from_the_only_aggregator_crashing(round_timeout):
    peers = [f"p{i:02d}" for i in range(10)]
    # The aggregator of round 3 crashes at 0.47 s: its trainers finished (0.1 s of training from
    # 0.33 s) and sent, so it holds the models of round 3 and nobody else does.
    victim = sample_order(peers, 4)[0]
    settings = ModestSettings(s=3, a=1, ping_timeout=1.0, round_timeout=round_timeout)
    learnings = run_modest(10, 8, settings, crash={victim: 0.47}, until=300.0)
    if round_timeout is None:
        assert not finishers(learnings, 3), "the round should stall with its only aggregator gone"
    else:
        assert finishers(learnings, 8)
        assert victim not in finishers(learnings, 3)


@pytest.mark.parametrize("rounds", range(1, 9))
def test_every_node_of_the_last_sample_gets_the_final_aggregate(rounds):
    """The aggregator adopting the final aggregate ends its run: it must have sent the rest first.

    Sends here take time before the message is on its way, as on a real network, so cancelling a
    sender loses what it had not sent.
    """

    async def main():
        peers = [f"p{i:02d}" for i in range(8)]
        learnings = {p: ScalarLearning(0.0, peer_id=p, step=1.0) for p in peers}
        protocol = Modest(rounds=rounds, participants=tuple(peers), settings=ModestSettings(s=3, a=1))
        async with open_memory_network(latency=0.01, dial_any=True) as net:
            transports = {p: SlowSends(net.add_peer(p), seconds=0.05) for p in peers}
            async with trio.open_nursery() as nursery:
                for p in peers:
                    nursery.start_soon(protocol.run, transports[p], learnings[p])
                await trio.sleep(50)
                nursery.cancel_scope.cancel()
        return learnings

    learnings = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(finishers(learnings, rounds)) == 3


@pytest.mark.parametrize(
    ("a", "frozen_at"),
    [
        (1, 1),  # the aggregate: the frozen peer comes before the third of Sample(2) and the aggregator
        (2, 0),  # the trained models: the frozen peer is the first aggregator, before the second
    ],
    ids=["aggregate", "trained-models"],
)
def test_a_frozen_peer_holds_up_no_other_peer_of_a_fan_out(a, frozen_at):
    """A peer of Sample(2) that answered its ping but reads no model costs the others nothing: they
    record round 1 at the very instants they do when nobody is frozen, not a send's stall later."""
    peers = [f"p{i:02d}" for i in range(10)]
    sample = sample_order(peers, 2)[:3]  # Sample(2): adopts round 1; its first `a` aggregate it
    frozen = sample[frozen_at]
    settings = ModestSettings(s=3, a=a, aggregation_timeout=2.0, min_models=1)

    def round_one(learnings):
        return {p: t for p in sample for r, t in learnings[p].finished if r == 1}

    unhindered = round_one(run_modest(10, 4, settings, until=100.0))
    hindered = round_one(run_modest(10, 4, settings, frozen=frozenset({frozen}), until=100.0))
    assert unhindered.keys() == set(sample)
    assert frozen not in hindered  # the freeze bites: it never got round 1's aggregate
    others = {p: t for p, t in unhindered.items() if p != frozen}
    assert hindered == others
    assert max(others.values()) < STALL


def test_a_trainer_gives_up_a_copy_stuck_on_a_frozen_aggregator_when_its_round_times_out(caplog):
    """It re-sends every `round_timeout` (to the same aggregator: it still answers pings), not every
    send's stall plus `round_timeout`: it sends at about 0.1 s, so by 9 s it has given up 4 times."""
    peers = [f"p{i:02d}" for i in range(10)]
    frozen = sample_order(peers, 2)[0]  # the aggregator of round 1
    trainers = set(sample_order(peers, 1)[:3]) - {frozen}
    settings = ModestSettings(s=3, a=1, round_timeout=2.0)
    with caplog.at_level(logging.INFO):
        learnings = run_modest(10, 2, settings, frozen=frozenset({frozen}), until=9.0)
    assert not finishers(learnings, 1)
    assert caplog.text.count("gave up sending round 1 model at its deadline") == 4 * len(trainers)


def test_a_leave_reaches_the_peers_after_a_frozen_one_within_the_leave_deadline():
    """The leave goes to the first `join_fanout` = 3 reachable peers of order(0) at once: the frozen
    first one holds up its own send past the 1 s the leave has in all, not the next two."""
    peers = [f"p{i:02d}" for i in range(6)]
    frozen, *after = sample_order(peers[1:], 0)  # p00 leaves before it adopts any round
    protocol = Modest(rounds=5, participants=tuple(peers), settings=ModestSettings(s=3))

    async def main():
        async with open_memory_network(latency=0.01, dial_any=True) as net:
            leaver = SlowSends(net.add_peer("p00"), frozen=frozenset({frozen}))
            told = {}

            async def listen(transport):
                async for event in transport.events:
                    if isinstance(event, Received) and isinstance(event.message, MembershipUpdate):
                        told[transport.peer_id] = trio.current_time()

            async with trio.open_nursery() as nursery:
                for peer in peers[1:]:
                    nursery.start_soon(listen, net.add_peer(peer))
                with trio.move_on_after(0.5):
                    await protocol.run(leaver, ScalarLearning(0.0, peer_id="p00"))
                await trio.sleep(STALL)
                nursery.cancel_scope.cancel()
        return told

    told = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert told == {after[0]: pytest.approx(0.51), after[1]: pytest.approx(0.51)}


def test_views_travel_as_differences_and_a_node_with_another_member_list_gets_the_whole_view():
    """`a` started from members {a, b, x}; `b` from {a, b}: the digests differ, so `a` sends its whole
    view once, and answers `b`'s whole view with its own whole view."""
    learning = ScalarLearning(0.0, peer_id="a")
    settings = ModestSettings(s=1, ping_timeout=0.5)
    protocol = Modest(rounds=50, participants=("a", "b", "x"), settings=settings)
    other_list = MemberList.of(["a", "b"]).digest
    model = ModelPayload({"x": np.array([1.0])}, 1.0)

    async def main():
        async with open_memory_network(dial_any=True) as net:
            a, b = net.add_peer("a"), net.add_peer("b")
            got = []

            async def listen():
                async for event in b.events:
                    if isinstance(getattr(event, "message", None), MembershipUpdate):
                        got.append(event.message)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(protocol.run, a, learning)
                nursery.start_soon(listen)
                await trio.sleep(0.05)
                for _ in range(2):  # asked once, however many messages come
                    await b.send("a", ModestModel(1, False, model, [ViewEntry("b", 1, 1, 0)], other_list))
                await trio.sleep(0.05)
                await b.send("a", MembershipUpdate([ViewEntry("b", 1, 1, 0)], reply=True, base=b""))
                await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
            return got

    got = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [(m.reply, m.base) for m in got] == [(True, b""), (False, b"")]
    assert all({"a", "b", "x"} <= {e.peer for e in m.view} for m in got)


def test_a_model_message_carries_only_what_differs_from_the_member_list():
    sent = []
    members = tuple(f"p{i:02d}" for i in range(40))
    protocol = Modest(rounds=2, participants=members, settings=ModestSettings(s=2))

    async def main():
        async with open_memory_network(latency=0.01, dial_any=True) as net:
            transports = {p: net.add_peer(p) for p in protocol.participants}
            for transport in transports.values():
                send = transport.send

                async def recording_send(peer, message, send=send):
                    sent.append(message)
                    await send(peer, message)

                transport.send = recording_send
            learnings = {p: ScalarLearning(0.0, peer_id=p, step=1.0) for p in transports}
            with trio.move_on_after(100):
                async with trio.open_nursery() as nursery:
                    for p, t in transports.items():
                        nursery.start_soon(protocol.run, t, learnings[p])
                    while not any(r == 2 for lr in learnings.values() for r, _ in lr.finished):
                        await trio.sleep(0.5)
                    nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    models = [m for m in sent if isinstance(m, ModestModel)]
    assert models and all(m.base and len(m.view) < 10 for m in models)  # not 40 entries each


def test_with_a_start_depth_only_the_head_of_order_one_pings_at_the_start():
    """Every node checks Sample(1) by pinging the first s: N x s pings. With start_depth, nodes
    further down wait; round 1 is trained by the same nodes, with far fewer messages."""
    founders = tuple(f"p{i:02d}" for i in range(40))

    def first_round(depth):
        protocol = Modest(rounds=5, participants=founders, settings=ModestSettings(s=3, start_depth=depth))
        learnings = {p: ScalarLearning(0.0, peer_id=p, step=1.0) for p in founders}

        async def main():
            async with open_memory_network(latency=0.01, dial_any=True) as net:
                transports = {p: net.add_peer(p) for p in founders}
                async with trio.open_nursery() as nursery:
                    for p in founders:
                        nursery.start_soon(protocol.run, transports[p], learnings[p])
                    while not finishers(learnings, 1):
                        await trio.sleep(0.05)
                    nursery.cancel_scope.cancel()
                return sum(t.stats.messages_sent for t in transports.values())

        messages = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        return finishers(learnings, 1), messages

    everyone, everyone_messages = first_round(None)
    head, head_messages = first_round(3)
    assert head == everyone and len(head) == 3
    # What the 37 nodes past the head no longer send and get: a ping to each of the first 3, answered.
    assert everyone_messages - head_messages == 2 * 3 * (len(founders) - 3)


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        (Ping(1), "Pong"),
        (MembershipUpdate([ViewEntry("f", 0, 1, 0)], reply=True, base=b""), "MembershipUpdate"),
    ],
    ids=["ping", "join-advert"],
)
def test_a_peer_that_asks_and_stops_reading_holds_up_no_other_event(question, answer):
    """`f` asks node `a` something that wants an answer, then reads nothing: the answer stalls, as a
    libp2p send to it would. Meanwhile `b` pings `a` and sends it round 1's aggregate: `a` answers
    and adopts at once, not a send's stall later, and gives up its answer to `f` after ping_timeout.
    """
    settings = ModestSettings(s=3, ping_timeout=2.0)
    learning = ScalarLearning(0.0, peer_id="a", step=1.0)
    aggregate = ModestModel(1, True, ModelPayload({"x": np.array([5.0])}, 1.0), [], b"")
    # `a` joins a deployment of `b` alone: it trains only once a sample picks it, so the test drives it.
    protocol = Modest(rounds=9, participants=("b",), settings=settings, leave_on_stop=False)

    async def main():
        async with open_memory_network(latency=0.01, dial_any=True) as net:
            a = SlowSends(net.add_peer("a"), frozen=frozenset({"f"}), pings_too=True)
            b, f = net.add_peer("b"), net.add_peer("f")
            pongs = []

            async def listen():
                async for event in b.events:
                    if isinstance(event, Received) and isinstance(event.message, Pong):
                        pongs.append((event.message.nonce, trio.current_time()))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(protocol.run, a, learning)
                nursery.start_soon(listen)
                await trio.sleep(0.05)
                await f.send("a", question)  # arrives at 0.06
                await trio.sleep(0.05)
                await b.send("a", Ping(7))  # arrives at 0.11
                await b.send("a", aggregate)
                await trio.sleep(STALL + 1)
                nursery.cancel_scope.cancel()
            return pongs, a.stalled

    pongs, stalled = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert pongs == [(7, pytest.approx(0.12))]
    assert learning.finished == [(1, pytest.approx(0.11))]
    assert [(peer, at) for peer, kind, at in stalled if kind == answer] == [("f", pytest.approx(2.06))]
