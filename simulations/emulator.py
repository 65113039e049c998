"""Run real `Node`s on a networkx topology over the in-memory transport, in virtual time.

The node code is the daemon's: only the transport (in-memory links with latency) and the compute
policy (modeled training time on trio's `MockClock`) differ. Every random choice derives from the
config's seed, so a run is deterministic for a seed.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import networkx as nx
import torch
from torch.utils.data import default_collate

from gossip.modest_settings import ModestSettings
from p2pfl.datasets import take
from p2pfl.errors import ConfigError
from simulations.config import EVENT_DRIVEN, EmulationConfig, make_task, protocol_params
from simulations.emulation import NodeFailed, peak_rss_mib, run_nodes
from simulations.results import ConsensusTracker, EmulationResult, summarise_rounds, topology_source
from simulations.run_setup import churn_plan, data_split, graph_for, graph_links, node_speeds
from simulations.sharded_run import check_shards, run_in_shards
from simulations.task import Task
from simulations.topology import node_order
from simulations.transfer_task import TransferTask
from transport.memory import TrafficLog

if TYPE_CHECKING:
    from simulations.report import ProgressReporter

__all__ = ["NodeFailed", "check_run", "run_emulation"]


def run_emulation(
    config: EmulationConfig | None = None,
    *,
    task: Task | None = None,
    graph: nx.Graph | None = None,
    progress: ProgressReporter | None = None,
) -> EmulationResult:
    """Emulate `config.nodes` nodes running `config.protocol`; `task` and `graph` override the defaults.

    A caller's `graph` may have any node labels; they are taken in sorted order. `progress` is told
    of every new round as the run reaches it (e.g. a progress bar).
    """
    config = config or EmulationConfig()
    task = task or make_task(config)
    topology = topology_source(config, graph)
    if graph is None and config.topology_file is not None:
        graph = graph_for(config, 0)  # read once, for the checks and the run
    check_run(config, task=task, graph=graph)  # a named topology's graph has no attributes to check
    if graph is None:
        graph = graph_for(config, 0)
    started = time.perf_counter()
    if config.shards > 1:
        parts = run_in_shards(config, task, graph, progress)
    else:
        parts = [run_nodes(config, task, graph, progress, None)]
    failure = next((part.failure for part in parts if part.failure is not None), None)
    if failure is not None:
        raise failure from failure.cause
    wall_s = time.perf_counter() - started
    _, plan = churn_plan(config)
    consensus = ConsensusTracker()
    for part in parts:
        consensus.merge(part.consensus)
    traffic = parts[0].traffic if len(parts) == 1 else TrafficLog.merged([part.traffic for part in parts])
    return EmulationResult(
        config=config,
        rounds=summarise_rounds(
            [records for _, records in sorted(pair for part in parts for pair in part.evaluated)],
            traffic,
            consensus,
        ),
        nodes=[summary for _, summary in sorted(pair for part in parts for pair in part.nodes)],
        churn=plan,
        wall_s=wall_s,
        stalled=any(part.stalled for part in parts),
        rounds_reached=max(part.progress for part in parts),
        node_rounds=sum(part.node_rounds for part in parts),
        # A sharded run's processes together: the shards and this one, which holds the task and graph.
        peak_rss_mib=sum(part.peak_rss_mib for part in parts) + (peak_rss_mib() if len(parts) > 1 else 0.0),
        graph=nx.relabel_nodes(graph, {label: i for i, label in enumerate(node_order(graph))}),
        topology=topology,
    )


def check_run(config: EmulationConfig, *, task: Task | None = None, graph: nx.Graph | None = None) -> None:
    """Raise `ConfigError` for what makes a run impossible but takes more than the config to see.

    The churn plan (events naming nodes that are not running then, a partition with an empty side,
    joins that leave nobody to start), a MoDeST sample larger than the nodes that start, a data
    split with an empty part, a model that does not fit the data, the attributes of the graph (the
    config's graph file when `graph` is None; named topologies have none) and links on which no
    model could arrive within its round. `run_emulation` starts with these checks, and `p2pfl sim
    run` makes them for every variant of a scenario before it runs the first, so that the last
    variant's mistake does not cost the earlier runs.
    """
    task = task or make_task(config)
    if graph is None and config.topology_file is not None:
        graph = graph_for(config, 0)
    if graph is not None and graph.number_of_nodes() != config.nodes:
        raise ConfigError(f"graph has {graph.number_of_nodes()} nodes but config.nodes is {config.nodes}")
    absent, _ = churn_plan(config)
    if config.protocol == "modest":
        sample = protocol_params(config).get("s", ModestSettings().s)
        if sample > config.nodes - len(absent):
            raise ConfigError(
                f"protocol_params: s={sample} exceeds the {config.nodes - len(absent)} nodes that "
                "start; MoDeST would wait for a full sample forever"
            )
    links: list[tuple[str, str, dict[str, float]]] = []
    if graph is not None:
        labels = node_order(graph)
        node_speeds(config, [graph.nodes[label] for label in labels])
        links = graph_links(graph, {label: str(label) for label in labels})
    check_shards(config, graph)
    model = task.make_model(seed=0)
    _check_model_fits(model, task, config)
    if config.protocol not in EVENT_DRIVEN:
        _check_rounds_fit_links(config, links, 4 * sum(p.numel() for p in model.parameters()))


def _check_model_fits(model: torch.nn.Module, task: Task, config: EmulationConfig) -> None:
    """Node 0's first training batch and the test set's first through the model, once, before the
    run: a model that does not fit the data would otherwise fail inside every node at once."""
    if task.local_data is not None:
        train = task.local_data(0)
    elif isinstance(task, TransferTask):
        train = task.train  # the pool that nodes draw their classes from (`transfer_node`), unsplit
    else:
        try:
            shards = data_split(task, config)
        except ValueError as exc:
            raise ConfigError(f"partition: {exc}") from None
        train = take(task.train, shards[0])
    for name, data in (("training", train), ("test", task.test)):
        try:
            inputs, targets = default_collate([data[i] for i in range(min(len(data), config.batch_size))])
            with torch.no_grad():
                torch.nn.functional.cross_entropy(model(inputs), targets)
        except Exception as exc:  # whatever torch says, it is the task's mistake
            raise ConfigError(f"task: the model does not fit the {name} data: {exc}") from exc


def _check_rounds_fit_links(
    config: EmulationConfig, links: list[tuple[str, str, dict[str, float]]], model_bytes: int
) -> None:
    """For clock-driven protocols: every link must deliver a model within the round it was sent in.

    A link slower than that (latency plus the model's transmit time, after the training) carries
    models that always arrive too late and are dropped: almost surely a unit mistake (ms for s).
    """
    training = config.local_steps * config.seconds_per_step
    default = {"latency": config.latency, "bandwidth": config.bandwidth or math.inf}
    for a, b, params in links or [("", "", {})]:
        where = f"the link {a} - {b}" if params else "links with the default latency and bandwidth"
        link = {**default, **params}
        arrival = training + link["latency"] + model_bytes / link["bandwidth"]
        if arrival >= config.period:
            raise ConfigError(
                f"{where}: a model ({model_bytes} bytes) arrives {arrival:g} s into a round "
                f"of period {config.period} s (training, latency {link['latency']} s, bandwidth "
                f"{link['bandwidth']} bytes/s): always too late; raise period or speed the link up"
            )
