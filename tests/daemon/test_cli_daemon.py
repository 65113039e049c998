"""`p2pfl keygen` and the daemon commands' place in `p2pfl --help`."""

from __future__ import annotations

import re

from click.testing import CliRunner

from p2pfl.cli import main


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


def test_help_lists_the_daemon_commands_and_the_plugins():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("keygen", "node", "status", "sim"):
        assert re.search(rf"^\s+{command}\s", result.output, re.MULTILINE), result.output
