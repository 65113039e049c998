"""Building a part by name for configs and scenario files: one error shape for every registry.

Besides the names of a table, a name of the form `module:attribute` builds a part of one's own:
`attribute` of the importable `module` (a class, or a function returning the part), called with the
part's parameters. Research code tries new rules and attacks without forking the registry, and a
scenario file or node config names them as it names ours.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from p2pfl.errors import ConfigError

T = TypeVar("T")


def build_named(
    field: str,
    noun: str,
    table: Mapping[str, Callable[..., T]],
    name: str,
    params: dict,
    *,
    expected: type[T] | tuple[type, ...],
) -> T:
    """`table[name](**params)`, or the `module:attribute` named; a `ConfigError` that starts with
    `field` and names what is wrong.

    Unknown names list the known ones; a constructor's TypeError or ValueError (a bad or missing
    parameter) is reported with the name it was building; a part of one's own must be an `expected`.
    """
    if is_import_name(name):
        return build_imported(field, name, params, expected=expected)
    if name not in table:
        known = sorted(table)
        raise ConfigError(
            f"{field}: unknown {noun} {name!r}; choose one of {known}, or module:attribute for your own"
        )
    return _built(field, name, table[name], params, expected)


def build_imported(field: str, name: str, params: dict, *, expected: type[T] | tuple[type, ...]) -> T:
    """The part `module:attribute` builds with `params`; a `ConfigError` naming `field` if it cannot
    be imported, built, or is not an `expected`."""
    return _built(field, name, import_attribute(field, name), params, expected)


def _built(
    field: str, name: str, build: Callable[..., object], params: dict, expected: type | tuple[type, ...]
) -> Any:
    try:
        part = build(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{field} {name!r}: {exc}") from exc
    if not isinstance(part, expected):
        raise ConfigError(
            f"{field} {name!r}: built an object of type {type(part).__name__}, not a {_names(expected)}"
        )
    return part


def is_import_name(name: str) -> bool:
    """Whether `name` is written `module:attribute` (our own parts' names have no colon)."""
    return ":" in name


def import_attribute(field: str, name: str) -> Callable[..., object]:
    """The callable `module:attribute` names; `ConfigError` naming `field` if it cannot be had."""
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute.isidentifier():
        raise ConfigError(f"{field}: {name!r} is not of the form module:attribute")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # whatever the module raises while importing: a user's code
        raise ConfigError(
            f"{field}: cannot import {module_name!r} for {name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if not hasattr(module, attribute):
        raise ConfigError(f"{field}: module {module_name!r} has no attribute {attribute!r}")
    found = getattr(module, attribute)
    if not callable(found):
        raise ConfigError(
            f"{field}: {name!r} is not a class or function to build with (its type is {type(found).__name__})"
        )
    return found


def _names(expected: type | tuple[type, ...]) -> str:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(f"{kind.__module__}.{kind.__qualname__}" for kind in kinds)
