"""Sharded runs: nodes split over processes that keep in step in virtual time (simulations/shards.py)."""

from __future__ import annotations

import dataclasses

import networkx as nx
import pytest
import torch

from p2pfl.errors import ConfigError
from simulations.churn import ChurnEvent
from simulations.config import EmulationConfig
from simulations.emulator import NodeFailed, check_run, run_emulation
from simulations.results import ConsensusTracker
from simulations.shards import lookahead, pack, split_nodes, unpack
from transport.memory import TrafficLog

SMALL = dict(
    nodes=24,
    topology="random_regular",
    topology_params={"degree": 4},
    task="synthetic",
    protocol="dpsgd",
    local_steps=1,
    rounds=4,
    evaluate_every=2,
    seed=3,
)
TIMINGS = {"wall_s", "peak_rss_mib", "node_rounds_per_s", "rounds_per_minute"}


def _comparable(result) -> dict:
    summary = result.to_json()
    summary["config"].pop("shards")
    return {k: v for k, v in summary.items() if k not in TIMINGS}


def _own_protocol(tmp_path, monkeypatch, module: str, *body: str) -> str:
    """A protocol of one's own whose `run` is `body` (lines), importable in the shards' processes."""
    lines = [f"        {line}" for line in body]
    (tmp_path / f"{module}.py").write_text(
        "\n".join(
            [
                "from dataclasses import dataclass",
                "import trio",
                "from gossip.protocol import RoundProtocol",
                "@dataclass(frozen=True)",
                "class Protocol(RoundProtocol):",
                "    rounds: int",
                "    period: float",
                "    seed: int",
                "    async def run(self, transport, learning):",
                *lines,
                "",
            ]
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned processes get the parent's path
    return f"{module}:Protocol"


def _without_consensus(row):
    return dataclasses.replace(row, consensus_distance=None)


# --- splitting and lookahead -------------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 2, 3, 4])
def test_split_gives_every_node_to_one_shard_in_near_equal_parts(shards):
    graph = nx.random_regular_graph(4, 101, seed=1)
    parts = split_nodes(graph, shards, seed=0)
    assert sorted(n for part in parts for n in part) == list(range(101))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == split_nodes(graph, shards, seed=0)  # seeded


def test_split_cuts_fewer_edges_than_blocks_of_indices():
    graph = nx.random_regular_graph(4, 2000, seed=1)
    left, right = split_nodes(graph, 2, seed=0)
    blocks = nx.cut_size(graph, range(1000), range(1000, 2000))
    assert nx.cut_size(graph, left, right) < 0.6 * blocks


def test_split_refuses_more_shards_than_nodes():
    with pytest.raises(ValueError, match="shards must be between 1 and the 3 nodes, got 4"):
        split_nodes(nx.path_graph(3), 4, seed=0)


def test_lookahead_is_the_least_latency_between_shards():
    parts = [[0, 1], [2, 3]]
    links = [(0, 1, 0.0), (1, 2, 0.3), (0, 3, 0.2), (2, 3, 0.0)]  # latency-0 links stay inside
    assert lookahead(parts, links, default_latency=0.5, any_pair=False) == 0.2
    assert lookahead(parts, links, default_latency=0.1, any_pair=True) == 0.1  # anyone may dial anyone
    assert lookahead(parts, [(0, 1, 0.0)], default_latency=0.1, any_pair=False) == float("inf")


# --- what the shards merge ---------------------------------------------------------------------------


def test_merged_traffic_logs_add_up_at_every_instant():
    a, b = TrafficLog(), TrafficLog()
    a.record(1.0, 10)
    a.record(3.0, 5)
    b.record(2.0, 7)
    b.record(3.0, 1)
    merged = TrafficLog.merged([a, b])
    assert [merged.bytes_sent(until=t) for t in (0.5, 1.0, 2.0, 3.0)] == [0, 10, 17, 23]
    assert merged.messages_sent() == 4 and merged.messages_sent(until=2.5) == 2


def test_merged_consensus_trackers_give_the_distance_of_all_models():
    models = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([3.0, 3.0])]
    whole, first, second = ConsensusTracker(), ConsensusTracker(), ConsensusTracker()
    for model in models:
        whole.add(1, model)
    first.add(1, models[0])
    second.add(1, models[1])
    second.add(1, models[2])
    first.merge(second)
    assert first.distance(1) == pytest.approx(whole.distance(1))


def test_a_parcel_carries_its_messages_in_order_and_a_frame_sent_to_several_nodes_once():
    frame, other = bytes(range(256)) * 16, b"small"
    messages = [(1.5, "a", "b", frame, None), (1.5, "a", "c", frame, None), (2.0, "d", "b", other, "topic")]
    parcel = pack(messages)
    assert unpack(parcel) == messages
    assert len(parcel) < 2 * len(frame)  # the frame once
    first, second, _ = unpack(parcel)
    assert first[3] is second[3]  # one object there too: the receiving shard decodes it once
    assert pack([]) == b"" and unpack(b"") == []


# --- runs ----------------------------------------------------------------------------------------------


def test_sharded_dpsgd_is_the_run_of_one_process():
    # D-PSGD merges what arrived by the round's end in peer order: where each node ran changes no
    # model, only float rounding in the batched training, which the JSON's accuracies round away.
    alone = run_emulation(EmulationConfig(**SMALL))
    sharded = run_emulation(EmulationConfig(**SMALL, shards=2))
    assert sharded.config.shards == 2 and sharded.node_rounds == 24 * 4
    assert _comparable(sharded) == _comparable(alone)


def test_a_sharded_run_is_deterministic_for_its_seed_and_follows_the_seed():
    config = EmulationConfig(**{**SMALL, "protocol": "gossip", "loss": 0.2, "shards": 3})
    first, again = run_emulation(config), run_emulation(config)
    assert _comparable(first) == _comparable(again)
    other = run_emulation(dataclasses.replace(config, seed=4))
    assert _comparable(other) != _comparable(first)
    assert sum(n.messages_lost for n in first.nodes) > 0  # each shard draws its own losses


def test_modest_runs_sharded_with_peers_dialled_across_shards():
    config = EmulationConfig(
        **{**SMALL, "protocol": "modest", "protocol_params": {"s": 4}, "rounds": 6, "evaluate_every": 3},
        shards=2,
    )
    result = run_emulation(config)
    assert result.rounds_reached == 6 and not result.stalled
    assert result.final_mean_accuracy is not None and result.final_mean_accuracy > 0.2


def test_churn_and_partitions_apply_in_every_shard():
    churn = (
        ChurnEvent(1, "partition", fraction=0.5),
        ChurnEvent(3, "heal"),
        ChurnEvent(2, "crash", nodes=(0, 23)),
    )
    config = EmulationConfig(**{**SMALL, "rounds": 6, "consensus": True}, churn=churn)
    sharded = run_emulation(dataclasses.replace(config, shards=2))
    by_peer = {n.peer: n for n in sharded.nodes}
    for crashed in ("n00000", "n00023"):  # stopped at the barrier after round 2 was reached
        assert by_peer[crashed].rounds_recorded == 2
    assert all(n.rounds_recorded == 6 for p, n in by_peer.items() if p not in ("n00000", "n00023"))
    # Churn lands at the barrier after its round is reached, before the next round's models arrive.
    # One process applies it the moment the first node records the round, so a crashing node may
    # not have recorded it yet: the runs differ there, and in nothing after.
    alone = run_emulation(config)
    later, later_alone = sharded.rounds[1:], alone.rounds[1:]
    assert [r.round for r in later] == [4, 6]
    assert [_without_consensus(r) for r in later] == [_without_consensus(r) for r in later_alone]
    # The shards' sums of models add up in another order: equal up to float rounding.
    assert [r.consensus_distance for r in later] == pytest.approx([r.consensus_distance for r in later_alone])
    unsplit = run_emulation(dataclasses.replace(config, churn=churn[2:], shards=2))
    assert sharded.rounds[0].consensus_distance > unsplit.rounds[0].consensus_distance


def test_a_node_failing_in_a_shard_stops_every_shard_with_its_error(tmp_path, monkeypatch):
    protocol = _own_protocol(
        tmp_path,
        monkeypatch,
        "late_failure",
        "await trio.sleep(2.5)",
        "if transport.peer_id == 'n00017':",
        "    raise RuntimeError('the protocol broke')",
        "await trio.sleep_forever()",
    )
    config = EmulationConfig(**{**SMALL, "protocol": protocol}, shards=2)
    with pytest.raises(NodeFailed, match=r"^node 17 \(n00017\) failed at virtual time 2.5 s") as caught:
        run_emulation(config)
    assert str(caught.value.cause) == "the protocol broke"


def test_a_shard_whose_process_dies_ends_the_run_with_an_error(tmp_path, monkeypatch):
    protocol = _own_protocol(
        tmp_path,
        monkeypatch,
        "dies",
        "await trio.sleep(1.5)",
        "if transport.peer_id == 'n00005':",
        "    import os",
        "    os._exit(3)  # as if killed: no word to the coordinator",
        "await trio.sleep_forever()",
    )
    with pytest.raises(RuntimeError, match="a shard's process ended without a word"):
        run_emulation(EmulationConfig(**{**SMALL, "protocol": protocol}, shards=2))


def test_a_sharded_run_whose_nodes_record_nothing_stalls(tmp_path, monkeypatch):
    protocol = _own_protocol(tmp_path, monkeypatch, "idle", "await trio.sleep_forever()")
    config = EmulationConfig(**{**SMALL, "protocol": protocol}, stall_timeout=5.0, shards=2)
    result = run_emulation(config)
    assert result.stalled and result.rounds_reached == 0 and result.node_rounds == 0


def test_sharding_needs_links_between_shards_to_take_time(tmp_path):
    with pytest.raises(ConfigError, match="2 shards need every message between them to take time"):
        check_run(EmulationConfig(**SMALL, latency=0.0, shards=2))
    ring = tmp_path / "ring.edgelist"
    ring.write_text("".join(f"{i} {(i + 1) % 24} {{'latency': 0.0}}\n" for i in range(24)))
    config = EmulationConfig(**{**SMALL, "topology_file": str(ring)}, shards=2)
    with pytest.raises(ConfigError, match="links between shards have latency 0"):
        run_emulation(config)
    check_run(dataclasses.replace(config, shards=1))  # one process needs no lookahead


def test_a_link_without_latency_inside_a_shard_is_fine_and_positive_latencies_need_no_split(
    tmp_path, monkeypatch
):
    import simulations.sharded_run as sharded_run

    # Two rings of 12 joined by one slow edge: the split keeps each ring whole, so only the slow
    # edge crosses shards, and the links of latency 0 stay inside them.
    lines = [f"{r * 12 + i} {r * 12 + (i + 1) % 12} {{'latency': 0.0}}\n" for r in (0, 1) for i in range(12)]
    rings = tmp_path / "rings.edgelist"
    rings.write_text("".join(lines) + "0 12 {'latency': 0.2}\n")
    check_run(EmulationConfig(**{**SMALL, "topology_file": str(rings)}, shards=2))

    def no_split(*_):
        raise AssertionError("split the nodes although every link takes time")

    monkeypatch.setattr(sharded_run, "shard_parts", no_split)
    slow = tmp_path / "slow.edgelist"
    slow.write_text("".join(f"{i} {(i + 1) % 24} {{'latency': 0.3}}\n" for i in range(24)))
    check_run(EmulationConfig(**{**SMALL, "topology_file": str(slow)}, shards=2))


def test_a_sharded_run_reports_progress_as_the_shards_reach_rounds():
    seen = []

    class Reporter:
        def update(self, round_: int, rounds: int) -> None:
            seen.append((round_, rounds))

    run_emulation(EmulationConfig(**SMALL, shards=2), progress=Reporter())
    assert seen == [(r, 4) for r in range(1, 5)]
