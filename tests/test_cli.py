import json
import sys

from click.testing import CliRunner

from p2pfl.cli import main


def test_sim_run_prints_a_table_and_writes_the_json_summary(tmp_path):
    out = tmp_path / "summary.json"
    result = CliRunner().invoke(
        main, ["sim", "run", "--nodes", "4", "--rounds", "3", "--topology", "ring", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "final mean accuracy" in result.output
    summary = json.loads(out.read_text())
    assert {"final_mean_accuracy", "rounds", "bytes_sent", "wall_s"} <= summary.keys()
    assert len(summary["rounds"]) == 3 and summary["config"]["nodes"] == 4


def test_sim_run_reports_a_bad_setting_as_a_usage_error():
    result = CliRunner().invoke(main, ["sim", "run", "--nodes", "5", "--degree", "3"])
    assert result.exit_code == 2
    assert "degree" in result.output


def test_sim_run_runs_a_scenario_file(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'name = "cli"\ntarget_accuracy = 0.0\n[base]\nnodes = 4\nrounds = 2\ntopology = "ring"\n'
        '[[variants]]\nname = "a"\n[[variants]]\nname = "b"\nprotocol = "dpsgd"\n'
    )
    out = tmp_path / "out.json"
    result = CliRunner().invoke(main, ["sim", "run", str(scenario), "--seed", "3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "== a" in result.output and "== b" in result.output
    summary = json.loads(out.read_text())
    assert set(summary["variants"]) == {"a", "b"}
    assert summary["variants"]["b"]["config"]["seed"] == 3
    assert summary["variants"]["a"]["rounds_to_target"] == 1


def test_sim_run_writes_strict_json_even_for_infinite_values(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "cli"\n[base]\nnodes = 4\nrounds = 1\ntopology = "ring"\nbandwidth = inf\n')
    out = tmp_path / "out.json"
    result = CliRunner().invoke(main, ["sim", "run", str(scenario), "--json", str(out)])
    assert result.exit_code == 0, result.output

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    summary = json.loads(out.read_text(), parse_constant=refuse)
    assert summary["variants"]["default"]["config"]["bandwidth"] is None


def test_sim_run_checks_every_variant_before_running_any(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'name = "late"\n[base]\nnodes = 6\nrounds = 3\ntopology = "ring"\n[[variants]]\nname = "good"\n'
        '[[variants]]\nname = "bad"\nchurn = [{ round = 1, action = "crash", nodes = [1] },'
        ' { round = 2, action = "crash", nodes = [1] }]\n'
    )
    out = tmp_path / "out.json"
    result = CliRunner().invoke(main, ["sim", "run", str(scenario), "--json", str(out)])
    assert result.exit_code == 2
    assert "variants[1] (bad): churn at round 2: nodes [1] are not running then" in result.output
    assert "== good" not in result.output and not out.exists()  # nothing ran


def test_sim_run_refuses_a_split_with_an_empty_part_in_one_line():
    result = CliRunner().invoke(
        main, ["sim", "run", "--nodes", "64", "--partition", "dirichlet", "--alpha", "0.001"]
    )
    assert result.exit_code == 2
    assert "partition: could not give each of 64 parts a sample" in result.output
    assert "Traceback" not in result.output


def test_sim_run_takes_a_period_long_enough_for_many_local_steps():
    # 1,000 steps of 1 ms do not fit the default 1 s round; the error says to raise period.
    args = ["sim", "run", "--nodes", "4", "--topology", "ring", "--rounds", "1", "--local-steps", "1000"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "period (1.0 s) must exceed training time" in refused.output
    result = CliRunner().invoke(main, [*args, "--period", "2"])
    assert result.exit_code == 0, result.output
    assert "virtual s" in result.output and "2.00" in result.output.splitlines()[1]


def test_sim_run_refuses_options_beside_a_scenario_file(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "cli"\n')
    result = CliRunner().invoke(main, ["sim", "run", str(scenario), "--nodes", "8"])
    assert result.exit_code == 2 and "cannot be combined" in result.output


def test_sim_run_gives_degree_and_p_to_watts_strogatz_as_to_its_alias_small_world(tmp_path):
    for topology in ("small_world", "watts_strogatz"):
        out = tmp_path / f"{topology}.json"
        args = ["--nodes", "8", "--rounds", "1", "--degree", "6", "--p", "0.5", "--json", str(out)]
        result = CliRunner().invoke(main, ["sim", "run", "--topology", topology, *args])
        assert result.exit_code == 0, result.output
        assert json.loads(out.read_text())["config"]["topology_params"] == {"k": 6, "p": 0.5}


def test_sim_check_validates_files_without_running_them(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('name = "good"\n[base]\nnodes = 6\nrounds = 3\ntopology = "ring"\n')
    late = tmp_path / "late.toml"
    late.write_text(
        'name = "late"\n[base]\nnodes = 6\nrounds = 3\ntopology = "ring"\n[[variants]]\nname = "ok"\n'
        '[[variants]]\nname = "twice"\nchurn = [{ round = 1, action = "crash", nodes = [1] },'
        ' { round = 2, action = "crash", nodes = [1] }]\n'
        '[[variants]]\nname = "never"\nchurn = [{ round = 9, action = "crash", nodes = [1] }]\n'
    )
    typo = tmp_path / "typo.toml"
    typo.write_text('name = "typo"\n[base]\nnodez = 6\n')
    runner = CliRunner()
    result = runner.invoke(main, ["sim", "check", str(good), str(late), str(typo)])
    assert result.exit_code == 1
    assert result.stdout == f"{good}: ok, 1 variant(s): default\n"
    errors = result.stderr.splitlines()
    assert errors[0] == f"{late}: variants[1] (twice): churn at round 2: nodes [1] are not running then"
    assert errors[1].startswith(f"{late}: variants[2] (never): churn at round 9")
    assert errors[2].startswith(f"{typo}: variants[0] (default): nodez")
    assert errors[3] == "2 of 3 scenario file(s) invalid"
    assert "final mean accuracy" not in result.output  # nothing ran

    result = runner.invoke(main, ["sim", "check", str(good), "--seed", "3"])
    assert result.exit_code == 0 and result.stderr == ""


def test_sim_run_jobs_runs_a_scenarios_variants_at_once(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'name = "cli"\n[base]\nnodes = 4\nrounds = 2\ntopology = "ring"\n'
        '[[variants]]\nname = "a"\n[[variants]]\nname = "b"\nprotocol = "dpsgd"\n'
    )
    runner = CliRunner()
    at_once = runner.invoke(
        main, ["sim", "run", str(scenario), "--jobs", "2", "--json", str(tmp_path / "2.json")]
    )
    assert at_once.exit_code == 0, at_once.output
    assert at_once.output.index("== a") < at_once.output.index("== b")
    in_turn = runner.invoke(main, ["sim", "run", str(scenario), "--json", str(tmp_path / "1.json")])
    finals = [
        {
            name: v["final_mean_accuracy"]
            for name, v in json.loads((tmp_path / f).read_text())["variants"].items()
        }
        for f in ("1.json", "2.json")
    ]
    assert in_turn.exit_code == 0 and finals[0] == finals[1]

    refused = runner.invoke(main, ["sim", "run", str(scenario), "--jobs", "0"])
    assert refused.exit_code == 2 and "--jobs" in refused.output
    alone = runner.invoke(main, ["sim", "run", "--nodes", "4", "--jobs", "2"])
    assert alone.exit_code == 2 and "--jobs runs the variants of a scenario file" in alone.output


def test_sim_finds_a_rule_in_a_module_beside_the_scenario_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI puts the scenario's folder on it
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "own_rule.py").write_text(
        "from p2pfl.aggregation import Aggregator\n\n"
        "class KeepOwn(Aggregator):\n"
        "    def aggregate(self, own, received):\n"
        "        return own.state\n"
    )
    scenario = folder / "s.toml"
    scenario.write_text(
        'name = "own"\n[base]\nnodes = 4\nrounds = 2\ntopology = "ring"\naggregation = "own_rule:KeepOwn"\n'
    )
    assert "own_rule" not in sys.modules
    result = CliRunner().invoke(main, ["sim", "check", str(scenario)])
    assert result.exit_code == 0, result.output
    assert sys.path[0] == str(folder.resolve())
    result = CliRunner().invoke(main, ["sim", "run", str(scenario)])
    assert result.exit_code == 0, result.output
    assert "final mean accuracy" in result.output


def test_sim_run_takes_the_protocol_and_the_rule(tmp_path):
    out = tmp_path / "summary.json"
    args = ["sim", "run", "--nodes", "6", "--rounds", "2", "--topology", "ring", "--json", str(out)]
    result = CliRunner().invoke(main, [*args, "--protocol", "dpsgd", "--aggregation", "median"])
    assert result.exit_code == 0, result.output
    config = json.loads(out.read_text())["config"]
    assert (config["protocol"], config["aggregation"]) == ("dpsgd", "median")
    refused = CliRunner().invoke(main, [*args, "--aggregation", "krumm"])
    assert refused.exit_code == 2 and "aggregation: unknown rule 'krumm'" in refused.output
    refused = CliRunner().invoke(main, [*args, "--protocol", "flood"])
    assert refused.exit_code == 2 and "'flood' is not one of" in refused.output


def test_sim_run_shards_overrides_a_scenario_and_runs_beside_jobs(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'name = "cli"\n[base]\nnodes = 8\nrounds = 2\ntopology = "ring"\nprotocol = "dpsgd"\n'
        '[[variants]]\nname = "a"\n[[variants]]\nname = "b"\nseed = 1\n'
    )
    out = tmp_path / "out.json"
    args = ["sim", "run", str(scenario), "--shards", "2", "--jobs", "2", "--json", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    variants = json.loads(out.read_text())["variants"]
    assert {name: v["config"]["shards"] for name, v in variants.items()} == {"a": 2, "b": 2}
    assert all(v["node_rounds"] == 16 for v in variants.values())

    result = CliRunner().invoke(main, ["sim", "run", "--nodes", "8", "--rounds", "1", "--shards", "2"])
    assert result.exit_code == 0, result.output


def test_sim_check_shards_refuses_shards_without_latency_between_them(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "instant"\n[base]\nnodes = 8\nrounds = 2\ntopology = "ring"\nlatency = 0.0\n')
    runner = CliRunner()
    assert runner.invoke(main, ["sim", "check", str(scenario)]).exit_code == 0
    result = runner.invoke(main, ["sim", "check", str(scenario), "--shards", "2"])
    assert result.exit_code == 1
    assert "shards: 2 shards need every message between them to take time" in result.stderr
