import numpy as np
import pytest
import torch
import trio
import trio.testing

from gossip.gossip_learning import GossipLearning
from p2pfl import Learner, Node, VirtualCompute
from p2pfl.datasets import load_digits
from p2pfl.models import mlp
from transport.memory import open_memory_network
from transport.messages import ModelPayload, ModelUpdate


def make_node(transport, rounds=2):
    train, test = load_digits(seed=0)
    learner = Learner(mlp((64, 8, 10), seed=0), train, test, seed=0)
    return Node(
        transport,
        learner,
        protocol=GossipLearning(rounds=rounds),
        local_steps=2,
        compute=VirtualCompute(0.01),
    )


def run_with_peer(payloads):
    """A node runs 2 rounds while a peer sends it `payloads` during round 1."""

    async def main():
        async with open_memory_network(latency=0.01) as net:
            node = make_node(net.add_peer("node"))
            peer = net.add_peer("peer")
            net.connect("node", "peer")

            async def send_all():
                await trio.sleep(0.5)
                for payload in payloads:
                    await peer.send("node", ModelUpdate(round=1, model=payload))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(node.run)
                nursery.start_soon(send_all)
        return node

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def alone():
    async def main():
        async with open_memory_network() as net:
            node = make_node(net.add_peer("node"))
            await node.run()
        return node

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def good_payload():
    return ModelPayload(alone().learner.state().to_numpy(), weight=10.0)


def test_bad_models_are_dropped_and_leave_the_model_untouched():
    reference = alone()
    tensors = good_payload().tensors
    wrong_shape = dict(tensors, **{"0.weight": np.zeros((8, 63), np.float32)})
    wrong_dtype = dict(tensors, **{"0.weight": tensors["0.weight"].astype(np.float64)})
    not_finite = dict(tensors, **{"2.bias": np.full(10, np.nan, np.float32)})
    missing = {k: v for k, v in tensors.items() if k != "2.bias"}
    for bad in (
        ModelPayload(wrong_shape, 1.0),
        ModelPayload(wrong_dtype, 1.0),
        ModelPayload(not_finite, 1.0),
        ModelPayload(missing, 1.0),
        ModelPayload(tensors, -1.0),
        ModelPayload(tensors, float("nan")),
    ):
        node = run_with_peer([bad])
        assert node.models_rejected == 1, bad
        assert torch.equal(node.learner.state().flat, reference.learner.state().flat)
        assert node.status().round == 2


def test_a_good_model_is_merged_and_status_reports_traffic():
    reference = alone()
    node = run_with_peer([good_payload()])
    assert node.models_rejected == 0
    assert not torch.equal(node.learner.state().flat, reference.learner.state().flat)
    status = node.status()
    assert status.peer_id == "node" and status.peers == ("peer",) and status.round == 2
    assert status.bytes_in > 0 and status.bytes_out > 0
    assert 0 <= status.accuracy <= 1
    assert [r.round for r in node.history] == [1, 2]


def test_a_payload_reaching_several_nodes_is_converted_once_and_checked_against_each():
    from p2pfl.errors import IncompatibleModel
    from p2pfl.node import _state_of

    own = Learner(mlp((64, 8, 10), seed=0), load_digits(seed=0)[0]).state()
    other = Learner(mlp((64, 9, 10), seed=0), load_digits(seed=0)[0]).state()
    payload = ModelPayload(own.to_numpy(), 1.0)
    first = _state_of(own, payload)
    assert _state_of(own.clone(), payload) is first  # an equal layout: the same conversion
    assert torch.equal(first.flat, own.flat)
    with pytest.raises(IncompatibleModel):
        _state_of(other, payload)  # another layout is checked afresh, and refused


def evaluated_rounds(seconds_per_step: float, *, resumed_round: int = 0) -> list[tuple[int, bool]]:
    """(round, evaluated) of a lone node running one-second rounds to round 10 with
    `evaluate_every` = 3, from round 1 or after `resumed_round`."""

    async def main():
        async with open_memory_network() as net:
            train, test = load_digits(seed=0)
            node = Node(
                net.add_peer("node"),
                Learner(mlp((64, 8, 10), seed=0), train, test, seed=0),
                protocol=GossipLearning(rounds=10, period=1.0, start_round=resumed_round + 1),
                local_steps=2,
                evaluate_every=3,
                compute=VirtualCompute(seconds_per_step),
                resumed_round=resumed_round,
            )
            assert node.status().round == resumed_round
            await node.run()
        return node

    node = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return [(r.round, r.accuracy is not None) for r in node.history]


def test_a_node_that_skips_rounds_still_evaluates_when_it_skips_past_a_multiple():
    """A node whose rounds take 3 periods runs rounds 1, 4, 7, 10 (gossip.rounds.RoundClock): none
    is a multiple of 3, so it never evaluated, and its status accuracy stayed None."""
    assert evaluated_rounds(1.5) == [(1, False), (4, True), (7, True), (10, True)]
    on_time = evaluated_rounds(0.01)
    assert [r for r, evaluated in on_time if evaluated] == [3, 6, 9]  # as before: every 3rd round
    assert [r for r, _ in on_time] == list(range(1, 11))


def test_a_resumed_node_keeps_the_evaluation_schedule():
    """A daemon restored after round 4 runs rounds 5-10: round 5 skipped past no multiple of 3 since
    round 4, so only 6 and 9 are tested (it was tested too when the node counted from round 0)."""
    resumed = evaluated_rounds(0.01, resumed_round=4)
    assert [r for r, _ in resumed] == list(range(5, 11))
    assert [r for r, evaluated in resumed if evaluated] == [6, 9]


def test_resumed_round_must_not_be_negative():
    async def main():
        async with open_memory_network() as net:
            with pytest.raises(ValueError, match="resumed_round must be >= 0, got -1"):
                Node(
                    net.add_peer("node"),
                    Learner(mlp((64, 8, 10), seed=0), load_digits(seed=0)[0]),
                    protocol=GossipLearning(rounds=1),
                    resumed_round=-1,
                )

    trio.run(main)
