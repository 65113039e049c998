"""A run split over processes: which shard runs which nodes, and how the shards keep in step.

One trio loop keeps one core busy. A sharded run gives each of `shards` processes a part of the
nodes (`split_nodes`: equal sizes, few edges between parts), and every process the whole network
(all peers and links) so that links, crashes and partitions are decided where they were before.
Messages to a node of another shard leave through `MemoryNetwork.take_outgoing` and enter there
through `MemoryNetwork.inject`.

The shards keep virtual time in step conservatively: no message between shards arrives sooner
than `lookahead` seconds (the smallest latency of a link that crosses shards) after it was sent.
So at a barrier at instant T, where every shard hands over what it sent since the last one and
says when it next has something to do, nothing can arrive before the earliest such instant plus
the lookahead: that is the next barrier, and until it the shards run on their own.

A sharded run is deterministic for its seed and shard count. It is not the run of one process
(each shard has its own scheduler and loss draws), and churn takes effect at the first barrier
after the run reaches the event's round, within one lookahead of when one process applies it.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import networkx as nx

from simulations.stopping import RunEnd
from transport.base import PeerId

__all__ = [
    "Barrier",
    "Done",
    "Reply",
    "ShardLink",
    "coordinate",
    "lookahead",
    "pack",
    "receive",
    "send",
    "split_nodes",
    "unpack",
]

# (arrival instant, sender, recipient, frame, topic): a message on its way to another shard.
Message = tuple[float, PeerId, PeerId, bytes, "str | None"]


def split_nodes(graph: nx.Graph, shards: int, *, seed: int) -> list[list[int]]:
    """The nodes of `graph` (labelled 0..n-1) in `shards` parts whose sizes differ by at most one,
    with few edges between parts: every message on such an edge crosses processes, which costs
    pickling and a second decode. Recursive Kernighan-Lin bisection, seeded: on a random 4-regular
    graph of 10,000 nodes, 17% of the edges cross two shards instead of half with blocks of indices.
    """
    nodes = graph.number_of_nodes()
    if not 1 <= shards <= nodes:
        raise ValueError(f"shards must be between 1 and the {nodes} nodes, got {shards}")
    return [sorted(part) for part in _bisect(graph, sorted(graph), shards, seed)]


def _bisect(graph: nx.Graph, nodes: list[int], parts: int, seed: int) -> list[list[int]]:
    if parts == 1:
        return [nodes]
    left_parts = parts // 2
    cut = len(nodes) * left_parts // parts  # sizes stay proportional to the parts on each side
    subgraph = graph.subgraph(nodes)
    left, right = nx.community.kernighan_lin_bisection(
        subgraph, partition=(set(nodes[:cut]), set(nodes[cut:])), max_iter=2, seed=seed
    )
    if len(left) != cut:  # the halves come back in either order (their sizes are kept)
        left, right = right, left
    return [
        *_bisect(graph, sorted(left), left_parts, seed + 1),
        *_bisect(graph, sorted(right), parts - left_parts, seed + 2),
    ]


def lookahead(
    ranges: Sequence[Collection[int]],
    links: Sequence[tuple[int, int, float]],
    *,
    default_latency: float,
    any_pair: bool,
) -> float:
    """The least latency of a message between shards: over `links` (node, node, latency) whose ends
    are in different shards, and `default_latency` too when `any_pair` of nodes may talk (protocols
    that dial peers they have no link to)."""
    shard_of = {}
    for shard, nodes in enumerate(ranges):
        shard_of.update(dict.fromkeys(nodes, shard))
    least = default_latency if any_pair else math.inf
    for a, b, latency in links:
        if shard_of[a] != shard_of[b]:
            least = min(least, latency)
    return least


@dataclass
class Barrier:
    """What a shard hands over at a barrier.

    `parcels[k]`: the messages for shard k sent since the last barrier (`pack`; empty bytes if none).
    `earliest`: the first instant at which anything known here happens: the shard's next event, once
    everything due at this instant has run, or the arrival of a message in a parcel. `progress`: the
    newest round one of its nodes recorded; `running`: how many of its nodes run. `churn_round`: the
    round of the next churn event not yet applied and `joins_pending` whether a join is among those
    left (both the same in every shard).
    """

    parcels: list[bytes]
    earliest: float
    progress: int
    running: int
    churn_round: int | None
    joins_pending: bool


@dataclass
class Done:
    """A shard's last word: its part of the result (whatever the emulator returns for a shard)."""

    outcome: object


@dataclass
class Reply:
    """The coordinator's answer at a barrier: the parcels for the shard, in the order of the shards
    that sent them, the run's state, and the next barrier's instant. `stop`: end the run now (it is
    over, or another shard failed)."""

    parcels: list[bytes] = field(default_factory=list)
    progress: int = 0
    running: int = 0
    next_barrier: float = math.inf
    stop: bool = False


def send(connection: Connection, value: object) -> None:
    """Send `value` to our own process at the other end, pickled whole.

    Plain pickle, not the pipe's own: with torch imported, that one passes tensors as shared memory
    whose file descriptors the sender must outlive, and a shard exits as soon as it has sent its part.
    """
    connection.send_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def receive(connection: Connection) -> object:
    return pickle.loads(connection.recv_bytes())


def pack(messages: Sequence[Message]) -> bytes:
    """`messages` as one parcel, which the coordinator forwards as it is: unpickling every frame and
    pickling it again took the coordinator 1.7 s of CPU over a 10,000-node run of 20 rounds, while
    both shards waited at the barriers. A frame sent to several nodes of a shard is in it once."""
    return pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL) if messages else b""


def unpack(parcel: bytes) -> list[Message]:
    """The messages in a parcel from `pack`."""
    return pickle.loads(parcel) if parcel else []


class ShardLink:
    """A shard's end of its pipe to the coordinator."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def barrier(self, report: Barrier) -> Reply:
        """Hand `report` over and wait (blocking the shard's loop, on purpose) for the reply."""
        send(self._connection, report)
        return receive(self._connection)  # type: ignore[return-value]

    def done(self, outcome: object) -> None:
        send(self._connection, Done(outcome))


def coordinate(
    connections: Sequence[Connection],
    *,
    lookahead: float,
    end: RunEnd,
    on_progress: Callable[[int], None] | None = None,
) -> list[object]:
    """Run the barriers of the shards at the other ends of `connections` until the run is over;
    return each shard's outcome, in shard order.

    A shard that is done early (one of its nodes failed) stops the others at their next barrier.
    """
    if not lookahead > 0:
        raise ValueError(f"lookahead must be > 0, got {lookahead}")
    outcomes: list[object] = [None] * len(connections)
    active = list(range(len(connections)))
    now, progress = 0.0, 0
    while active:
        reports = {shard: receive(connections[shard]) for shard in active}
        for shard, report in reports.items():
            if isinstance(report, Done):
                outcomes[shard] = report.outcome
        barriers = {shard: r for shard, r in reports.items() if isinstance(r, Barrier)}
        if len(barriers) < len(reports):  # someone stopped on its own: everyone stops
            for shard in barriers:
                send(connections[shard], Reply(stop=True))
            active = list(barriers)
            continue
        progress = max(progress, *(r.progress for r in barriers.values()))
        running = sum(r.running for r in barriers.values())
        first = next(iter(barriers.values()))
        churn_round = first.churn_round
        if on_progress is not None:
            on_progress(progress)
        over = end.over(now, progress=progress, running=running, joins_pending=first.joins_pending)
        incoming: dict[int, list[bytes]] = {shard: [] for shard in barriers}
        for report in barriers.values():
            for shard, parcel in enumerate(report.parcels):
                if parcel:
                    incoming[shard].append(parcel)
        earliest = min(r.earliest for r in barriers.values())
        if churn_round is not None and progress >= churn_round:
            earliest = now  # the shards apply churn now: its effects start at this instant
        now = min(max(now, earliest) + lookahead, end.next_check)  # the end is judged on its instants
        for shard in barriers:
            send(
                connections[shard],
                Reply(incoming[shard], progress=progress, running=running, next_barrier=now, stop=over),
            )
    return outcomes
