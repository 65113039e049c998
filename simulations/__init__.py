"""The emulator: real nodes on networkx topologies, in virtual time."""

from simulations.emulator import EmulationConfig, EmulationResult, RoundSummary, run_emulation
from simulations.task import Task, digits_task
from simulations.topology import build_topology

__all__ = [
    "EmulationConfig",
    "EmulationResult",
    "RoundSummary",
    "Task",
    "build_topology",
    "digits_task",
    "run_emulation",
]
