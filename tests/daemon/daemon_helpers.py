"""Helpers for the daemon tests: node.toml files and configs for small, fast digits nodes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from p2pfl.daemon.config import NodeConfig, parse_config


def toml_dumps(data: dict[str, Any]) -> str:
    """Enough TOML for node.toml files: nested tables of strings, numbers, booleans and lists."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_value(value)}")
    for name, table in tables:
        _table(lines, name, table)
    return "\n".join(lines) + "\n"


def _table(lines: list[str], name: str, table: dict[str, Any]) -> None:
    lines.append(f"\n[{name}]")
    nested = []
    for key, value in table.items():
        if isinstance(value, dict) and value and all(not isinstance(v, dict) for v in value.values()):
            nested.append((f"{name}.{key}", value))
        else:
            lines.append(f"{key} = {_value(value)}")
    for sub, value in nested:
        _table(lines, sub, value)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def node_settings(
    data_dir: Path,
    *,
    index: int = 0,
    of: int = 2,
    rounds: int = 5,
    period: float = 0.25,
    bootstrap: list[str] | None = None,
    discovery_interval: float = 1.0,
    **overrides: Any,
) -> dict[str, Any]:
    """A node.toml as a dict: gossip learning on digits, shard `index` of `of`, loopback only."""
    data: dict[str, Any] = {
        "data_dir": str(data_dir),
        "listen": ["/ip4/127.0.0.1/tcp/0"],
        "bootstrap": bootstrap or [],
        "log_level": "info",
        "discovery": {"enabled": True, "interval": discovery_interval, "target": 8},
        "task": {"seed": 0, "shard": {"index": index, "of": of, "partition": "iid", "seed": 0}},
        "model": {"hidden": [32], "activation": "relu", "init_seed": 0},
        "training": {"lr": 0.2, "batch_size": 16, "local_steps": 10, "device": "cpu"},
        "protocol": {"name": "gossip", "rounds": rounds, "period": period, "fanout": 1},
        "status": {"host": "127.0.0.1", "port": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict) and key != "protocol":
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def node_config(data_dir: Path, **kwargs: Any) -> NodeConfig:
    return parse_config(node_settings(data_dir, **kwargs))


# --- real daemons, as subprocesses -------------------------------------------------------------------

_SCRIPT = Path(sys.executable).with_name("p2pfl")
P2PFL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from p2pfl.cli import main; main()"]


class Daemon:
    """One `p2pfl node run` process: node`index`.toml, data dir node`index`, log node`index`.log."""

    def __init__(self, root: Path, index: int) -> None:
        self.index = index
        self.data_dir = root / f"node{index}"
        self.config = root / f"node{index}.toml"
        self.log = root / f"node{index}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [*P2PFL, "node", "run", "--config", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )

    def info(self, deadline: float) -> dict:
        """status.json of the running process (the listen addresses and status URL it chose)."""
        assert self.proc is not None
        path = self.data_dir / "status.json"
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"node {self.index} exited early:\n{self.tail()}"
            try:
                info = json.loads(path.read_text())
                if info.get("pid") == self.proc.pid:
                    return info
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"node {self.index} wrote no status.json in time:\n{self.tail()}")

    def status(self) -> dict:
        url = json.loads((self.data_dir / "status.json").read_text())["url"]
        with urllib.request.urlopen(url + "/status", timeout=5) as response:
            return json.loads(response.read())

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text().splitlines()[-lines:]) if self.log.exists() else "(no log)"

    def kill(self) -> None:
        """SIGKILL the process if it still runs, and reap it (fixtures' cleanup)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def stop_daemons(daemons: list[Daemon], within: float = 15.0) -> dict[int, float]:
    """SIGTERM each, then the seconds each took to exit (missing if it did not within `within` s)."""
    sent = {}
    for daemon in daemons:
        assert daemon.proc is not None
        sent[daemon.index] = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
    took: dict[int, float] = {}
    deadline = time.monotonic() + within
    while len(took) < len(daemons) and time.monotonic() < deadline:
        for daemon in daemons:
            if daemon.index not in took and daemon.proc.poll() is not None:
                took[daemon.index] = time.monotonic() - sent[daemon.index]
        time.sleep(0.02)
    return took
