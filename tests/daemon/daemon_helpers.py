"""Helpers for the daemon tests: node.toml files and configs for small, fast digits nodes."""

from __future__ import annotations

import json
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
