"""The scenario files in scenarios/ are valid, and the scale ones run (shrunk to a test's size)."""

from dataclasses import replace
from pathlib import Path

import pytest

from simulations.emulator import run_emulation
from simulations.scenario import check_scenario, load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_scenario_passes_every_check(path):
    """Fields and what only a run's setup shows (`p2pfl sim check`)."""
    scenario, tasks = check_scenario(path)
    assert scenario.variants and tasks.keys() == {variant.name for variant in scenario.variants}


@pytest.mark.parametrize("name", ["scale_modest_100k", "scale_dpsgd_10k", "scale_dpsgd_ws_1k"])
def test_the_scale_scenarios_run_shrunk_and_report_their_speed(name):
    (variant,) = load_scenario(SCENARIOS / f"{name}.toml").variants
    result = run_emulation(replace(variant.config, nodes=64, rounds=4, evaluate_every=2))
    assert not result.stalled
    # A MoDeST node records only the rounds it adopts: one whose first is round 3 skipped past 2.
    assert [r.round for r in result.rounds] == ([2, 3, 4] if variant.config.protocol == "modest" else [2, 4])
    assert result.node_rounds >= 4 * (10 if variant.config.protocol == "modest" else 64)
    assert result.node_rounds_per_s > 0 and result.rounds_per_minute > 0 and result.peak_rss_mib > 0
    assert result.final_mean_accuracy > 0.1  # ten classes: better than chance after four rounds
