"""p2pfl: peer-to-peer decentralized learning.

The public API for embedding a node in an application::

    from p2pfl import Node, Learner

Names are imported on first use (PEP 562), so commands that need no torch, such as
``p2pfl status``, start in a fraction of a second instead of paying for importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from p2pfl.aggregation import Aggregator, Contribution, FedAvg
    from p2pfl.compute import ThreadCompute, VirtualCompute
    from p2pfl.errors import ConfigError, IncompatibleModel, P2PFLError
    from p2pfl.learner import Evaluation, Learner
    from p2pfl.model_state import ModelState
    from p2pfl.node import Node, NodeStatus, RoundRecord

_EXPORTS = {
    "Aggregator": "p2pfl.aggregation",
    "Contribution": "p2pfl.aggregation",
    "FedAvg": "p2pfl.aggregation",
    "ThreadCompute": "p2pfl.compute",
    "VirtualCompute": "p2pfl.compute",
    "ConfigError": "p2pfl.errors",
    "IncompatibleModel": "p2pfl.errors",
    "P2PFLError": "p2pfl.errors",
    "Evaluation": "p2pfl.learner",
    "Learner": "p2pfl.learner",
    "ModelState": "p2pfl.model_state",
    "Node": "p2pfl.node",
    "NodeStatus": "p2pfl.node",
    "RoundRecord": "p2pfl.node",
}

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


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'p2pfl' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
