"""Run real `Node`s on a networkx topology over the in-memory transport, in virtual time.

The node code is the daemon's: only the transport (in-memory links with latency) and the compute
policy (modeled training time on trio's `MockClock`) differ. Every random choice derives from the
config's seed, so a run is deterministic for a seed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import networkx as nx
import numpy as np
import trio
import trio.testing

from gossip.dpsgd import DPSGD
from gossip.gossip_learning import GossipLearning
from gossip.protocol import RoundProtocol
from p2pfl.aggregation.registry import build_aggregator
from p2pfl.compute import VirtualCompute
from p2pfl.datasets import dirichlet_split, iid_split, labels_of, take
from p2pfl.errors import ConfigError
from p2pfl.learner import Learner
from p2pfl.node import Node
from simulations.seeds import derive_seed
from simulations.task import Task, digits_task
from simulations.topology import build_topology
from transport.memory import open_memory_network

# Purposes for derived seeds, so that e.g. changing the data split never changes the topology.
_TOPOLOGY, _SPLIT, _BATCHES, _PROTOCOL, _INIT = range(5)

PROTOCOLS = ("gossip", "dpsgd")


@dataclass(frozen=True)
class EmulationConfig:
    """One emulated run. Times are virtual seconds."""

    nodes: int = 16
    topology: str = "random_regular"
    topology_params: dict[str, int | float] = field(default_factory=dict)
    protocol: str = "gossip"  # or "dpsgd"
    aggregation: str = "fedavg"
    aggregation_params: dict[str, object] = field(default_factory=dict)
    init: str = "shared"  # or "independent": every node draws its own initial weights
    hidden: tuple[int, ...] = (32,)
    activation: str = "relu"
    xavier: bool = False
    evaluate_every: int = 1
    rounds: int = 40
    partition: str = "iid"
    alpha: float = 0.5
    local_steps: int = 10
    batch_size: int = 16
    lr: float = 0.2
    fanout: int = 1
    period: float = 1.0
    latency: float = 0.01
    seconds_per_step: float = 0.001
    seed: int = 0

    def __post_init__(self) -> None:
        if self.nodes < 2:
            raise ConfigError(f"nodes must be >= 2, got {self.nodes}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {sorted(PROTOCOLS)}, got {self.protocol!r}")
        if self.init not in ("shared", "independent"):
            raise ConfigError(f"init must be 'shared' or 'independent', got {self.init!r}")
        if self.evaluate_every < 1 or self.rounds % self.evaluate_every:
            raise ConfigError(f"evaluate_every must be >= 1 and divide rounds, got {self.evaluate_every}")
        if self.partition not in ("iid", "dirichlet"):
            raise ConfigError(f"partition must be 'iid' or 'dirichlet', got {self.partition!r}")
        if self.partition == "dirichlet" and not self.alpha > 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        for name in ("local_steps", "batch_size", "fanout"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.latency < 0 or self.seconds_per_step < 0:
            raise ConfigError("latency and seconds_per_step must be >= 0")
        busy = self.local_steps * self.seconds_per_step + self.latency
        if busy >= self.period:
            raise ConfigError(
                f"period ({self.period} s) must exceed training time plus latency ({busy:g} s), "
                "or models would arrive after the round they belong to"
            )


@dataclass(frozen=True)
class RoundSummary:
    round: int
    mean_accuracy: float
    min_accuracy: float
    max_accuracy: float
    bytes_sent: int  # cumulative, all nodes
    virtual_time: float


@dataclass(frozen=True)
class EmulationResult:
    config: EmulationConfig
    rounds: list[RoundSummary]
    wall_s: float

    @property
    def final_mean_accuracy(self) -> float:
        return self.rounds[-1].mean_accuracy

    def first_round_reaching(self, accuracy: float) -> RoundSummary | None:
        """The first evaluated round whose mean accuracy is at least `accuracy`, if any."""
        return next((r for r in self.rounds if r.mean_accuracy >= accuracy), None)

    @property
    def bytes_sent(self) -> int:
        return self.rounds[-1].bytes_sent

    def to_json(self) -> dict:
        return {
            "final_mean_accuracy": self.final_mean_accuracy,
            "bytes_sent": self.bytes_sent,
            "wall_s": self.wall_s,
            "virtual_s": self.rounds[-1].virtual_time,
            "num_rounds": len(self.rounds),
            "rounds": [asdict(r) for r in self.rounds],
            "config": asdict(self.config),
        }


def run_emulation(
    config: EmulationConfig | None = None, *, task: Task | None = None, graph: nx.Graph | None = None
) -> EmulationResult:
    """Emulate `config.nodes` gossip-learning nodes; `task` and `graph` override the defaults.

    A caller's `graph` may have any node labels; they are taken in sorted order.
    """
    config = config or EmulationConfig()
    task = task or digits_task(
        seed=config.seed, hidden=config.hidden, activation=config.activation, xavier=config.xavier
    )
    if graph is None:
        graph = build_topology(
            config.topology, config.nodes, seed=derive_seed(config.seed, _TOPOLOGY), **config.topology_params
        )
    elif graph.number_of_nodes() != config.nodes:
        raise ConfigError(f"graph has {graph.number_of_nodes()} nodes but config.nodes is {config.nodes}")
    started = time.perf_counter()
    nodes = trio.run(_emulate, config, task, graph, clock=trio.testing.MockClock(autojump_threshold=0))
    wall_s = time.perf_counter() - started
    return EmulationResult(config=config, rounds=_summarise(nodes), wall_s=wall_s)


async def _emulate(config: EmulationConfig, task: Task, graph: nx.Graph) -> list[Node]:
    labels = sorted(graph.nodes)
    peer_ids = [f"n{i:05d}" for i in range(len(labels))]
    peer_of = dict(zip(labels, peer_ids, strict=True))
    shards = _split(task, config)
    async with open_memory_network(latency=config.latency) as network:
        transports = [network.add_peer(peer_id) for peer_id in peer_ids]
        for u, v in graph.edges:
            network.connect(peer_of[u], peer_of[v])
        nodes = [
            Node(
                transport,
                Learner(
                    task.make_model(
                        seed=derive_seed(config.seed, _INIT, i if config.init == "independent" else 0)
                    ),
                    take(task.train, shard),
                    task.test,
                    batch_size=config.batch_size,
                    lr=config.lr,
                    seed=derive_seed(config.seed, _BATCHES, i),
                ),
                protocol=_protocol(config, i),
                aggregator=build_aggregator(config.aggregation, **config.aggregation_params),
                local_steps=config.local_steps,
                evaluate_every=config.evaluate_every,
                compute=VirtualCompute(config.seconds_per_step),
            )
            for i, (transport, shard) in enumerate(zip(transports, shards, strict=True))
        ]
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(node.run)
    return nodes


def _protocol(config: EmulationConfig, index: int) -> RoundProtocol:
    if config.protocol == "dpsgd":
        return DPSGD(rounds=config.rounds, period=config.period)
    seed = derive_seed(config.seed, _PROTOCOL, index)
    return GossipLearning(rounds=config.rounds, period=config.period, fanout=config.fanout, seed=seed)


def _split(task: Task, config: EmulationConfig) -> list[np.ndarray]:
    seed = derive_seed(config.seed, _SPLIT)
    if config.partition == "iid":
        return iid_split(len(task.train), config.nodes, seed=seed)
    return dirichlet_split(labels_of(task.train), config.nodes, alpha=config.alpha, seed=seed)


def _summarise(nodes: list[Node]) -> list[RoundSummary]:
    summaries = []
    for records in zip(*(node.history for node in nodes), strict=True):
        accuracies = [r.accuracy for r in records if r.accuracy is not None]
        if not accuracies:
            continue  # not an evaluation round
        summaries.append(
            RoundSummary(
                round=records[0].round,
                mean_accuracy=float(np.mean(accuracies)),
                min_accuracy=min(accuracies),
                max_accuracy=max(accuracies),
                bytes_sent=sum(r.bytes_sent for r in records),
                virtual_time=max(r.time for r in records),
            )
        )
    return summaries
