import networkx as nx
import numpy as np
import pytest
import torch

from p2pfl.errors import ConfigError
from simulations import ChurnEvent, EmulationConfig, build_topology, run_emulation
from simulations.synthetic import GaussianMixture, synthetic_task
from simulations.topology import load_topology, node_order


def test_torus_grid_and_barabasi_albert_have_their_shape():
    torus = build_topology("torus", 12, seed=0)
    assert {d for _, d in torus.degree} == {4} and torus.number_of_edges() == 24
    grid = build_topology("grid", 12, seed=0, rows=2)
    assert sorted(d for _, d in grid.degree)[:4] == [2, 2, 2, 2]
    ba = build_topology("barabasi_albert", 50, seed=3, m=2)
    assert ba.number_of_edges() == 2 * (50 - 2) and nx.is_connected(ba)
    assert sorted(ba.edges) == sorted(build_topology("barabasi_albert", 50, seed=3, m=2).edges)
    ws = build_topology("watts_strogatz", 20, seed=1, k=4, p=0.2)
    assert nx.is_connected(ws)
    with pytest.raises(ConfigError, match="rows"):
        build_topology("torus", 12, seed=0, rows=5)


def test_graph_files_are_read_by_suffix(tmp_path):
    graph = nx.cycle_graph(["a", "b", "c", "d"])
    nx.write_graphml(graph, tmp_path / "g.graphml")
    nx.write_edgelist(graph, tmp_path / "g.edgelist", data=False)
    for name in ("g.graphml", "g.edgelist"):
        loaded = load_topology(tmp_path / name)
        assert sorted(map(sorted, loaded.edges)) == sorted(map(sorted, graph.edges))
    (tmp_path / "bad.graphml").write_text("<graphml><oops")
    with pytest.raises(ConfigError, match=r"bad\.graphml"):
        load_topology(tmp_path / "bad.graphml")
    with pytest.raises(ConfigError, match="unknown suffix"):
        load_topology(tmp_path / "g.xyz")


def test_a_topology_file_drives_the_emulation_and_must_match_nodes(tmp_path):
    path = tmp_path / "star.graphml"
    nx.write_graphml(nx.star_graph(4), path)
    result = run_emulation(EmulationConfig(nodes=5, rounds=2, local_steps=2, topology_file=str(path)))
    assert result.rounds[-1].nodes == 5
    with pytest.raises(ConfigError, match="has 5 nodes but nodes is 6"):
        EmulationConfig(nodes=6, topology_file=str(path))


def test_numeric_labels_of_a_graph_file_are_node_indices_by_value(tmp_path):
    """An edge list stores labels as text; sorted as text, "10" came before "2" and node index 2
    (what churn events, CSVs and Byzantine picks name) was the node labelled 10."""
    path = tmp_path / "ring.edgelist"
    nx.write_edgelist(nx.cycle_graph(12), path, data=False)
    config = EmulationConfig(nodes=12, rounds=1, local_steps=1, topology_file=str(path))
    result = run_emulation(config)
    assert sorted(result.graph.neighbors(2)) == [1, 3]
    assert sorted(result.graph.neighbors(11)) == [0, 10]
    assert node_order(nx.Graph([("b", "10"), ("10", "2"), ("a", "2")])) == ["2", "10", "a", "b"]
    # Labels that merely look numeric are text: "--5" and "²" made int() fail.
    assert node_order(nx.Graph([("--5", "1"), ("1", "²"), ("²", "-3")])) == ["-3", "1", "--5", "²"]


def test_synthetic_node_data_is_seeded_per_node_and_skewed_by_alpha():
    mixture = GaussianMixture(features=8, classes=5, seed=1)
    a = mixture.node_data(7, samples=200, alpha=0.1)
    b = mixture.node_data(7, samples=200, alpha=0.1)
    c = mixture.node_data(8, samples=200, alpha=0.1)
    assert torch.equal(a.tensors[0], b.tensors[0]) and not torch.equal(a.tensors[0], c.tensors[0])
    skewed = np.bincount(a.tensors[1].numpy(), minlength=5).max() / 200
    iid = np.bincount(mixture.node_data(7, samples=2000, alpha=None).tensors[1].numpy(), minlength=5)
    assert skewed > 0.5 and iid.max() / 2000 < 0.3
    assert a.tensors[0].shape == (200, 8) and a.tensors[0].dtype == torch.float32


def test_a_synthetic_run_learns_with_node_made_data():
    config = EmulationConfig(
        nodes=12,
        task="synthetic",
        task_params={"features": 8, "samples_per_node": 16},
        protocol="dpsgd",
        rounds=10,
        lr=0.1,
        topology="ring",
    )
    result = run_emulation(config)
    assert result.rounds[0].mean_accuracy < result.final_mean_accuracy
    assert result.final_mean_accuracy > 0.5  # chance is 0.1
    task = synthetic_task(features=8)
    assert task.train is None and len(task.test) == 500


def test_resampling_rewires_links_between_rounds_and_keeps_degrees():
    config = dict(nodes=16, protocol="dpsgd", rounds=6, local_steps=2, evaluate_every=3)
    fixed = run_emulation(EmulationConfig(**config))
    moving = run_emulation(EmulationConfig(**config, resample_every=1))
    assert [r.nodes for r in moving.rounds] == [16, 16]
    # D-PSGD sends one model per neighbour per round either way: same degree, same traffic
    assert moving.messages_sent == fixed.messages_sent
    assert moving.final_mean_accuracy != fixed.final_mean_accuracy


# D-PSGD on 8 synthetic nodes for 6 rounds, for the resampling-with-churn tests.
SMALL_DPSGD = dict(nodes=8, rounds=6, protocol="dpsgd", task="synthetic", local_steps=1)


def test_resampling_links_only_the_nodes_still_running():
    config = EmulationConfig(
        **SMALL_DPSGD,
        topology="random_regular",
        topology_params={"degree": 3},
        resample_every=1,
        churn=(ChurnEvent(2, "leave", nodes=(0, 1)),),
    )
    result = run_emulation(config)
    left, running = result.nodes[:2], result.nodes[2:]
    # The leavers heard 3 neighbours in rounds 1 and 2 and nothing after: no link back to them.
    assert [n.messages_received for n in left] == [6, 6]
    # The 6 others are redrawn as a 3-regular graph among themselves: 3 models every round.
    assert [n.messages_received for n in running] == [18] * 6


def test_resampling_a_family_that_does_not_fit_the_survivors_still_leaves_them_out():
    # 7 survivors make no 2-row torus: the draw is over all 8 nodes, minus the leaver's edges.
    config = dict(
        **SMALL_DPSGD,
        topology="torus",
        topology_params={"rows": 2},
        churn=(ChurnEvent(2, "leave", nodes=(0,)),),
    )
    fixed = run_emulation(EmulationConfig(**config))
    moving = run_emulation(EmulationConfig(**config, resample_every=1))
    assert moving.nodes[0].messages_received == fixed.nodes[0].messages_received > 0
    assert [r.nodes for r in moving.rounds][-1] == 7


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"task": "imagenet"}, "task"),
        ({"task_params": {"features": 3}}, "digits task takes none"),
        ({"task": "synthetic", "task_params": {"colour": 1}}, "task_params"),
        ({"task": "synthetic", "task_params": {"samples_per_node": 0}}, "samples_per_node"),
        ({"resample_every": -1}, "resample_every"),
        ({"resample_every": 2, "protocol": "modest"}, "resample_every"),
    ],
)
def test_invalid_task_and_topology_settings_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        EmulationConfig(**overrides)
