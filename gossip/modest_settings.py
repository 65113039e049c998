"""Settings of the MoDeST protocol, with the reference code's defaults.

Defaults: s=10, a=1, sf=1.0, ping timeout 5 s (re-ping every 1 s), inactivity threshold 50 rounds.
With those defaults a trainer that crashes after answering its ping stalls the round: its aggregator
waits for all s models forever. Use sf < 1, a > 1 or an `aggregation_timeout` to avoid that.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from gossip.values import is_int, is_seconds

__all__ = ["ModestSettings", "setting_problem"]


def _models_needed(s: int, sf: float) -> int:
    """ceil(s * sf), rounded so that float error cannot add one (s=10, sf=0.3 gives 3, not 4)."""
    return max(1, math.ceil(round(s * sf, 9)))


def _s(value: object, valid: Mapping[str, Any]) -> str | None:
    return None if is_int(value) and value >= 1 else f"must be an int >= 1, got {value!r}"


def _a(value: object, valid: Mapping[str, Any]) -> str | None:
    if "s" not in valid:
        return _s(value, valid)
    s = valid["s"]
    return None if is_int(value) and 1 <= value <= s else f"must be an int in [1, s={s}], got {value!r}"


def _sf(value: object, valid: Mapping[str, Any]) -> str | None:
    number = isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
    return None if number and 0 < value <= 1 else f"must be in (0, 1], got {value!r}"


def _seconds(value: object, valid: Mapping[str, Any]) -> str | None:
    return None if is_seconds(value) else f"must be a finite number of seconds > 0, got {value!r}"


def _optional_seconds(value: object, valid: Mapping[str, Any]) -> str | None:
    if value is None or is_seconds(value):
        return None
    return f"must be None or a finite number of seconds > 0, got {value!r}"


def _rounds(value: object, valid: Mapping[str, Any]) -> str | None:
    return None if is_int(value) and value >= 0 else f"must be an int >= 0, got {value!r}"


def _min_models(value: object, valid: Mapping[str, Any]) -> str | None:
    if "s" not in valid or "sf" not in valid:
        return _s(value, valid)
    needed = _models_needed(valid["s"], valid["sf"])
    if is_int(value) and 1 <= value <= needed:
        return None
    return f"must be an int in [1, models_needed={needed}], got {value!r}"


def _start_depth(value: object, valid: Mapping[str, Any]) -> str | None:
    if value is None:
        return None
    if "s" not in valid:
        return None if is_int(value) else f"must be None or an int, got {value!r}"
    s = valid["s"]
    return None if is_int(value) and value >= s else f"must be None or an int >= s={s}, got {value!r}"


# One check per setting, in field order: a bound on another setting (a <= s) comes after it.
_CHECKS: dict[str, Callable[[object, Mapping[str, Any]], str | None]] = {
    "s": _s,
    "a": _a,
    "sf": _sf,
    "ping_timeout": _seconds,
    "ping_interval": _seconds,
    "inactivity_threshold": _rounds,
    "aggregation_timeout": _optional_seconds,
    "min_models": _min_models,
    "round_timeout": _optional_seconds,
    "start_depth": _start_depth,
}


def setting_problem(name: str, value: object, valid: Mapping[str, Any]) -> str | None:
    """What is wrong with `value` for the setting `name` ("must be ..., got ..."), or None.

    `valid` holds the settings before `name` that were found valid; a bound on one of those that is
    missing from it (because it was wrong itself) is not checked, so one bad `s` is one problem, not
    one for every setting bounded by it. Checking settings one by one lets a caller report every
    problem under its own name (the daemon's config does).
    """
    return _CHECKS[name](value, valid)


@dataclass(frozen=True, slots=True)
class ModestSettings:
    """Inputs of the MoDeST protocol; invalid values raise `ValueError` naming the field.

    - `s`: sample size, nodes that train each round.
    - `a`: aggregators per round, the first `a` of Sample(r+1); ``1 <= a <= s``.
    - `sf`: success fraction, ``0 < sf <= 1``; an aggregator merges once it has `models_needed`
      = ceil(s * sf) models.
    - `ping_timeout`: seconds a candidate has to answer before the next one in order replaces it.
    - `ping_interval`: seconds between re-pings of a silent candidate within `ping_timeout`.
    - `inactivity_threshold`: rounds without news after which a peer is no longer a candidate.
    - `aggregation_timeout`: seconds after which an aggregator merges what it has, if at least
      `min_models`; None waits for `models_needed`.
    - `min_models`: fewest models an aggregation timeout may merge; ``1 <= min_models <= models_needed``.
    - `round_timeout`: seconds a trainer waits for its round to be aggregated before it re-sends its
      model to the aggregators available then, again every `round_timeout` until an aggregator
      reports the round done; None trusts the first aggregators. This is what lets a run survive
      an aggregator crashing with the round's models in hand, or a whole sample crashing at once.
      A copy still on its way when it passes is given up for the re-send, so it must allow for
      sending a model.
    - `start_depth`: how far into order(1) a node looks to see whether it trains round 1. Checking
      means pinging the first s candidates, so with None (every node checks: the protocol as
      specified) a start costs N x s pings, which dominates runs of 100,000 nodes. A node further
      than `start_depth` places in would only train round 1 if that many nodes ahead of it were
      down at the start; it waits for a sample to pick it instead. ``start_depth >= s``.
    """

    s: int = 10
    a: int = 1
    sf: float = 1.0
    ping_timeout: float = 5.0
    ping_interval: float = 1.0
    inactivity_threshold: int = 50
    aggregation_timeout: float | None = None
    min_models: int = 1
    round_timeout: float | None = None
    start_depth: int | None = None

    def __post_init__(self) -> None:
        valid: dict[str, object] = {}
        problems = []
        for field in fields(self):
            value = getattr(self, field.name)
            problem = setting_problem(field.name, value, valid)
            if problem is None:
                valid[field.name] = value
            else:
                problems.append(f"{field.name} {problem}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def models_needed(self) -> int:
        """ceil(s * sf), rounded so that float error cannot add one (s=10, sf=0.3 gives 3, not 4)."""
        return _models_needed(self.s, self.sf)
