"""Fixtures of the daemon tests; helpers live in `daemon_helpers` (importable under importlib mode)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from daemon_helpers import toml_dumps


@pytest.fixture
def write_toml(tmp_path):
    def write(name: str, data: dict) -> Path:
        path = tmp_path / name
        path.write_text(toml_dumps(data))
        return path

    return write
