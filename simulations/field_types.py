"""Type checks for config dataclasses: what their annotations say, without conversions.

pydantic's lax mode (scenario files) converts before a dataclass sees the value: `rounds = true`
ran one round and `rounds = "3"` three; Python callers get no check at all, and `nodes="4"` failed
later as "'<' not supported between 'str' and 'int'". `check_types` runs on the raw values of a
scenario file and on every instance, so both get one message naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from p2pfl.errors import ConfigError

# Annotation -> (test, what the message asks for). Only these simple kinds are checked here;
# pydantic and the dataclasses' own checks handle the rest (dicts of anything, nested events).
_KINDS = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
}
_TUPLE = re.compile(r"tuple\[(\w+), \.\.\.\]")
_NUMBERS_BY_NAME = "dict[str, int | float]"


def check_types(cls: type, values: Mapping[str, Any]) -> None:
    """Raise `ConfigError` for a value of the wrong type given for a field of dataclass `cls`.

    `values` are field values by name: an instance's, or the raw ones a scenario file gives.
    """
    for field in fields(cls):
        if field.name not in values:
            continue
        annotation, value = str(field.type), values[field.name]
        if annotation.endswith(" | None"):
            if value is None:
                continue
            annotation = annotation.removesuffix(" | None")
        if annotation in _KINDS:
            _check(field.name, annotation, value)
        elif (match := _TUPLE.fullmatch(annotation)) and match[1] in _KINDS:
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{field.name} must be a list, got {_shown(value)}")
            for index, item in enumerate(value):
                _check(f"{field.name}[{index}]", match[1], item)
        elif annotation == _NUMBERS_BY_NAME and isinstance(value, Mapping):
            for key, item in value.items():
                _check(f"{field.name}.{key}", "float", item)


def _check(where: str, kind: str, value: object) -> None:
    test, wanted = _KINDS[kind]
    if not test(value):
        raise ConfigError(f"{where} must be {wanted}, got {_shown(value)}")


def _shown(value: object) -> str:
    """`value` as a scenario file writes it: true/false for booleans."""
    if isinstance(value, str):
        return repr(value)
    return repr(value).replace("True", "true").replace("False", "false")
