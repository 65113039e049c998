import json

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
