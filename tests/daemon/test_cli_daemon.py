"""`p2pfl keygen`, the daemon commands' place in `p2pfl --help`, and how `p2pfl node run` reports a
node that cannot start."""

from __future__ import annotations

import re
import socket

import pytest
import torch
from click.testing import CliRunner
from daemon_helpers import node_settings

from p2pfl.cli import main
from p2pfl.daemon import runner

PEER = "12D3KooWQHc8dpc8q81pz3Dc961NYcYqqv7AHZd6bF1yYffTVtWJ"


def test_keygen_creates_an_identity_once_and_prints_a_bootstrap_address(tmp_path):
    data_dir = tmp_path / "node"
    first = CliRunner().invoke(
        main, ["keygen", "--data-dir", str(data_dir), "--addr", "/ip4/10.0.0.5/tcp/4001"]
    )
    assert first.exit_code == 0, first.output
    (peer_id,) = re.findall(r"peer id: (\S+)", first.output)
    assert peer_id.startswith("12D3KooW") and "new identity" in first.output
    assert f"bootstrap address: /ip4/10.0.0.5/tcp/4001/p2p/{peer_id}" in first.output
    assert ((data_dir / "identity.key").stat().st_mode & 0o777) == 0o600

    again = CliRunner().invoke(main, ["keygen", "--data-dir", str(data_dir)])
    assert again.exit_code == 0 and "existing identity" in again.output
    assert f"peer id: {peer_id}" in again.output


def test_keygen_refuses_a_key_others_can_read(tmp_path):
    CliRunner().invoke(main, ["keygen", "--data-dir", str(tmp_path)])
    (tmp_path / "identity.key").chmod(0o644)
    result = CliRunner().invoke(main, ["keygen", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "chmod 600" in result.output


def test_keygen_reports_filesystem_errors_in_one_line_naming_the_path(tmp_path):
    (tmp_path / "dir" / "identity.key").mkdir(parents=True)
    (tmp_path / "file").write_text("")
    not_a_dir = tmp_path / "file" / "node"
    cases = {
        tmp_path / "dir": f"Error: identity key {tmp_path / 'dir' / 'identity.key'} is not a regular file",
        not_a_dir: f"Error: cannot create identity key {not_a_dir / 'identity.key'}: Not a directory",
    }
    for data_dir, error in cases.items():
        result = CliRunner().invoke(main, ["keygen", "--data-dir", str(data_dir)])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        assert result.output.splitlines() == [error]


@pytest.mark.parametrize(
    ("addr", "reason"),
    [
        ("garbage", "not a multiaddr: 'garbage'"),
        ("/ip4/10.0.0/tcp/4001", "not a multiaddr: '/ip4/10.0.0/tcp/4001'"),
        (f"/ip4/10.0.0.5/tcp/4001/p2p/{PEER}", f"'/ip4/10.0.0.5/tcp/4001/p2p/{PEER}' has a /p2p/ part"),
    ],
)
def test_keygen_refuses_a_bad_addr_as_a_usage_error_before_making_a_key(tmp_path, addr, reason):
    result = CliRunner().invoke(main, ["keygen", "--data-dir", str(tmp_path / "node"), "--addr", addr])
    assert result.exit_code == 2, result.output
    assert f"Error: Invalid value for '--addr': {reason}" in result.output
    assert not (tmp_path / "node").exists()


def test_help_lists_the_daemon_commands_and_the_plugins():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("keygen", "node", "status", "sim"):
        assert re.search(rf"^\s+{command}\s", result.output, re.MULTILINE), result.output


@pytest.fixture
def taken_port():
    """A port on 127.0.0.1 that something listens on for the whole test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def node_run(write_toml, tmp_path, **overrides):
    path = write_toml("node.toml", node_settings(tmp_path / "node", **overrides))
    return CliRunner().invoke(main, ["node", "run", "--config", str(path), "--no-fast-exit"])


def test_node_run_reports_a_status_port_in_use_in_one_line(write_toml, tmp_path, taken_port):
    result = node_run(write_toml, tmp_path, status={"host": "127.0.0.1", "port": taken_port})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert f"Error: status server cannot listen on 127.0.0.1:{taken_port}: " in result.output
    assert "Traceback" not in result.output and "ExceptionGroup" not in result.output
    assert 'msg="cannot run"' in result.output


def test_node_run_reports_a_bad_status_host_in_one_line(write_toml, tmp_path):
    result = node_run(write_toml, tmp_path, status={"host": "999.1.1.1", "port": 0})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Error: status server cannot listen on 999.1.1.1:0: " in result.output


def test_node_run_reports_a_listen_address_in_use_in_one_line(write_toml, tmp_path, taken_port):
    result = node_run(write_toml, tmp_path, listen=[f"/ip4/127.0.0.1/tcp/{taken_port}"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert f"Error: cannot listen on /ip4/127.0.0.1/tcp/{taken_port} " in result.output


def test_node_run_refuses_a_setting_this_machine_cannot_meet_as_a_usage_error(
    write_toml, tmp_path, monkeypatch
):
    # Valid on paper, refused once the node looks at the machine: the same exit code as a bad file.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = node_run(write_toml, tmp_path, training={"device": "cuda"})
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "training.device" in result.output and "Traceback" not in result.output
    assert 'msg="invalid configuration"' in result.output


def test_version_names_the_distribution():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("p2pfl, version "), result.output


def test_node_run_reports_a_single_error_from_nested_nurseries_as_itself(write_toml, tmp_path, monkeypatch):
    async def failing(config):
        refused = OSError("the one error")
        raise ExceptionGroup("outer", [ExceptionGroup("inner", [refused])])

    monkeypatch.setattr(runner, "run_daemon", failing)
    result = node_run(write_toml, tmp_path)
    assert result.exit_code == 1 and "Error: the one error" in result.output, result.output

    async def failing_twice(config):
        raise ExceptionGroup("outer", [OSError("one"), ExceptionGroup("inner", [OSError("two")])])

    monkeypatch.setattr(runner, "run_daemon", failing_twice)
    result = node_run(write_toml, tmp_path)
    assert isinstance(result.exception, ExceptionGroup)  # several errors: nothing to pick one from
