import pytest

from p2pfl.errors import ConfigError
from simulations import scenario as scenario_module
from simulations.emulator import NodeFailed
from simulations.scenario import check_variants, load_scenario, run_scenario

SMALL = """
name = "small"
target_accuracy = {target}

[base]
nodes = 4
rounds = 3
topology = "ring"
topology_params = {{}}
local_steps = 3

[[variants]]
name = "gossip"

[[variants]]
name = "dpsgd"
protocol = "dpsgd"
"""


def write(tmp_path, text):
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


def test_variants_inherit_the_base_and_override_their_own_fields(tmp_path):
    scenario = load_scenario(write(tmp_path, SMALL.format(target=0.5)))
    assert [v.name for v in scenario.variants] == ["gossip", "dpsgd"]
    assert [v.config.protocol for v in scenario.variants] == ["gossip", "dpsgd"]
    assert all(v.config.nodes == 4 and v.config.topology == "ring" for v in scenario.variants)


def test_integer_topology_parameters_stay_integers(tmp_path):
    text = 'name = "x"\n[base]\nnodes = 6\nrounds = 1\ntopology_params = { degree = 2 }\n'
    (variant,) = load_scenario(write(tmp_path, text)).variants
    assert variant.config.topology_params == {"degree": 2}
    assert type(variant.config.topology_params["degree"]) is int
    assert len(run_scenario(load_scenario(write(tmp_path, text))).results["default"].rounds) == 1


def test_seed_override_applies_to_every_variant(tmp_path):
    scenario = load_scenario(write(tmp_path, SMALL.format(target=0.5)), seed=9)
    assert {v.config.seed for v in scenario.variants} == {9}


def test_json_reports_rounds_and_bytes_to_target_or_null(tmp_path):
    reached = run_scenario(load_scenario(write(tmp_path, SMALL.format(target=0.0)))).to_json()
    assert set(reached["variants"]) == {"gossip", "dpsgd"}
    for summary in reached["variants"].values():
        assert summary["rounds_to_target"] == 1
        assert summary["bytes_to_target"] == summary["rounds"][0]["bytes_sent"] > 0
        assert {"final_mean_accuracy", "rounds", "bytes_sent", "wall_s"} <= summary.keys()
    never = run_scenario(load_scenario(write(tmp_path, SMALL.format(target=1.0)))).to_json()
    assert all(
        s["rounds_to_target"] is None and s["bytes_to_target"] is None for s in never["variants"].values()
    )


def test_a_file_without_variants_is_one_default_variant(tmp_path):
    scenario = load_scenario(write(tmp_path, 'name = "one"\n[base]\nnodes = 3\ntopology = "ring"\n'))
    assert [v.name for v in scenario.variants] == ["default"]
    assert scenario.variants[0].config.nodes == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = ", "scenario.toml"),  # not TOML
        ('nam = "x"', "name"),  # missing required, unknown key
        ('name = "x"\ncolour = 1', "colour"),
        ('name = "x"\n[base]\nnodez = 3', "variants\\[0\\] \\(default\\): nodez"),
        ('name = "x"\n[base]\nnodes = "many"', "nodes must be an integer, got 'many'"),
        ('name = "x"\n[base]\nnodes = 1', "nodes must be >= 2"),
        ('name = "x"\n[base]\nprotocol = "flood"', "protocol must be one of"),
        ('name = "x"\n[base]\ninit = "random"', "init must be"),
        ('name = "x"\n[base]\nhidden = "wide"', "hidden"),
        ('name = "x"\n[[variants]]\nnodes = 3', "variants\\[0\\].name"),
        ('name = "x"\n[[variants]]\nname = "a"\n[[variants]]\nname = "a"', "duplicate variant name"),
        ('name = "x"\ntarget_accuracy = "high"', "target_accuracy"),
        ('name = "x"\ntarget_accuracy = 80', r"target_accuracy must be in \[0, 1\], got 80"),
        ('name = "x"\ntarget_accuracy = nan', r"target_accuracy must be in \[0, 1\], got nan"),
        ('name = "x"\ntarget_accuracy = true', "target_accuracy must be a number, got true"),
    ],
)
def test_errors_name_the_file_and_field(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_scenario(write(tmp_path, text))


def test_a_relative_topology_file_is_found_beside_the_scenario(tmp_path, monkeypatch):
    (tmp_path / "graphs").mkdir()
    (tmp_path / "graphs" / "ring.edgelist").write_text("".join(f"{i} {(i + 1) % 4}\n" for i in range(4)))
    path = write(tmp_path, 'name = "x"\n[base]\nnodes = 4\ntopology_file = "graphs/ring.edgelist"\n')
    monkeypatch.chdir("/")  # not where the scenario is
    (variant,) = load_scenario(path).variants
    assert variant.config.topology_file == str(tmp_path / "graphs" / "ring.edgelist")


def test_every_bad_variant_is_reported_at_once(tmp_path):
    text = (
        'name = "x"\n[base]\nnodes = 8\n'
        '[[variants]]\nname = "slow"\nlr = -1.0\n'
        '[[variants]]\nname = "fine"\n'
        '[[variants]]\nname = "typo"\nroundz = 3\n'
        '[[variants]]\nname = "fine"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_scenario(write(tmp_path, text))
    lines = str(caught.value).splitlines()
    assert len(lines) == 3
    assert lines[0].endswith("variants[0] (slow): lr must be > 0 and finite, got -1.0")
    assert "variants[2] (typo): roundz" in lines[1]
    assert lines[2].endswith("variants[3].name: duplicate variant name 'fine'")


def test_run_scenario_checks_every_variant_before_running_any(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(scenario_module, "run_emulation", lambda config: ran.append(config))
    text = (
        'name = "x"\n[base]\nnodes = 4\nrounds = 2\ntopology = "ring"\n[[variants]]\nname = "good"\n'
        '[[variants]]\nname = "bad"\nchurn = [{ round = 1, action = "crash", nodes = [1] },'
        ' { round = 2, action = "leave", nodes = [1] }]\n'
    )
    with pytest.raises(ConfigError, match=r"variants\[1\] \(bad\): churn at round 2: nodes \[1\] are not"):
        run_scenario(load_scenario(write(tmp_path, text)))
    assert ran == []


def test_every_variant_that_fails_its_run_check_is_reported_at_once(tmp_path):
    text = (
        'name = "x"\n[base]\nnodes = 4\nrounds = 2\ntopology = "ring"\n'
        '[[variants]]\nname = "crash_twice"\nchurn = [{ round = 1, action = "crash", nodes = [1] },'
        ' { round = 2, action = "crash", nodes = [1] }]\n'
        '[[variants]]\nname = "good"\n'
        '[[variants]]\nname = "big_sample"\nprotocol = "modest"\nprotocol_params = { s = 9 }\n'
    )
    with pytest.raises(ConfigError) as caught:
        check_variants(load_scenario(write(tmp_path, text)))
    lines = str(caught.value).splitlines()
    assert [line.split(":")[0] for line in lines] == ["variants[0] (crash_twice)", "variants[2] (big_sample)"]
    assert "s=9 exceeds the 4 nodes" in lines[1]


TIMINGS = {"wall_s", "peak_rss_mib", "node_rounds_per_s", "rounds_per_minute"}


def test_variants_run_in_processes_give_the_results_they_give_in_turn(tmp_path):
    scenario = load_scenario(write(tmp_path, SMALL.format(target=0.5)))
    in_turn = run_scenario(scenario).to_json()["variants"]
    at_once = run_scenario(scenario, jobs=2).to_json()["variants"]
    assert list(at_once) == ["gossip", "dpsgd"]  # the file's order, whichever ended first
    for name, summary in in_turn.items():
        assert {k: v for k, v in at_once[name].items() if k not in TIMINGS} == {
            k: v for k, v in summary.items() if k not in TIMINGS
        }


def test_jobs_must_be_at_least_one(tmp_path):
    scenario = load_scenario(write(tmp_path, SMALL.format(target=0.5)))
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        list(scenario_module.run_in_processes(scenario.variants, jobs=0))


def test_a_variant_that_fails_in_its_process_raises_its_error_here(tmp_path, monkeypatch):
    (tmp_path / "failing_protocol.py").write_text(
        "from dataclasses import dataclass\n"
        "from gossip.protocol import RoundProtocol\n\n"
        "@dataclass(frozen=True)\n"
        "class Fails(RoundProtocol):\n"
        "    rounds: int\n"
        "    period: float\n"
        "    seed: int\n\n"
        "    async def run(self, transport, learning):\n"
        "        raise RuntimeError('the protocol broke')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned processes get the parent's path
    text = SMALL.format(target=0.5) + '\n[[variants]]\nname = "broken"\nprotocol = "failing_protocol:Fails"\n'
    scenario = load_scenario(write(tmp_path, text))
    for jobs in (1, 2):  # in a process of its own or not: the first node's error, once
        with pytest.raises(
            NodeFailed, match=r"^node \d+ \(\w+\) failed at virtual time 0 s: RuntimeError"
        ) as caught:
            run_scenario(scenario, jobs=jobs)
        assert (
            isinstance(caught.value.cause, RuntimeError) and str(caught.value.cause) == "the protocol broke"
        )
