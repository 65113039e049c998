import pytest

from p2pfl.errors import ConfigError
from simulations.churn import ChurnEvent, plan_churn


def test_fractions_are_seeded_and_never_pick_protected_nodes():
    events = [ChurnEvent(10, "crash", 0.8)]
    absent, plan = plan_churn(events, 20, seed=1, protected=frozenset({0}))
    assert absent == frozenset()
    (crash,) = plan
    assert len(crash.nodes) == 16 and 0 not in crash.nodes
    assert plan_churn(events, 20, seed=1, protected=frozenset({0})) == (absent, plan)
    assert plan_churn(events, 20, seed=2, protected=frozenset({0}))[1] != plan


def test_joiners_are_absent_until_their_round_and_can_leave_later():
    events = [
        ChurnEvent(5, "join", nodes=(3,)),
        ChurnEvent(8, "leave", nodes=(3,)),
        ChurnEvent(2, "crash", 0.5),
    ]
    absent, plan = plan_churn(events, 10, seed=0, protected=frozenset())
    assert absent == {3}
    assert [(e.round, e.action) for e in plan] == [(2, "crash"), (5, "join"), (8, "leave")]
    assert 3 not in plan[0].nodes and len(plan[0].nodes) == 4  # half of the 9 running, rounded down


def test_nodes_that_are_not_running_cannot_be_stopped():
    with pytest.raises(ConfigError, match="not running"):
        plan_churn(
            [ChurnEvent(2, "crash", nodes=(1,)), ChurnEvent(3, "leave", nodes=(1,))],
            4,
            seed=0,
            protected=frozenset(),
        )
    with pytest.raises(ConfigError, match="out of range or protected"):
        plan_churn([ChurnEvent(2, "crash", nodes=(9,))], 4, seed=0, protected=frozenset())
    with pytest.raises(ConfigError, match="out of range or protected"):
        plan_churn([ChurnEvent(2, "crash", nodes=(0,))], 4, seed=0, protected=frozenset({0}))


def test_an_event_naming_a_node_twice_is_refused():
    # A join listing node 3 twice started it twice; a crash listed it twice in the summary.
    with pytest.raises(ConfigError, match=r"churn at round 5: nodes \[3\] are listed more than once"):
        ChurnEvent(5, "join", nodes=(3, 4, 3))


def test_booleans_are_not_numbers_in_an_event():
    with pytest.raises(ConfigError, match="round must be an integer, got true"):
        ChurnEvent(True, "crash")
    with pytest.raises(ConfigError, match=r"nodes\[1\] must be an integer, got false"):
        ChurnEvent(2, "crash", nodes=(1, False))


def test_joins_that_leave_nobody_to_start_are_refused():
    # Nobody would run round 1, so the join (applied when a round is reached) would never come.
    with pytest.raises(ConfigError, match="the joins leave no node to start the run"):
        plan_churn([ChurnEvent(1, "join", 1.0)], 6, seed=0, protected=frozenset())


@pytest.mark.parametrize("event", [ChurnEvent(2, "partition", 1.0), ChurnEvent(2, "partition")])
def test_a_partition_needs_nodes_on_both_sides(event):
    with pytest.raises(ConfigError, match="a partition needs running nodes on both sides, got"):
        plan_churn([event], 6, seed=0, protected=frozenset())


def test_a_partition_whose_named_side_holds_only_stopped_nodes_is_refused():
    # Node 1 crashed at round 1: cutting it off at round 2 splits nothing.
    events = [ChurnEvent(1, "crash", nodes=(1,)), ChurnEvent(2, "partition", nodes=(1,))]
    with pytest.raises(ConfigError, match="got 0 of 5 on the named side"):
        plan_churn(events, 6, seed=0, protected=frozenset())
    # Likewise every running node and a stopped one: nobody is left on the other side.
    events = [ChurnEvent(1, "crash", nodes=(1,)), ChurnEvent(2, "partition", nodes=(0, 1, 2, 3, 4, 5))]
    with pytest.raises(ConfigError, match="got 5 of 5 on the named side"):
        plan_churn(events, 6, seed=0, protected=frozenset())
