"""Type checks that config dataclasses need beyond what their annotations enforce."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from p2pfl.errors import ConfigError

_NUMBER = re.compile(r"\b(int|float)\b")


def reject_booleans(cls: type, values: Mapping[str, Any]) -> None:
    """Refuse `true`/`false` given for a number field of dataclass `cls` (inside lists and dicts too).

    Python counts a bool as an int, and pydantic's lax mode (scenario files) turns one into 1 before
    the dataclass sees it: `rounds = true` would quietly run one round. A config that means 1 says
    1. `values` are the field values by name: an instance's, or the raw ones a scenario file gives.
    """
    for field in fields(cls):
        annotation = str(field.type)
        if field.name not in values or "bool" in annotation or not _NUMBER.search(annotation):
            continue
        value = values[field.name]
        if isinstance(value, Mapping):
            items = [(f"{field.name}.{key}", item) for key, item in value.items()]
        elif isinstance(value, list | tuple):
            items = [(f"{field.name}[{index}]", item) for index, item in enumerate(value)]
        else:
            items = [(field.name, value)]
        for where, item in items:
            if isinstance(item, bool):
                raise ConfigError(f"{where} must be a number, got {str(item).lower()}")
