"""p2pfl: peer-to-peer decentralized learning.

The public API for embedding a node in an application::

    from p2pfl import Node, Learner
"""

from p2pfl.aggregation import Aggregator, Contribution, FedAvg
from p2pfl.compute import ThreadCompute, VirtualCompute
from p2pfl.errors import ConfigError, IncompatibleModel, P2PFLError
from p2pfl.learner import Evaluation, Learner
from p2pfl.model_state import ModelState
from p2pfl.node import Node, NodeStatus, RoundRecord

__all__ = [
    "Aggregator",
    "ConfigError",
    "Contribution",
    "Evaluation",
    "FedAvg",
    "IncompatibleModel",
    "Learner",
    "ModelState",
    "Node",
    "NodeStatus",
    "P2PFLError",
    "RoundRecord",
    "ThreadCompute",
    "VirtualCompute",
]
