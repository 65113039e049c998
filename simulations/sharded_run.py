"""A run in several processes (`shards`): starting them, handing each its part, coordinating them.

The shards keep in step as `simulations.shards` describes; each runs its part of the nodes with
`simulations.emulation.run_nodes`.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import sys
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import networkx as nx

from p2pfl.errors import ConfigError
from simulations.config import EVENT_DRIVEN, EmulationConfig
from simulations.emulation import ProcessOutcome, ShardPlace, run_nodes
from simulations.run_setup import run_end
from simulations.seeds import Purpose, derive_seed
from simulations.shards import ShardLink, coordinate, lookahead, receive, send, split_nodes
from simulations.task import Task
from simulations.topology import node_order

if TYPE_CHECKING:
    from simulations.report import ProgressReporter


def run_in_shards(
    config: EmulationConfig, task: Task, graph: nx.Graph, progress: ProgressReporter | None
) -> list[ProcessOutcome]:
    """Run `config.shards` processes of the run at once, each a part of the nodes (`shards.py`);
    return their parts, each marked stalled when the run did (which the coordinator judges)."""
    context = multiprocessing.get_context("spawn")  # no fork of a process whose torch threads run
    pipes = [context.Pipe() for _ in range(config.shards)]
    processes = [
        context.Process(target=_shard_main, args=(child,), name=f"p2pfl-shard-{index}")
        for index, (_, child) in enumerate(pipes)
    ]
    reached, end = 0, run_end(config)

    def on_progress(round_: int) -> None:
        nonlocal reached
        if progress is not None and round_ > reached:
            progress.update(round_, config.rounds)
        reached = max(reached, round_)

    try:
        for process in processes:
            process.start()
        for _, child in pipes:
            child.close()  # the shard's now: a shard that dies then reads as the end of its pipe here
        parts = shard_parts(config, graph)  # while the shards import torch
        # The run's parts go through the pipes once every process has started: as arguments of
        # `Process`, a large graph held each start until the process before had imported torch.
        for index, (parent, _) in enumerate(pipes):
            send(parent, (config, task, graph, index, parts))
        outcomes = coordinate(
            [parent for parent, _ in pipes],
            lookahead=shard_lookahead(config, graph, parts),
            end=end,
            on_progress=on_progress,
        )
    except EOFError:
        raise RuntimeError("a shard's process ended without a word (killed, or out of memory?)") from None
    finally:
        for parent, _ in pipes:
            parent.close()  # shards still waiting at a barrier (after an error here) read the end
        for process in processes:
            process.join(timeout=5)  # a shard exits as soon as it has handed its part over
            if process.is_alive():
                process.kill()
    shares = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):  # a shard that could not run at all
            raise outcome
        assert isinstance(outcome, ProcessOutcome)
        shares.append(dataclasses.replace(outcome, stalled=end.stalled))  # the shards never judge it
    return shares


def _shard_main(connection: Connection) -> None:
    """A shard's process: run its nodes, then hand its part (or the error that stopped it) over.

    It then exits at once: tearing down a shard's millions of objects one by one took a second,
    for nothing.
    """
    link = ShardLink(connection)
    try:
        config, task, graph, index, parts = receive(connection)
        part: object = run_nodes(config, task, graph, None, ShardPlace(index, parts, link))
    except BaseException as exc:
        part = exc
    try:
        link.done(part)
        connection.close()
    except OSError:
        pass  # the coordinator is gone (another shard failed): nobody to tell
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def check_shards(config: EmulationConfig, graph: nx.Graph | None) -> None:
    """`ConfigError` when shards could not keep in step: a message between two of them that takes no
    time. `graph` None: a named topology, whose links all have the default latency.

    The nodes are split to find the links between shards only when some link has latency 0: a split
    of 10,000 nodes takes a third of a second, and the run makes it again when it starts the shards.
    """
    if config.shards == 1:
        return
    links = [] if graph is None else _indexed_links(config, graph)
    latencies = [latency for _, _, latency in links]
    if graph is None or config.protocol in EVENT_DRIVEN:  # any node may dial any other
        latencies.append(config.latency)
    if min(latencies, default=math.inf) > 0:
        return
    if graph is None:
        raise ConfigError(_NO_LOOKAHEAD.format(shards=config.shards))
    shard_lookahead(config, graph, shard_parts(config, graph))


def shard_parts(config: EmulationConfig, graph: nx.Graph) -> list[list[int]]:
    """The nodes (by index) of each shard."""
    indexed = nx.relabel_nodes(graph, {label: i for i, label in enumerate(node_order(graph))})
    return split_nodes(indexed, config.shards, seed=derive_seed(config.seed, Purpose.SHARDS))


def shard_lookahead(config: EmulationConfig, graph: nx.Graph, parts: list[list[int]]) -> float:
    """The least latency between shards; `ConfigError` when it is 0, as no barrier could then move on."""
    links = _indexed_links(config, graph)
    least = lookahead(parts, links, default_latency=config.latency, any_pair=config.protocol in EVENT_DRIVEN)
    if not least > 0:
        raise ConfigError(_NO_LOOKAHEAD.format(shards=config.shards))
    return least


def _indexed_links(config: EmulationConfig, graph: nx.Graph) -> list[tuple[int, int, float]]:
    """Every edge as (node index, node index, latency), the config's latency where it has none."""
    index_of = {label: i for i, label in enumerate(node_order(graph))}
    return [
        (index_of[u], index_of[v], float(latency))
        for u, v, latency in graph.edges(data="latency", default=config.latency)
    ]


_NO_LOOKAHEAD = (
    "shards: {shards} shards need every message between them to take time, but links between shards "
    "have latency 0; give links a latency > 0 or run with shards = 1"
)
