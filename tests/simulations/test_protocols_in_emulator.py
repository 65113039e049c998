"""MoDeST and the FL baseline in the emulator: same seed, same data, comparable summaries."""

import pytest

from p2pfl.errors import ConfigError
from simulations import ChurnEvent, EmulationConfig, run_emulation
from simulations.cli import format_table

MODEST = dict(
    nodes=12, rounds=6, local_steps=3, protocol="modest", protocol_params={"s": 4, "a": 1}, topology="ring"
)


def trace(result):
    return [(r.round, r.mean_accuracy, r.nodes, r.bytes_sent, r.messages_sent) for r in result.rounds]


def test_modest_rows_come_from_each_rounds_next_sample_and_runs_are_deterministic():
    a = run_emulation(EmulationConfig(**MODEST, seed=2))
    b = run_emulation(EmulationConfig(**MODEST, seed=2))
    c = run_emulation(EmulationConfig(**MODEST, seed=3))
    assert [r.round for r in a.rounds] == [1, 2, 3, 4, 5, 6]
    assert all(r.nodes == 4 for r in a.rounds)
    assert trace(a) == trace(b)
    assert trace(a) != trace(c)
    assert not a.stalled


def test_runs_do_not_depend_on_what_ran_before_them_in_the_process():
    """Timeouts that expire at one virtual instant used to fire in the order of their cancel scopes'
    addresses, so a lossy MoDeST run's message counts changed from one run to the next."""
    config = EmulationConfig(
        nodes=8,
        rounds=3,
        topology_params={"degree": 3},
        loss=0.2,
        protocol="modest",
        protocol_params={"s": 3, "aggregation_timeout": 5.0, "round_timeout": 10.0},
    )
    runs = [run_emulation(config) for _ in range(4)]
    counts = {tuple((n.messages_sent, n.messages_received) for n in run.nodes) for run in runs}
    assert len(counts) == 1, counts


def test_the_fl_server_is_never_picked_as_byzantine():
    # seed 2 picked the server (node 0) before, and the run then reported no round at all
    config = dict(MODEST, nodes=8, rounds=2, protocol="fl", protocol_params={"s": 3}, attack="sign_flip")
    for seed in range(6):
        result = run_emulation(EmulationConfig(**config, byzantine_fraction=0.25, seed=seed))
        assert not result.nodes[0].byzantine and sum(n.byzantine for n in result.nodes) == 1  # 25% of 7
        assert [r.round for r in result.rounds] == [1, 2]


def test_fl_rows_come_from_the_server():
    result = run_emulation(
        EmulationConfig(**{**MODEST, "protocol": "fl", "protocol_params": {"s": 4}}, seed=1)
    )
    assert [r.nodes for r in result.rounds] == [1] * 6
    assert result.nodes[0].rounds_recorded == 6
    assert sum(n.rounds_recorded for n in result.nodes[1:]) == 0


def test_per_node_counters_add_up_to_the_network_totals():
    result = run_emulation(EmulationConfig(**MODEST))
    summary = result.to_json()
    assert len(summary["nodes"]) == 12
    assert summary["bytes_sent"] == sum(n["bytes_sent"] for n in summary["nodes"])
    assert result.rounds[-1].bytes_sent <= summary["bytes_sent"]
    assert sum(n.messages_sent for n in result.nodes) == summary["messages_sent"]


def test_crash_schedule_is_seeded_reported_and_survived():
    churn = (ChurnEvent(round=2, action="crash", fraction=0.5),)
    params = {"s": 3, "a": 1, "ping_timeout": 1.0, "aggregation_timeout": 2.0, "round_timeout": 5.0}
    config = EmulationConfig(**{**MODEST, "rounds": 10, "protocol_params": params}, churn=churn, seed=4)
    result = run_emulation(config)
    (event,) = result.churn
    assert event.action == "crash" and len(event.nodes) == 6
    crashed = {f"n{i:05d}" for i in event.nodes}
    assert result.rounds[-1].round == 10 and not result.stalled
    late = [n for n in result.nodes if n.peer in crashed]
    assert all(n.rounds_recorded <= 2 for n in late)
    assert run_emulation(config).churn == result.churn


def test_a_stalled_run_stops_and_says_so():
    churn = (ChurnEvent(round=1, action="crash", fraction=0.75),)  # too few left to fill a sample
    result = run_emulation(EmulationConfig(**MODEST, churn=churn, stall_timeout=20.0))
    assert result.stalled
    assert result.rounds_reached == result.rounds[-1].round == 1


def test_a_run_whose_nodes_all_stopped_ended_but_did_not_stall():
    churn = (ChurnEvent(round=1, action="crash", fraction=1.0),)  # everyone gone
    result = run_emulation(EmulationConfig(**MODEST, churn=churn, stall_timeout=20.0))
    assert not result.stalled
    assert result.rounds_reached == 1
    assert "ended at round 1: no node was running any more" in format_table(result)


def test_gossip_nodes_can_crash_too():
    churn = (ChurnEvent(round=2, action="crash", nodes=(0, 1)),)
    result = run_emulation(EmulationConfig(nodes=6, rounds=5, local_steps=2, churn=churn))
    counts = [r.nodes for r in result.rounds]
    # the crash lands the moment the first node records round 2: victims may or may not have
    assert counts[0] == 6 and 4 <= counts[1] <= 6 and counts[2:] == [4, 4, 4]


@pytest.mark.parametrize(("nodes", "churn"), [(8, ()), (12, (ChurnEvent(2, "join", nodes=(3, 4, 5)),))])
def test_a_modest_sample_larger_than_the_starting_nodes_is_refused(nodes, churn):
    # s = 10 by default: 8 nodes, or 12 of which 3 join later, could never fill a sample.
    config = EmulationConfig(nodes=nodes, rounds=2, protocol="modest", topology="ring", churn=churn)
    with pytest.raises(ConfigError, match=r"protocol_params: s=10 exceeds the \d nodes that start"):
        run_emulation(config)


def test_churn_at_round_0_holds_from_the_start():
    churn = (ChurnEvent(round=0, action="crash", nodes=(0, 1)),)
    result = run_emulation(EmulationConfig(nodes=6, rounds=3, local_steps=1, task="synthetic", churn=churn))
    assert [r.nodes for r in result.rounds] == [4, 4, 4]
    assert [(n.rounds_recorded, n.messages_sent, n.messages_received) for n in result.nodes[:2]] == [
        (0, 0, 0),
        (0, 0, 0),
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"protocol": "paxos"}, "protocol"),
        ({"protocol_params": {"s": 0}}, "protocol_params: s"),
        ({"protocol_params": {"q": 1}}, r"protocol_params: \['q'\]"),
        ({"protocol": "fl", "protocol_params": {"s": 50}}, "protocol_params: s"),
        ({"protocol": "gossip", "protocol_params": {"s": 2}}, "protocol_params"),
        ({"churn": (ChurnEvent(3, "join", 0.1),), "protocol": "dpsgd", "protocol_params": {}}, "join"),
        ({"stall_timeout": 0.0}, "stall_timeout"),
        ({"torch_threads": 0}, "torch_threads"),
    ],
)
def test_invalid_protocol_settings_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        EmulationConfig(**{**MODEST, **overrides})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(round=1, action="explode"), "action"),
        (dict(round=0, action="join"), "round"),
        (dict(round=1, action="crash", fraction=1.5), "fraction"),
    ],
)
def test_invalid_churn_events_name_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ChurnEvent(**kwargs)
