"""Building a part by name for configs and scenario files: one error shape for every registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from p2pfl.errors import ConfigError

T = TypeVar("T")


def build_named(field: str, noun: str, table: Mapping[str, Callable[..., T]], name: str, params: dict) -> T:
    """`table[name](**params)`; a `ConfigError` that starts with `field` and names what is wrong.

    Unknown names list the known ones; a constructor's TypeError or ValueError (a bad or missing
    parameter) is reported with the name it was building.
    """
    if name not in table:
        raise ConfigError(f"{field}: unknown {noun} {name!r}; choose one of {sorted(table)}")
    try:
        return table[name](**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{field} {name!r}: {exc}") from exc
