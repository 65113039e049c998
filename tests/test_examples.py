"""The examples run as their docstrings say, and show what they claim."""

import os
import subprocess
import sys
from pathlib import Path

from simulations.emulator import run_emulation
from simulations.scenario import check_scenario

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def test_the_custom_rule_example_holds_where_plain_averaging_breaks(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES / "custom_rule"))
    scenario, tasks = check_scenario(EXAMPLES / "custom_rule" / "compare.toml")
    final = {
        v.name: run_emulation(v.config, task=tasks[v.name]).final_mean_accuracy for v in scenario.variants
    }
    assert final["fedavg"] < 0.3  # a quarter of sign-flippers ruin plain averaging
    assert final["distance_filter"] > 0.8 and final["median"] > 0.8


def test_the_custom_task_example_runs_from_its_scenario(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES / "custom_task"))
    scenario, tasks = check_scenario(EXAMPLES / "custom_task" / "compare.toml")
    final = {
        v.name: run_emulation(v.config, task=tasks[v.name]).final_mean_accuracy for v in scenario.variants
    }
    assert final["ring-iid"] > 0.85  # half-moons are learnt
    assert final["ring-skewed"] < final["ring-iid"] and final["ring-skewed"] < final["complete-skewed"]


def test_the_custom_protocol_example_talks_every_fifth_round(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES / "custom_protocol"))
    scenario, tasks = check_scenario(EXAMPLES / "custom_protocol" / "compare.toml")
    runs = {v.name: run_emulation(v.config, task=tasks[v.name]) for v in scenario.variants}
    dpsgd, periodic = runs["dpsgd"], runs["every-5"]
    assert periodic.messages_sent * 5 == dpsgd.messages_sent  # rounds 5, 10, ..., 30 of 30
    assert periodic.final_mean_accuracy > 0.8 and dpsgd.final_mean_accuracy > 0.8


def test_the_python_example_shows_the_graph_matters_under_skew():
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "emulate_in_python.py"), "--rounds", "5"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
        check=True,
    )
    final = {line.split()[0]: float(line.split()[1]) for line in done.stdout.splitlines()[1:4]}
    assert final.keys() == {"barbell", "ring", "complete"}
    assert final["complete"] > final["barbell"] + 0.2 and final["complete"] > final["ring"] + 0.2
