import csv
import dataclasses
import io
import json
import struct

import networkx as nx
import pytest
from click.testing import CliRunner

from p2pfl.cli import main
from simulations import plots
from simulations.churn import PlannedEvent
from simulations.cli import format_comparison
from simulations.config import EmulationConfig
from simulations.emulator import run_emulation
from simulations.plots import plot_accuracy, plot_topology, write_plots
from simulations.report import (
    NODE_COLUMNS,
    ROUND_COLUMNS,
    ProgressBar,
    ProgressReporter,
    node_states,
    states_by_label,
    topology_of,
    write_csv,
)
from simulations.results import EmulationResult, NodeSummary, RoundSummary
from simulations.scenario import Scenario, ScenarioResult, Variant

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_result(nodes=4, rounds=3, *, byzantine=(), churn=(), stalled=False, seed=0, accuracy=0.5):
    config = EmulationConfig(nodes=nodes, rounds=rounds, topology="ring", seed=seed)
    round_rows = [
        RoundSummary(
            round=r,
            mean_accuracy=accuracy + 0.1 * r,
            min_accuracy=accuracy + 0.1 * r - 0.05,
            max_accuracy=accuracy + 0.1 * r + 0.05,
            nodes=nodes - len(byzantine),
            bytes_sent=1000 * r,
            messages_sent=10 * r,
            virtual_time=1.5 * r,
        )
        for r in range(1, rounds + 1)
    ]
    node_rows = [
        NodeSummary(
            peer=f"n{i:05d}",
            rounds_recorded=rounds,
            final_accuracy=None if i == 0 else 0.25 * i,
            bytes_sent=100 + i,
            bytes_received=200 + i,
            messages_sent=10 + i,
            messages_received=20 + i,
            messages_rejected=i % 2,
            models_rejected=i % 3,
            byzantine=i in byzantine,
        )
        for i in range(nodes)
    ]
    return EmulationResult(
        config,
        round_rows,
        node_rows,
        list(churn),
        wall_s=0.1,
        stalled=stalled,
        rounds_reached=rounds,
        graph=nx.cycle_graph(nodes),
    )


def make_scenario(target=0.7):
    results = {"plain": make_result(), "attacked": make_result(byzantine=(1,), accuracy=0.3)}
    variants = tuple(Variant(name, r.config) for name, r in results.items())
    return ScenarioResult(Scenario("demo", "", target, variants), results)


def read_csv(path):
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width > 100 and height > 100
    assert len(data) > 5000, f"{path.name} is suspiciously small ({len(data)} bytes)"


# CSV


def test_csv_of_a_scenario_has_a_row_per_variant_and_round_and_per_variant_and_node(tmp_path):
    scenario = make_scenario()
    rounds_path, nodes_path = write_csv(scenario, tmp_path / "out")
    rounds, nodes = read_csv(rounds_path), read_csv(nodes_path)
    assert list(rounds[0]) == list(ROUND_COLUMNS)
    assert list(nodes[0]) == list(NODE_COLUMNS)
    assert len(rounds) == 2 * 3 and len(nodes) == 2 * 4
    for name, result in scenario.results.items():
        rows = [row for row in rounds if row["variant"] == name]
        for row, summary in zip(rows, result.rounds, strict=True):
            assert int(row["round"]) == summary.round
            assert float(row["mean_accuracy"]) == summary.mean_accuracy  # floats round-trip exactly
            assert float(row["min_accuracy"]) == summary.min_accuracy
            assert float(row["max_accuracy"]) == summary.max_accuracy
            assert int(row["nodes"]) == summary.nodes
            assert int(row["bytes_sent"]) == summary.bytes_sent
            assert int(row["messages_sent"]) == summary.messages_sent
            assert float(row["virtual_time"]) == summary.virtual_time
        rows = [row for row in nodes if row["variant"] == name]
        for row, summary in zip(rows, result.nodes, strict=True):
            assert row["peer"] == summary.peer
            assert row["byzantine"] == str(summary.byzantine)
            for column in ("rounds_recorded", "bytes_sent", "bytes_received", "messages_sent"):
                assert int(row[column]) == getattr(summary, column)
            for column in ("messages_received", "messages_rejected", "models_rejected"):
                assert int(row[column]) == getattr(summary, column)
            expected = "" if summary.final_accuracy is None else str(summary.final_accuracy)
            assert row["final_accuracy"] == expected
    assert [r["state"] for r in nodes if r["variant"] == "attacked"] == [
        "honest",
        "byzantine",
        "honest",
        "honest",
    ]


def test_csv_of_a_single_run_is_the_default_variant_and_an_empty_run_has_headers_only(tmp_path):
    rounds_path, _ = write_csv(make_result(rounds=2), tmp_path)
    assert {row["variant"] for row in read_csv(rounds_path)} == {"default"}
    empty = EmulationResult(make_result().config, [], [], [], wall_s=0.0)
    rounds_path, nodes_path = write_csv(empty, tmp_path / "empty")
    assert rounds_path.read_text().strip() == ",".join(ROUND_COLUMNS)
    assert nodes_path.read_text().strip() == ",".join(NODE_COLUMNS)


# Node states


def test_node_states_follow_churn_that_was_reached_and_byzantine_flags():
    churn = [
        PlannedEvent(1, "crash", (0,)),
        PlannedEvent(2, "leave", (1,)),
        PlannedEvent(2, "join", (2, 4)),
        PlannedEvent(9, "crash", (3,)),  # past the run's rounds: never applied
    ]
    result = make_result(nodes=6, rounds=3, byzantine=(1, 4), churn=churn)
    assert node_states(result) == {
        0: "crashed",
        1: "left",  # churn wins over byzantine
        2: "joined",
        3: "honest",
        4: "byzantine",  # a byzantine joiner is shown as byzantine
        5: "honest",
    }


def test_a_run_that_ended_early_counts_churn_only_up_to_the_round_it_reached():
    churn = [PlannedEvent(2, "crash", (0,)), PlannedEvent(3, "join", (1,))]
    full = make_result(rounds=3, churn=churn, stalled=True)
    # Evaluated up to round 1 only: the state still follows the rounds reached, not the evaluations.
    stalled = EmulationResult(
        full.config, full.rounds[:1], full.nodes, churn, wall_s=0.1, stalled=True, rounds_reached=2
    )
    assert node_states(stalled) == {0: "crashed", 1: "absent", 2: "honest", 3: "honest"}


def test_node_states_mark_the_named_side_of_a_partition_still_in_force_at_the_end():
    split = PlannedEvent(1, "partition", (0, 1, 2))
    healed = [split, PlannedEvent(2, "heal", ())]
    assert set(node_states(make_result(nodes=5, churn=healed)).values()) == {"honest"}
    churn = [
        split,
        PlannedEvent(2, "crash", (0,)),
        PlannedEvent(2, "partition", (0, 2, 3)),  # replaces the first split
        PlannedEvent(9, "heal", ()),  # past the run's rounds: never applied
    ]
    assert node_states(make_result(nodes=5, byzantine=(3,), churn=churn)) == {
        0: "crashed",  # a crash wins over the partition
        1: "honest",  # on the first split's side only
        2: "partitioned",
        3: "partitioned",  # the partition wins over byzantine, as churn does
        4: "honest",
    }


def test_states_by_label_maps_indices_onto_sorted_labels():
    graph = nx.Graph([("b", "a"), ("a", "c")])
    assert states_by_label(graph, {0: "crashed", 2: "left"}) == {"a": "crashed", "b": "honest", "c": "left"}


# Plots


def test_accuracy_plots_are_pngs_for_a_scenario_and_a_single_run(tmp_path):
    paths = plot_accuracy(make_scenario(), tmp_path / "scenario")
    assert [p.name for p in paths] == [
        "accuracy_vs_round.png",
        "accuracy_vs_time.png",
        "accuracy_vs_bytes.png",
    ]
    for path in paths:
        assert_png(path)
    for path in plot_accuracy(make_result(), tmp_path / "single", target=0.9):
        assert_png(path)
    empty = EmulationResult(make_result().config, [], [], [], wall_s=0.0)
    for path in plot_accuracy(empty, tmp_path / "empty"):
        assert_png(path)


def test_topology_plot_colours_nodes_by_state(tmp_path):
    graph = nx.cycle_graph(8)
    states = {0: "byzantine", 1: "crashed", 2: "left", 3: "joined", 4: "absent", 5: "partitioned"}
    path = plot_topology(graph, states, tmp_path / "pics" / "topology.png")
    assert path.exists()
    assert_png(path)
    with pytest.raises(ValueError, match="unknown node states"):
        plot_topology(graph, {0: "sleepy"}, tmp_path / "bad.png")


def test_topology_plot_takes_any_seed_a_run_takes(tmp_path):
    # Seeds are any integer >= 0; numpy's legacy seeding under spring_layout takes < 2**32 only.
    assert_png(plot_topology(nx.cycle_graph(4), {}, tmp_path / "big-seed.png", seed=2**63 - 1))


def test_topology_plot_of_a_big_graph_samples_nodes_and_stays_fast(tmp_path):
    graph = nx.random_regular_graph(4, 2000, seed=1)
    states = {n: "crashed" for n in range(0, 2000, 5)}
    path = plot_topology(graph, states, tmp_path / "big.png", max_nodes=300)
    assert_png(path)


def test_topology_of_is_the_graph_the_emulator_used(monkeypatch):
    import simulations.run_setup as run_setup

    built = []
    original = run_setup.build_topology

    def capture(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(run_setup, "build_topology", capture)
    config = EmulationConfig(
        nodes=6, rounds=1, topology="random_regular", topology_params={"degree": 3}, local_steps=1, seed=5
    )
    result = run_emulation(config)
    (used,) = built
    assert nx.utils.graphs_equal(topology_of(result), used)
    with pytest.raises(ValueError, match="no graph"):
        topology_of(EmulationResult(config, [], [], [], wall_s=0.0))


def test_write_plots_names_a_topology_per_variant(tmp_path):
    names = sorted(p.name for p in write_plots(make_scenario(), tmp_path))
    assert names == sorted(
        [
            "accuracy_vs_round.png",
            "accuracy_vs_time.png",
            "accuracy_vs_bytes.png",
            "topology-plain.png",
            "topology-attacked.png",
        ]
    )
    assert "topology.png" in {p.name for p in write_plots(make_result(), tmp_path / "single")}


def test_variant_names_that_sanitise_alike_get_topologies_of_their_own(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(
        plots, "plot_topology", lambda graph, states, path, *, seed, title: drawn.setdefault(path.name, title)
    )
    ring = tmp_path / "ring.edgelist"
    ring.write_text("".join(f"{i} {(i + 1) % 4}\n" for i in range(4)))
    from_file = make_result()
    from_file = dataclasses.replace(
        from_file, config=dataclasses.replace(from_file.config, topology_file=str(ring))
    )
    results = {"a b": make_result(), "a/b": from_file, "a_b-2": make_result()}
    variants = tuple(Variant(name, r.config) for name, r in results.items())
    write_plots(ScenarioResult(Scenario("demo", "", None, variants), results), tmp_path)
    assert drawn == {
        "topology-a_b.png": "a b: ring, 4 nodes, final states",
        "topology-a_b-2.png": "a/b: ring.edgelist, 4 nodes, final states",  # the file, not `topology`
        "topology-a_b-2-3.png": "a_b-2: ring, 4 nodes, final states",
    }


def test_a_numbered_topology_file_name_is_not_one_an_earlier_variant_took(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(
        plots, "plot_topology", lambda graph, states, path, *, seed, title: drawn.setdefault(path.name, title)
    )
    results = {name: make_result() for name in ("a_b-3", "a b", "a/b")}
    variants = tuple(Variant(name, r.config) for name, r in results.items())
    write_plots(ScenarioResult(Scenario("demo", "", None, variants), results), tmp_path)
    # "a/b", third, would be numbered topology-a_b-3.png: the first variant's file.
    assert sorted(title.split(":")[0] for title in drawn.values()) == ["a b", "a/b", "a_b-3"]


# Progress bar


def test_progress_bar_is_off_when_not_a_terminal_unless_forced():
    quiet = io.StringIO()
    with ProgressBar(file=quiet) as bar:
        assert isinstance(bar, ProgressReporter)
        bar.update(1, 4)
    assert quiet.getvalue() == "" and bar.position == 0

    shown = io.StringIO()
    with ProgressBar("gossip", enabled=True, file=shown) as bar:
        bar.update(1, 4)
        bar.update(3, 4)
        bar.update(2, 4)  # rounds only move it forwards
        assert bar.position == 3
        bar.update(4, 4)
    assert "gossip" in shown.getvalue() and "4/4" in shown.getvalue()
    bar.update(5, 5)  # after closing: ignored
    assert bar.position == 4


# CLI

TINY = """
name = "tiny"
target_accuracy = 0.5

[base]
nodes = 4
rounds = 2
topology = "ring"
local_steps = 2

[[variants]]
name = "gossip"
"""


def test_the_comparison_shows_rounds_and_traffic_to_the_target_only_when_there_is_one():
    with_target = format_comparison(make_scenario(target=0.7)).splitlines()
    assert with_target[0].endswith("rounds/MiB to 0.7")
    # make_result's mean accuracy climbs by 0.1 a round: plain (0.5 + 0.1 r) gets there at round 2.
    assert with_target[1].split()[0] == "plain" and with_target[1].endswith("2 / 0.00")
    assert with_target[2].endswith("not reached")
    without = format_comparison(make_scenario(target=None)).splitlines()
    assert "rounds/MiB" not in without[0] and "None" not in "\n".join(without)
    assert without[1].split() == ["plain", "0.8000", "0.00", "0.1"]


def test_cli_writes_csv_and_plots_for_a_scenario_file(tmp_path):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    out = CliRunner().invoke(
        main,
        ["sim", "run", str(scenario), "--csv", str(tmp_path / "csv"), "--plots", str(tmp_path / "plots")],
    )
    assert out.exit_code == 0, out.output
    rounds = read_csv(tmp_path / "csv" / "rounds.csv")
    assert [(r["variant"], r["round"]) for r in rounds] == [("gossip", "1"), ("gossip", "2")]
    assert len(read_csv(tmp_path / "csv" / "nodes.csv")) == 4
    for name in ("accuracy_vs_round", "accuracy_vs_time", "accuracy_vs_bytes", "topology-gossip"):
        assert_png(tmp_path / "plots" / f"{name}.png")
    assert "plots written" in out.output and "tables written" in out.output


def test_cli_writes_csv_and_plots_for_a_run_partitioned_until_its_end(tmp_path):
    scenario = tmp_path / "split.toml"
    split = 'name = "split"\nchurn = [{ round = 1, action = "partition", fraction = 0.5 }]'
    scenario.write_text(TINY.replace('name = "gossip"', split))
    out = CliRunner().invoke(
        main,
        ["sim", "run", str(scenario), "--csv", str(tmp_path / "csv"), "--plots", str(tmp_path / "plots")],
    )
    assert out.exit_code == 0, out.output
    states = [row["state"] for row in read_csv(tmp_path / "csv" / "nodes.csv")]
    assert sorted(states) == ["honest", "honest", "partitioned", "partitioned"]
    assert_png(tmp_path / "plots" / "topology-split.png")


def test_cli_writes_csv_and_plots_for_the_default_run(tmp_path):
    out = CliRunner().invoke(
        main,
        [
            "sim",
            "run",
            "--nodes",
            "4",
            "--topology",
            "ring",
            "--rounds",
            "2",
            "--local-steps",
            "2",
            "--no-progress",
            "--csv",
            str(tmp_path / "csv"),
            "--plots",
            str(tmp_path / "plots"),
        ],
    )
    assert out.exit_code == 0, out.output
    assert {r["variant"] for r in read_csv(tmp_path / "csv" / "rounds.csv")} == {"default"}
    assert_png(tmp_path / "plots" / "topology.png")
    assert_png(tmp_path / "plots" / "accuracy_vs_bytes.png")


def test_run_emulation_reports_each_new_round_to_a_progress_reporter():
    seen = []

    class Recorder:
        def update(self, round, total):
            seen.append((round, total))

    run_emulation(EmulationConfig(nodes=4, rounds=3, local_steps=1, topology="ring"), progress=Recorder())
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_cli_creates_output_folders_and_refuses_one_it_cannot_create_before_running(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = CliRunner().invoke(main, ["sim", "run", "--nodes", "6", "--json", str(blocker / "x" / "s.json")])
    assert out.exit_code == 2 and "--json" in out.output and "cannot create" in out.output
    assert "round" not in out.output  # refused before running
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    deep = tmp_path / "new" / "deeper" / "summary.json"
    out = CliRunner().invoke(main, ["sim", "run", str(scenario), "--json", str(deep)])
    assert out.exit_code == 0, out.output
    assert json.loads(deep.read_text())["variants"]["gossip"]["final_mean_accuracy"] is not None


def test_an_output_that_cannot_be_written_after_the_run_is_an_error_and_the_others_are_written(tmp_path):
    # A folder where rounds.csv should go: found only when writing, after the run (root may write
    # anywhere, so this is how a test makes a write fail).
    (tmp_path / "csv" / "rounds.csv").mkdir(parents=True)
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    summary = tmp_path / "summary.json"
    outputs = ["--csv", str(tmp_path / "csv"), "--json", str(summary), "--plots", str(tmp_path / "plots")]
    out = CliRunner().invoke(main, ["sim", "run", str(scenario), *outputs])
    assert out.exit_code == 1 and isinstance(out.exception, SystemExit), out.output  # not the OSError
    assert f"--csv: cannot write {tmp_path / 'csv' / 'rounds.csv'}: Is a directory" in out.output
    assert json.loads(summary.read_text())["variants"]["gossip"]["final_mean_accuracy"] is not None
    assert_png(tmp_path / "plots" / "topology-gossip.png")  # written after the CSV failed


def test_cli_creates_no_output_folder_for_settings_it_refuses(tmp_path):
    plots_dir = tmp_path / "plots"
    # The default 4-regular topology has no graph on 4 nodes.
    out = CliRunner().invoke(main, ["sim", "run", "--nodes", "4", "--plots", str(plots_dir)])
    assert out.exit_code == 2 and "no 4-regular graph on 4 nodes" in out.output
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[base]\nrounds = 0\n')
    out = CliRunner().invoke(main, ["sim", "run", str(bad), "--plots", str(plots_dir)])
    assert out.exit_code == 2 and "rounds must be >= 1" in out.output
    assert not plots_dir.exists()


def test_reports_name_the_graph_a_run_was_given_not_the_configs_topology(tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr(
        plots, "plot_topology", lambda graph, states, path, *, seed, title: titles.append(title)
    )
    config = EmulationConfig(nodes=6, rounds=1, local_steps=1)  # topology: random_regular
    named = run_emulation(config, graph=nx.cycle_graph(6))
    assert config.topology == "random_regular"
    assert named.topology == "caller's graph"
    lab = nx.barbell_graph(3, 0)
    lab.name = "lab"
    assert run_emulation(config, graph=lab).topology == "caller's graph 'lab'"
    own = run_emulation(dataclasses.replace(config, topology="ring", topology_params={}))
    assert own.topology == "ring" and own.to_json()["topology"] == "ring"
    assert named.to_json()["topology"] == "caller's graph"
    write_plots(named, tmp_path)
    assert titles == ["default: caller's graph, 6 nodes, final states"]
