"""The emulator: real nodes on networkx topologies, in virtual time."""

from simulations.churn import ChurnEvent
from simulations.config import EmulationConfig
from simulations.emulator import NodeFailed, run_emulation
from simulations.results import EmulationResult, NodeSummary, RoundSummary
from simulations.task import Task, digits_task
from simulations.topology import build_topology

__all__ = [
    "ChurnEvent",
    "EmulationConfig",
    "EmulationResult",
    "NodeFailed",
    "NodeSummary",
    "RoundSummary",
    "Task",
    "build_topology",
    "digits_task",
    "run_emulation",
]
