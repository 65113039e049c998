"""Aggregation rules: how a node merges models."""

from p2pfl.aggregation.base import Aggregator, Contribution, stack
from p2pfl.aggregation.clipping import CenteredClipping, ClippedGossip
from p2pfl.aggregation.fedavg import FedAvg
from p2pfl.aggregation.geometric_median import GeometricMedian
from p2pfl.aggregation.krum import Krum, MultiKrum
from p2pfl.aggregation.median import CoordinateMedian, TrimmedMean
from p2pfl.aggregation.reputation import Reputation
from p2pfl.aggregation.vca import VCA

__all__ = [
    "VCA",
    "Aggregator",
    "CenteredClipping",
    "ClippedGossip",
    "Contribution",
    "CoordinateMedian",
    "FedAvg",
    "GeometricMedian",
    "Krum",
    "MultiKrum",
    "Reputation",
    "TrimmedMean",
    "stack",
]
