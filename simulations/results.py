"""What an emulated run reports: per-round accuracy and traffic, per-node counters, and the churn applied.

A round's row gathers every honest node that recorded that round: all nodes for gossip and D-PSGD,
the nodes that adopted the round's aggregate for MoDeST, the server for FL. Byzantine nodes are
left out of the accuracy (they are listed, flagged, among the nodes). Traffic is the whole
network's (models, views, pings) up to the instant the round was last recorded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np
import torch

from p2pfl.node import Node, RoundRecord
from simulations.churn import PlannedEvent
from transport.memory import TrafficLog

if TYPE_CHECKING:
    from simulations.config import EmulationConfig


@dataclass(frozen=True)
class RoundSummary:
    round: int
    mean_accuracy: float
    min_accuracy: float
    max_accuracy: float
    nodes: int  # how many nodes evaluated this round
    bytes_sent: int  # cumulative, whole network
    messages_sent: int  # cumulative, whole network
    virtual_time: float
    consensus_distance: float | None = None  # see EmulationConfig.consensus


@dataclass(frozen=True)
class NodeSummary:
    peer: str
    rounds_recorded: int
    final_accuracy: float | None
    bytes_sent: int
    bytes_received: int
    messages_sent: int
    messages_received: int
    messages_rejected: int
    models_rejected: int
    byzantine: bool
    messages_lost: int = 0
    # (round, accuracy) for every evaluated round, when EmulationConfig.record_nodes is set
    accuracy_trace: list[tuple[int, float]] = field(default_factory=list)


@dataclass(frozen=True)
class EmulationResult:
    config: EmulationConfig
    rounds: list[RoundSummary]
    nodes: list[NodeSummary]
    churn: list[PlannedEvent]
    wall_s: float
    stalled: bool = False  # stopped because no round finished for `config.stall_timeout` virtual seconds
    # The newest round any node finished: `config.rounds` for a complete run, less for one that
    # stalled or whose nodes had all stopped (crashed or left). Churn events up to it were applied.
    rounds_reached: int = 0
    node_rounds: int = 0  # rounds finished, summed over the nodes (a MoDeST round counts its sample)
    peak_rss_mib: float = 0.0  # of the whole process, at the end of the run
    # The topology the run started on, labelled by node index (not in the JSON).
    graph: nx.Graph | None = field(default=None, compare=False, repr=False)
    # Where that graph came from (`topology_source`); None for a result built by hand.
    topology: str | None = None

    @property
    def final_mean_accuracy(self) -> float | None:
        return self.rounds[-1].mean_accuracy if self.rounds else None

    def first_round_reaching(self, accuracy: float) -> RoundSummary | None:
        """The first evaluated round whose mean accuracy is at least `accuracy`, if any."""
        return next((r for r in self.rounds if r.mean_accuracy >= accuracy), None)

    @property
    def bytes_sent(self) -> int:
        return sum(n.bytes_sent for n in self.nodes)

    @property
    def node_rounds_per_s(self) -> float:
        return self.node_rounds / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def rounds_per_minute(self) -> float:
        return 60 * self.rounds_reached / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def messages_sent(self) -> int:
        return sum(n.messages_sent for n in self.nodes)

    def to_json(self) -> dict[str, Any]:
        return {
            "final_mean_accuracy": self.final_mean_accuracy,
            "bytes_sent": self.bytes_sent,
            "messages_sent": self.messages_sent,
            "wall_s": self.wall_s,
            "peak_rss_mib": self.peak_rss_mib,
            "node_rounds": self.node_rounds,
            "node_rounds_per_s": self.node_rounds_per_s,
            "rounds_per_minute": self.rounds_per_minute,
            "virtual_s": self.rounds[-1].virtual_time if self.rounds else 0.0,
            "rounds_reached": self.rounds_reached,
            "evaluated_rounds": len(self.rounds),
            "stalled": self.stalled,
            "topology": self.topology,
            "rounds": [asdict(r) for r in self.rounds],
            "nodes": [asdict(n) for n in self.nodes],
            "churn": [asdict(e) for e in self.churn],
            "config": asdict(self.config),
        }


def topology_source(config: EmulationConfig, graph: nx.Graph | None = None) -> str:
    """What a run's graph is, for reports: a caller's `graph` (which overrides the config's topology),
    the config's graph file by name, or its named topology."""
    if graph is not None:
        return f"caller's graph {graph.name!r}" if graph.name else "caller's graph"
    if config.topology_file is not None:
        return Path(config.topology_file).name
    return config.topology


class ConsensusTracker:
    """Mean squared distance of models to their average, accumulated one model at a time.

    mean_i |x_i - mean|^2 = mean_i |x_i|^2 - |mean|^2, so nodes can contribute as they record a
    round, without the emulator knowing which node is the last one.
    """

    def __init__(self) -> None:
        self._sums: dict[int, tuple[torch.Tensor, float, int]] = {}

    def add(self, round: int, flat: torch.Tensor) -> None:
        flat = flat.detach().to("cpu", torch.float64)
        total, squares, count = self._sums.get(round, (torch.zeros_like(flat), 0.0, 0))
        self._sums[round] = (total + flat, squares + float(flat @ flat), count + 1)

    def merge(self, other: ConsensusTracker) -> None:
        """Add the models `other` tracked (another shard's nodes) to these."""
        for round_, (total, squares, count) in other._sums.items():
            mine = self._sums.get(round_)
            if mine is not None:
                total, squares, count = total + mine[0], squares + mine[1], count + mine[2]
            self._sums[round_] = (total, squares, count)

    def distance(self, round: int) -> float | None:
        if round not in self._sums:
            return None
        total, squares, count = self._sums[round]
        mean = total / count
        return max(0.0, squares / count - float(mean @ mean))


def summarise_rounds(
    histories: Iterable[list[RoundRecord]], traffic: TrafficLog, consensus: ConsensusTracker | None = None
) -> list[RoundSummary]:
    """A row per evaluated round from the honest nodes' `histories` and the network's traffic."""
    by_round: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for history in histories:
        for record in history:
            if record.accuracy is not None:
                by_round[record.round].append((record.accuracy, record.time))
    summaries = []
    for round_ in sorted(by_round):
        accuracies = [accuracy for accuracy, _ in by_round[round_]]
        until = max(time for _, time in by_round[round_])
        summaries.append(
            RoundSummary(
                round=round_,
                mean_accuracy=float(np.mean(accuracies)),
                min_accuracy=min(accuracies),
                max_accuracy=max(accuracies),
                nodes=len(accuracies),
                bytes_sent=traffic.bytes_sent(until=until),
                messages_sent=traffic.messages_sent(until=until),
                virtual_time=until,
                consensus_distance=consensus.distance(round_) if consensus is not None else None,
            )
        )
    return summaries


def summarise_nodes(
    nodes: Iterable[tuple[int, Node]], *, byzantine: frozenset[int], traces: bool = False
) -> list[NodeSummary]:
    """A summary per node, from (index, node) pairs."""
    summaries = []
    for index, node in nodes:
        stats = node.transport.stats
        accuracy = next((r.accuracy for r in reversed(node.history) if r.accuracy is not None), None)
        summaries.append(
            NodeSummary(
                peer=node.peer_id,
                rounds_recorded=len(node.history),
                final_accuracy=accuracy,
                bytes_sent=stats.bytes_sent,
                bytes_received=stats.bytes_received,
                messages_sent=stats.messages_sent,
                messages_received=stats.messages_received,
                messages_rejected=stats.messages_rejected,
                models_rejected=node.models_rejected,
                byzantine=index in byzantine,
                messages_lost=stats.messages_lost,
                accuracy_trace=[(r.round, r.accuracy) for r in node.history if r.accuracy is not None]
                if traces
                else [],
            )
        )
    return summaries
