from functools import partial

import networkx as nx
import pytest

from p2pfl.errors import ConfigError
from p2pfl.models import mlp
from simulations import EmulationConfig, Task, build_topology, digits_task, run_emulation

SMALL = dict(nodes=6, rounds=4, local_steps=3, topology="ring", topology_params={})


def trace(result):
    return [(r.mean_accuracy, r.min_accuracy, r.max_accuracy, r.bytes_sent) for r in result.rounds]


def test_same_seed_gives_the_same_trace_and_another_seed_does_not():
    a = run_emulation(EmulationConfig(**SMALL, seed=3))
    b = run_emulation(EmulationConfig(**SMALL, seed=3))
    c = run_emulation(EmulationConfig(**SMALL, seed=4))
    assert trace(a) == trace(b)
    assert trace(a) != trace(c)


@pytest.mark.parametrize("hypothesis_mode", [False, True])
def test_a_run_is_the_same_whether_or_not_hypothesis_switched_trios_scheduling(monkeypatch, hypothesis_mode):
    import trio

    from simulations.churn import ChurnEvent

    # Importing Hypothesis switches how trio orders a batch of ready tasks; under pytest it is. Two
    # nodes crashing at the round that the others are finishing see that order.
    config = EmulationConfig(**SMALL, seed=3, churn=(ChurnEvent(2, "crash", nodes=(0, 3)),))
    monkeypatch.setattr(trio._core._run, "_ALLOW_DETERMINISTIC_SCHEDULING", not hypothesis_mode)
    reference = run_emulation(config)
    monkeypatch.setattr(trio._core._run, "_ALLOW_DETERMINISTIC_SCHEDULING", hypothesis_mode)
    result = run_emulation(config)
    assert trace(result) == trace(reference)
    assert [n.rounds_recorded for n in result.nodes] == [n.rounds_recorded for n in reference.nodes]
    assert trio._core._run._ALLOW_DETERMINISTIC_SCHEDULING is hypothesis_mode  # restored after the run


def test_summary_counts_rounds_bytes_and_virtual_time():
    result = run_emulation(EmulationConfig(**SMALL))
    assert [r.round for r in result.rounds] == [1, 2, 3, 4]
    assert [r.virtual_time for r in result.rounds] == pytest.approx([1.0, 2.0, 3.0, 4.0])
    sent = [r.bytes_sent for r in result.rounds]
    assert sent == sorted(sent) and sent[0] > 0
    assert sent[-1] == pytest.approx(4 * sent[0], rel=0.01)  # one model per node per round
    for r in result.rounds:
        assert 0 <= r.min_accuracy <= r.mean_accuracy <= r.max_accuracy <= 1
    summary = result.to_json()
    assert {"final_mean_accuracy", "rounds", "bytes_sent", "wall_s"} <= summary.keys()
    assert summary["final_mean_accuracy"] == result.rounds[-1].mean_accuracy


def test_learning_progresses_on_non_iid_data():
    result = run_emulation(EmulationConfig(nodes=8, rounds=15, partition="dirichlet", alpha=0.5, seed=1))
    assert result.rounds[0].mean_accuracy < 0.6
    assert result.final_mean_accuracy > 0.75


def test_a_caller_graph_is_used_as_given():
    graph = nx.relabel_nodes(nx.path_graph(5), {i: f"host-{i}" for i in range(5)})
    result = run_emulation(EmulationConfig(**{**SMALL, "nodes": 5}), graph=graph)
    assert len(result.rounds) == 4
    with pytest.raises(ConfigError, match="graph has 5 nodes"):
        run_emulation(EmulationConfig(**SMALL), graph=graph)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("nodes", 1, "nodes"),
        ("rounds", 0, "rounds"),
        ("partition", "shards", "partition"),
        ("alpha", 0.0, "alpha"),
        ("local_steps", 0, "local_steps"),
        ("lr", 0.0, "lr"),
        ("period", 0.005, "period"),
    ],
)
def test_invalid_config_names_the_field(field, value, message):
    kwargs = {**SMALL, "partition": "dirichlet", field: value}
    with pytest.raises(ConfigError, match=message):
        EmulationConfig(**kwargs)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("ring", {}),
        ("random_regular", {"degree": 4}),
        ("erdos_renyi", {"p": 0.3}),
        ("small_world", {"k": 4}),
        ("complete", {}),
    ],
)
def test_topologies_by_name_are_seeded(name, params):
    a = build_topology(name, 12, seed=1, **params)
    b = build_topology(name, 12, seed=1, **params)
    assert sorted(a.nodes) == list(range(12))
    assert sorted(a.edges) == sorted(b.edges)
    if name == "random_regular":
        assert {d for _, d in a.degree} == {4}


def test_topology_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown name"):
        build_topology("hypercube", 8, seed=0)
    with pytest.raises(ConfigError, match="degree"):
        build_topology("random_regular", 5, seed=0, degree=3)
    with pytest.raises(ConfigError, match=r"\['degree'\] not accepted by topology 'ring'; it accepts none"):
        build_topology("ring", 5, seed=0, degree=3)
    with pytest.raises(ConfigError, match=r"topology\.degree: no -2-regular graph"):
        build_topology("random_regular", 6, seed=0, degree=-2)
    with pytest.raises(ConfigError, match=r"topology\.p must be a probability in \[0, 1\], got 5"):
        build_topology("small_world", 6, seed=0, k=2, p=5)
    with pytest.raises(ConfigError, match=r"topology\.k must be an integer, got 2\.5"):
        build_topology("small_world", 6, seed=0, k=2.5)


def test_a_task_whose_model_does_not_fit_its_data_is_refused_before_the_run():
    digits = digits_task()
    wrong = Task(digits.train, digits.test, make_model=partial(mlp, (8, 4, 10)))  # digits have 64 features
    with pytest.raises(ConfigError, match=r"task: the model does not fit the training data: .*shapes"):
        run_emulation(EmulationConfig(**SMALL), task=wrong)


def test_a_split_with_an_empty_part_is_refused_before_the_run():
    config = EmulationConfig(nodes=64, rounds=1, partition="dirichlet", alpha=0.001)
    with pytest.raises(ConfigError, match="partition: could not give each of 64 parts a sample"):
        run_emulation(config)
