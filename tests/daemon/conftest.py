"""Fixtures of the daemon tests; helpers live in `daemon_helpers` (importable under importlib mode)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from daemon_helpers import Daemon, toml_dumps


@pytest.fixture
def write_toml(tmp_path):
    def write(name: str, data: dict) -> Path:
        path = tmp_path / name
        path.write_text(toml_dumps(data))
        return path

    return write


@pytest.fixture
def spawn_daemons(tmp_path):
    """`spawn_daemons(n)`: n `Daemon`s in tmp_path, every one still running killed at teardown."""
    spawned: list[Daemon] = []

    def spawn(count: int) -> list[Daemon]:
        first = len(spawned)
        spawned.extend([Daemon(tmp_path, first + i) for i in range(count)])
        return spawned[first:]

    try:
        yield spawn
    finally:
        for daemon in spawned:
            daemon.kill()
