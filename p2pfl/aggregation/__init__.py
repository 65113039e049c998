"""Aggregation rules: how a node merges models."""

from p2pfl.aggregation.base import Aggregator, Contribution, stack
from p2pfl.aggregation.fedavg import FedAvg
from p2pfl.aggregation.vca import VCA

__all__ = ["VCA", "Aggregator", "Contribution", "FedAvg", "stack"]
