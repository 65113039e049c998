"""Settings of the MoDeST protocol, with the reference code's defaults.

Defaults: s=10, a=1, sf=1.0, ping timeout 5 s (re-ping every 1 s), inactivity threshold 50 rounds.
With those defaults a trainer that crashes after answering its ping stalls the round: its aggregator
waits for all s models forever. Use sf < 1, a > 1 or an `aggregation_timeout` to avoid that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ModestSettings"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: object) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


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
        if not _is_int(self.s) or self.s < 1:
            raise ValueError(f"s must be an int >= 1, got {self.s!r}")
        if not _is_int(self.a) or not 1 <= self.a <= self.s:
            raise ValueError(f"a must be an int in [1, s={self.s}], got {self.a!r}")
        if (
            not isinstance(self.sf, int | float)
            or isinstance(self.sf, bool)
            or math.isnan(self.sf)
            or not 0 < self.sf <= 1
        ):
            raise ValueError(f"sf must be in (0, 1], got {self.sf!r}")
        if not _is_seconds(self.ping_timeout):
            raise ValueError(
                f"ping_timeout must be a finite number of seconds > 0, got {self.ping_timeout!r}"
            )
        if not _is_seconds(self.ping_interval):
            raise ValueError(
                f"ping_interval must be a finite number of seconds > 0, got {self.ping_interval!r}"
            )
        if not _is_int(self.inactivity_threshold) or self.inactivity_threshold < 0:
            raise ValueError(f"inactivity_threshold must be an int >= 0, got {self.inactivity_threshold!r}")
        if self.aggregation_timeout is not None and not _is_seconds(self.aggregation_timeout):
            raise ValueError(
                "aggregation_timeout must be None or a finite number of seconds > 0, "
                f"got {self.aggregation_timeout!r}"
            )
        if self.round_timeout is not None and not _is_seconds(self.round_timeout):
            raise ValueError(
                f"round_timeout must be None or a finite number of seconds > 0, got {self.round_timeout!r}"
            )
        if self.start_depth is not None and (not _is_int(self.start_depth) or self.start_depth < self.s):
            raise ValueError(f"start_depth must be None or an int >= s={self.s}, got {self.start_depth!r}")
        if not _is_int(self.min_models) or not 1 <= self.min_models <= self.models_needed:
            raise ValueError(
                f"min_models must be an int in [1, models_needed={self.models_needed}], "
                f"got {self.min_models!r}"
            )

    @property
    def models_needed(self) -> int:
        """ceil(s * sf), rounded so that float error cannot add one (s=10, sf=0.3 gives 3, not 4)."""
        return max(1, math.ceil(round(self.s * self.sf, 9)))
