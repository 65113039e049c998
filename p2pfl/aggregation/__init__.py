"""Aggregation rules: how a node merges models."""

from p2pfl.aggregation.base import Aggregator, Contribution, stack
from p2pfl.aggregation.fedavg import FedAvg

__all__ = ["Aggregator", "Contribution", "FedAvg", "stack"]
