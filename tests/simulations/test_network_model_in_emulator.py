"""The link model, heterogeneity and partitions as the emulator uses them."""

import networkx as nx
import numpy as np
import pytest

from p2pfl.errors import ConfigError
from simulations import ChurnEvent, EmulationConfig, run_emulation
from simulations.emulator import check_run

BASE = dict(nodes=12, protocol="dpsgd", rounds=12, local_steps=5, topology="ring", consensus=True)


def half_accuracies(result, half, round_):
    by_peer = {n.peer: dict(n.accuracy_trace) for n in result.nodes}
    inside = [by_peer[f"n{i:05d}"][round_] for i in half]
    outside = [by_peer[p][round_] for p in by_peer if int(p[1:]) not in half]
    return float(np.mean(inside)), float(np.mean(outside))


def test_a_partition_splits_the_models_and_healing_brings_them_back():
    churn = (ChurnEvent(3, "partition", 0.5), ChurnEvent(8, "heal"))
    split = run_emulation(
        EmulationConfig(**BASE, churn=churn, partition="dirichlet", alpha=0.3, record_nodes=True)
    )
    whole = run_emulation(EmulationConfig(**BASE, partition="dirichlet", alpha=0.3))
    distance = {r.round: r.consensus_distance for r in split.rounds}
    baseline = {r.round: r.consensus_distance for r in whole.rounds}
    assert distance[8] > 1.5 * baseline[8]  # apart while split
    assert distance[12] < 0.5 * distance[8]  # together again after healing
    half = split.churn[0].nodes
    assert len(half) == 6
    inside, outside = half_accuracies(split, half, 8)
    assert inside != outside


def test_bandwidth_and_slow_nodes_cost_virtual_time():
    fast = run_emulation(
        EmulationConfig(nodes=6, rounds=2, local_steps=2, protocol="modest", protocol_params={"s": 3})
    )
    slow = run_emulation(
        EmulationConfig(
            nodes=6,
            rounds=2,
            local_steps=2,
            protocol="modest",
            protocol_params={"s": 3},
            bandwidth=2e4,
            speed_sigma=1.0,
        )
    )
    assert slow.rounds[-1].virtual_time > fast.rounds[-1].virtual_time + 0.5  # ~10 KB models at 20 KB/s


def test_edge_and_node_attributes_of_a_graph_are_used():
    graph = nx.path_graph(4)
    nx.set_edge_attributes(graph, 0.5, "latency")
    nx.set_node_attributes(graph, 1.0, "speed")
    config = EmulationConfig(nodes=4, rounds=1, local_steps=1, protocol="gossip", period=2.0)
    result = run_emulation(config, graph=graph)
    assert result.rounds[-1].nodes == 4
    graph.nodes[2]["speed"] = 0.0
    with pytest.raises(ConfigError, match="speed"):
        run_emulation(config, graph=graph)


def test_lossy_links_lose_messages_and_say_so():
    result = run_emulation(EmulationConfig(nodes=8, rounds=5, local_steps=1, loss=0.3, seed=2))
    lost = sum(n.messages_lost for n in result.nodes)
    assert 0 < lost < result.messages_sent


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"bandwidth": 0.0}, "bandwidth"), ({"loss": 1.0}, "loss"), ({"speed_sigma": -1.0}, "speed_sigma")],
)
def test_invalid_network_settings_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        EmulationConfig(**overrides)


def test_heal_takes_no_nodes():
    with pytest.raises(ConfigError, match="heal"):
        ChurnEvent(3, "heal", 0.5)


def test_bad_edge_attributes_are_named():
    graph = nx.path_graph(3)
    graph.edges[0, 1]["latency"] = -1.0
    with pytest.raises(ConfigError, match=r"edge \(0, 1\)"):
        run_emulation(EmulationConfig(nodes=3, rounds=1, local_steps=1), graph=graph)


def test_attributes_that_are_not_numbers_are_named():
    graph = nx.path_graph(3)
    graph.edges[0, 1]["latency"] = "fast"
    with pytest.raises(ConfigError, match=r"topology edge \(0, 1\): latency must be a number, got 'fast'"):
        run_emulation(EmulationConfig(nodes=3, rounds=1), graph=graph)
    graph = nx.path_graph(3)
    graph.nodes[2]["speed"] = "quick"
    with pytest.raises(ConfigError, match=r"topology node 2: speed must be a number, got 'quick'"):
        run_emulation(EmulationConfig(nodes=3, rounds=1), graph=graph)


def test_links_on_which_no_model_can_arrive_within_its_round_are_refused():
    slow = nx.cycle_graph(4)
    nx.set_edge_attributes(slow, 5.0, "latency")  # seconds, meant as milliseconds?
    config = EmulationConfig(nodes=4, protocol="dpsgd", rounds=4, local_steps=1, task="synthetic")
    with pytest.raises(ConfigError, match=r"the link 0 - 1: a model \(\d+ bytes\) arrives 5.001 s into"):
        run_emulation(config, graph=slow)
    narrow = EmulationConfig(**{**config.__dict__, "bandwidth": 1000.0, "topology": "ring"})
    defaults = r"links with the default latency and bandwidth: a model .* always too late; raise period"
    with pytest.raises(ConfigError, match=defaults):
        run_emulation(narrow)
    # Event-driven protocols wait for models as long as they take.
    check_run(EmulationConfig(**{**narrow.__dict__, "protocol": "modest", "protocol_params": {"s": 2}}))
