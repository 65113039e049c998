"""Gossip learning against a scalar stand-in for the learning side: no torch needed at this layer."""

import pytest
import trio
import trio.testing
from scalar_learning import ScalarLearning

from gossip.gossip_learning import GossipLearning
from transport.memory import open_memory_network


def run_ring(n: int, rounds: int, *, fanout: int = 1, seed: int = 0):
    learnings = [ScalarLearning(float(i)) for i in range(n)]

    async def main():
        async with open_memory_network(latency=0.01) as net:
            transports = [net.add_peer(f"p{i}") for i in range(n)]
            for i in range(n):
                net.connect(f"p{i}", f"p{(i + 1) % n}")
            async with trio.open_nursery() as nursery:
                for i, (t, learning) in enumerate(zip(transports, learnings, strict=True)):
                    protocol = GossipLearning(rounds=rounds, period=1.0, fanout=fanout, seed=seed * 100 + i)
                    nursery.start_soon(protocol.run, t, learning)
        return transports

    transports = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return learnings, transports


def test_models_reach_consensus_on_a_ring():
    learnings, _ = run_ring(8, 40)
    values = [learning.value for learning in learnings]
    assert max(values) - min(values) < 0.05 * 7  # started spread over 0..7
    assert all(learning.trained == 40 for learning in learnings)


def test_each_round_sends_fanout_messages_and_finishes_on_the_period():
    learnings, transports = run_ring(6, 5, fanout=2)
    assert all(t.stats.messages_sent == 10 for t in transports)
    assert sum(t.stats.messages_received for t in transports) == 60
    for learning in learnings:
        assert [r for r, _ in learning.finished] == [1, 2, 3, 4, 5]
        assert [t for _, t in learning.finished] == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])


def test_received_models_are_merged_in_sender_order():
    learnings, _ = run_ring(5, 6, fanout=2)
    for learning in learnings:
        for senders in learning.merged_senders:
            assert senders == sorted(senders)
    assert any(len(s) == 2 for learning in learnings for s in learning.merged_senders)


def test_same_seed_same_trajectory_other_seed_differs():
    def trace(seed):
        learnings, _ = run_ring(7, 10, seed=seed)
        return [learning.value for learning in learnings]

    assert trace(1) == trace(1)
    assert trace(1) != trace(2)


def test_a_node_without_neighbours_keeps_running():
    learning = ScalarLearning(3.0)

    async def main():
        async with open_memory_network() as net:
            await GossipLearning(rounds=3).run(net.add_peer("alone"), learning)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert learning.value == 3.0 and len(learning.finished) == 3


def test_a_resumed_node_runs_from_its_start_round_on_the_period():
    learning = ScalarLearning(3.0)

    async def main():
        async with open_memory_network() as net:
            await GossipLearning(rounds=6, start_round=4).run(net.add_peer("resumed"), learning)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [r for r, _ in learning.finished] == [4, 5, 6]
    assert [t for _, t in learning.finished] == pytest.approx([1.0, 2.0, 3.0])
    assert learning.trained == 3


@pytest.mark.parametrize(
    "kwargs",
    [{"rounds": -1}, {"rounds": 1, "period": 0}, {"rounds": 1, "fanout": 0}, {"rounds": 1, "start_round": 0}],
)
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        GossipLearning(**kwargs)
