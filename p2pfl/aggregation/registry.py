"""Aggregation rules by name, for configs and scenario files."""

from __future__ import annotations

from collections.abc import Callable

from p2pfl.aggregation.base import Aggregator
from p2pfl.aggregation.clipping import CenteredClipping, ClippedGossip
from p2pfl.aggregation.fedavg import FedAvg
from p2pfl.aggregation.geometric_median import GeometricMedian
from p2pfl.aggregation.krum import Krum, MultiKrum
from p2pfl.aggregation.median import CoordinateMedian, TrimmedMean
from p2pfl.aggregation.reputation import Reputation
from p2pfl.aggregation.vca import VCA, Selector
from p2pfl.registry import build_named

AGGREGATORS: dict[str, Callable[..., Aggregator]] = {
    "fedavg": FedAvg,
    "vca": VCA,
    "median": CoordinateMedian,
    "trimmed_mean": TrimmedMean,
    "krum": Krum,
    "multi_krum": MultiKrum,
    "geometric_median": GeometricMedian,
    "centered_clipping": CenteredClipping,
    "clipped_gossip": ClippedGossip,
}


def _reputation(*, rule: str = "fedavg", rule_params: dict[str, object] | None = None, **params: object):
    """`reputation` wraps another rule by name: { rule = "median", decay = 0.8, threshold = 0.0 }."""
    if rule == "reputation":
        raise ValueError("reputation cannot wrap itself")
    return Reputation(build_aggregator(rule, **(rule_params or {})), **params)


def _vca(
    *, selection: str | None = None, selection_params: dict[str, object] | None = None, **params: object
):
    """`vca` may filter first: { selection = "multi_krum", selection_params = { f = 2 } }.

    `selection_params` without a `selection` are refused: they would be ignored, and the run would
    merge every model while the file says it filters them.
    """
    if selection is None and selection_params is not None:
        raise ValueError(
            f"vca selection_params need a selection (krum or multi_krum), got {selection_params!r}"
        )
    selector = None
    if selection is not None:
        selector = build_aggregator(selection, **(selection_params or {}))
        if not isinstance(selector, Selector):
            raise ValueError(f"selection {selection!r} cannot select models; use krum or multi_krum")
    return VCA(selection=selector, **params)


AGGREGATORS["reputation"] = _reputation
AGGREGATORS["vca"] = _vca


def build_aggregator(name: str, **params: object) -> Aggregator:
    """The rule called `name` (or your own, `module:attribute`: see `p2pfl.registry`), built with its own
    keyword parameters; `ConfigError` names what is wrong."""
    return build_named("aggregation", "rule", AGGREGATORS, name, params, expected=Aggregator)
