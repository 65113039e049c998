import networkx as nx
import numpy as np
import pytest
import trio
import trio.testing
from scalar_learning import ScalarLearning

from gossip.dpsgd import DPSGD, DpsgdModel, metropolis_hastings
from transport import codec
from transport.errors import DecodeError
from transport.memory import open_memory_network
from transport.messages import ModelPayload


def run_graph(graph: nx.Graph, rounds: int, *, crash: dict[int, float] | None = None):
    """Run D-PSGD on `graph`; `crash` maps a node to the virtual time its links go down."""
    learnings = {i: ScalarLearning(float(i), peer_id=f"p{i}") for i in graph.nodes}

    async def main():
        async with open_memory_network(latency=0.01) as net:
            transports = {i: net.add_peer(f"p{i}") for i in graph.nodes}
            for u, v in graph.edges:
                net.connect(f"p{u}", f"p{v}")

            async def cut(node, at):
                await trio.sleep(at)
                for peer in list(transports[node].peers()):
                    net.disconnect(f"p{node}", peer)

            async with trio.open_nursery() as nursery:
                for i in graph.nodes:
                    nursery.start_soon(DPSGD(rounds=rounds).run, transports[i], learnings[i])
                for node, at in (crash or {}).items():
                    nursery.start_soon(cut, node, at)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return learnings


def test_mixing_preserves_the_global_mean_and_reaches_consensus():
    graph = nx.random_regular_graph(3, 10, seed=1)
    learnings = run_graph(graph, 60)
    values = np.array([learning.value for learning in learnings.values()])
    assert values.mean() == pytest.approx(4.5, abs=1e-9)  # doubly stochastic: the average is kept
    assert np.ptp(values) < 1e-3


def test_irregular_graph_still_keeps_the_mean():
    graph = nx.star_graph(5)  # hub of degree 5, leaves of degree 1
    learnings = run_graph(graph, 200)
    values = np.array([learning.value for learning in learnings.values()])
    assert values.mean() == pytest.approx(2.5, abs=1e-9)
    assert np.ptp(values) < 1e-2


def test_a_crashed_neighbour_leaves_its_weight_with_the_own_model():
    graph = nx.cycle_graph(6)
    learnings = run_graph(graph, 20, crash={0: 3.5})
    survivors = [learnings[i].value for i in range(1, 6)]
    assert all(len(learnings[i].finished) == 20 for i in graph.nodes)
    assert np.ptp(survivors) < 0.5  # the path 1..5 keeps mixing without node 0


def test_metropolis_hastings_weights():
    weights = metropolis_hastings("me", 2, {"a": 2, "b": 4})
    assert weights == pytest.approx({"a": 1 / 3, "b": 1 / 5, "me": 1 - 1 / 3 - 1 / 5})
    assert metropolis_hastings("me", 3, {}) == {"me": 1.0}


def test_degree_from_the_wire_is_validated():
    good = DpsgdModel(round=1, degree=2, model=ModelPayload({"x": np.zeros(1)}, 1.0))
    assert codec.decode(codec.encode(good)).degree == 2
    forged = codec.encode(good).replace(b"\x01\x02", b"\x01\x00", 1)  # round 1, degree 2 -> 0
    with pytest.raises(DecodeError, match="degree"):
        codec.decode(forged)
