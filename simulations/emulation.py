"""One process's share of a run: its nodes in one trio loop, on a mock clock.

`run_nodes` runs every node of a run, or a shard's part of them (`simulations.sharded_run`), and
returns what `run_emulation` needs to build the result. `Emulation` builds the nodes, starts them,
applies churn, and either decides when the run is over (one process) or keeps in step with the
other shards at barriers (`simulations.shards`).
"""

from __future__ import annotations

import gc
import heapq
import itertools
import random
import resource
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np
import torch
import trio
import trio.testing
from torch.utils.data import Dataset

from gossip.dpsgd import DPSGD
from gossip.federated import FederatedLearning
from gossip.gossip_learning import GossipLearning
from gossip.membership import MemberList
from gossip.modest import Modest
from gossip.modest_settings import ModestSettings
from gossip.protocol import RoundProtocol
from p2pfl.aggregation.base import Aggregator
from p2pfl.aggregation.registry import build_aggregator
from p2pfl.attacks import LabelFlip
from p2pfl.compute import VirtualCompute
from p2pfl.datasets import take
from p2pfl.errors import ConfigError, sole_exception
from p2pfl.learner import Learner, LocalLearner
from p2pfl.node import Node, RoundRecord
from p2pfl.registry import is_import_name
from simulations.churn import PlannedEvent
from simulations.config import (
    EVENT_DRIVEN,
    FL_SERVER,
    EmulationConfig,
    make_attack,
    make_protocol,
    protocol_params,
)
from simulations.results import ConsensusTracker, NodeSummary, summarise_nodes
from simulations.run_setup import (
    byzantine_nodes,
    churn_plan,
    data_split,
    graph_for,
    graph_links,
    learner_pool,
    node_speeds,
    run_end,
)
from simulations.seeds import Purpose, derive_seed
from simulations.shards import Barrier, Message, ShardLink, pack, unpack
from simulations.task import Task
from simulations.topology import check_size, node_order, topology
from simulations.transfer_nodes import transfer_node
from simulations.transfer_task import TransferTask
from transport.memory import MemoryNetwork, MemoryTransport, TrafficLog, open_memory_network

if TYPE_CHECKING:
    from simulations.report import ProgressReporter


class NodeFailed(RuntimeError):
    """A node's code raised during an emulation, which then stopped; the error is chained as the cause.

    Node code raising is a bug (in a rule, protocol or task of one's own, or in ours), not an event
    of the run: crashes and departures are churn. The first failure is reported once, naming the
    node, rather than every node's copy of it in nested exception groups.
    """

    def __init__(self, index: int, peer: str, virtual_time: float, cause: BaseException) -> None:
        super().__init__(f"node {index} ({peer}) failed at virtual time {virtual_time:g} s: {cause!r}")
        self.index = index
        self.peer = peer
        self.virtual_time = virtual_time
        self.cause = cause

    def __reduce__(self) -> tuple:  # across processes (`run_in_processes`), with its fields
        return NodeFailed, (self.index, self.peer, self.virtual_time, self.cause)


@dataclass(frozen=True)
class ShardPlace:
    """Where a shard's process stands in a sharded run: its index, every shard's nodes, its pipe."""

    index: int
    parts: list[list[int]]
    link: ShardLink

    @property
    def nodes(self) -> list[int]:
        return self.parts[self.index]


@dataclass
class ProcessOutcome:
    """What one process of a run (the only one, or a shard) found, for `run_emulation` to combine."""

    nodes: list[tuple[int, NodeSummary]]  # by node index
    # By node index, the evaluated rounds only: all a round's row needs, and a shard's 100,000
    # records of 5,000 nodes x 20 rounds took a second to pickle and unpickle.
    evaluated: list[tuple[int, list[RoundRecord]]]
    traffic: TrafficLog
    consensus: ConsensusTracker
    node_rounds: int
    progress: int
    stalled: bool
    failure: NodeFailed | None
    peak_rss_mib: float


def run_nodes(
    config: EmulationConfig,
    task: Task,
    graph: nx.Graph,
    progress: ProgressReporter | None,
    shard: ShardPlace | None,
) -> ProcessOutcome:
    """Run the nodes of `shard` (all nodes when None) to the end of the run."""
    absent, plan = churn_plan(config)
    emulation = Emulation(config, task, graph, absent, plan, progress, shard)
    place = () if shard is None else (shard.index,)
    with (
        _deterministic_trio(derive_seed(config.seed, Purpose.SCHEDULER, *place)),
        _torch_settings(config.torch_threads),
        _collector_for_many_objects(),
    ):
        trio.run(emulation.run, clock=trio.testing.MockClock(autojump_threshold=0))
    byzantine = emulation.byzantine
    return ProcessOutcome(
        nodes=list(
            zip(
                emulation.nodes,
                summarise_nodes(emulation.nodes.items(), byzantine=byzantine, traces=config.record_nodes),
                strict=True,
            )
        ),
        evaluated=[
            (i, [record for record in node.history if record.accuracy is not None])
            for i, node in emulation.nodes.items()
            if i not in byzantine
        ],
        traffic=emulation.network.traffic,
        consensus=emulation.consensus,
        node_rounds=sum(len(node.history) for node in emulation.nodes.values()),
        progress=emulation.progress,
        stalled=emulation.end.stalled,
        failure=emulation.failure,
        peak_rss_mib=peak_rss_mib(),
    )


def peak_rss_mib() -> float:
    """This process's peak resident memory."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@contextmanager
def _deterministic_trio(seed: int) -> Iterator[None]:
    """Make trio's scheduling order a function of `seed` for the duration of a run.

    Two things in trio depend on more than the program: it runs each batch of ready tasks forwards
    or backwards at random (to flush out order assumptions), from a module-level `random.Random`,
    which we seed; and cancel scopes whose deadlines fall on the same instant expire in the order
    of their `id()`, a memory address, which we replace by the order the deadlines were set in. In
    virtual time deadlines coincide all the time, and event-driven protocols (MoDeST aggregates
    the first models that arrive) see the order: with `id()`, the same run gave different message
    counts depending on what the process had run before.

    A third: importing Hypothesis switches trio to another way of ordering a batch (sorted by
    creation, then shuffled), so a run under pytest, where Hypothesis is a plugin, was not the run
    of `p2pfl sim run` (a crashing node recorded one round fewer). The switch is held off during a
    run: batches are ordered as without Hypothesis, which is also 8% faster at 5,000 nodes.

    This reaches into trio's private module and restores it afterwards; if trio moves what it
    patches, runs stay correct but lose reproducibility, which the determinism tests would catch.
    """
    run = getattr(getattr(trio, "_core", None), "_run", None)
    rng = getattr(run, "_r", None)
    deadlines = getattr(run, "Deadlines", None)
    if not isinstance(rng, random.Random) or deadlines is None or "add" not in vars(deadlines):
        yield
        return
    saved_state, saved_add = rng.getstate(), deadlines.add
    saved_mode = getattr(run, _HYPOTHESIS_MODE, False)
    order = itertools.count()

    def add_in_order(self: Any, deadline: float, cancel_scope: trio.CancelScope) -> None:
        heapq.heappush(self._heap, (deadline, next(order), cancel_scope))
        self._active += 1

    rng.seed(seed)
    deadlines.add = add_in_order
    setattr(run, _HYPOTHESIS_MODE, False)
    try:
        yield
    finally:
        setattr(run, _HYPOTHESIS_MODE, saved_mode)
        deadlines.add = saved_add
        rng.setstate(saved_state)


# The flag in trio's run loop that its Hypothesis plugin sets.
_HYPOTHESIS_MODE = "_ALLOW_DETERMINISTIC_SCHEDULING"


@contextmanager
def _torch_settings(threads: int) -> Iterator[None]:
    """Torch tuned for many small models, restored afterwards.

    Besides the thread count: denormal floats are flushed to zero. Runs where weights shrink (plain
    averaging of independent models) otherwise fill tensors with denormals, which the CPU handles
    tens of times slower (a 300-round run went from minutes to over 20).
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    flushed = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
        if flushed:
            torch.set_flush_denormal(False)


@contextmanager
def _collector_for_many_objects() -> Iterator[None]:
    """Python's cycle collector tuned for a run that holds millions of long-lived objects.

    By default every 700 allocations start a young-generation pass, and the full passes they trigger
    walk every object alive: at 5,000 D-PSGD nodes that was a third of the run's time, to find a few
    hundred cycles. During a run, the young generation is collected 1,000 times less often, and what
    exists once the nodes are built is frozen (never walked again; see `Emulation.run`). Both are
    undone afterwards. Runs make little cyclic garbage (a 2,000-node D-PSGD run: about 5,000
    objects), so this costs no memory: 10,000 nodes x 5 rounds peak at 1,140-1,180 MiB with this,
    with the defaults and with the collector off. (The 200 MiB it once cost came from one cycle that
    held the first batched step's tensors: see `simulations.learner_pool._import_torch_dynamo_now`.)
    """
    saved = gc.get_threshold()
    gc.set_threshold(1000 * saved[0], *saved[1:])
    try:
        yield
    finally:
        gc.set_threshold(*saved)
        gc.unfreeze()


class Emulation:
    """One run: builds the nodes, starts them, applies churn and decides when the run is over."""

    def __init__(
        self,
        config: EmulationConfig,
        task: Task,
        graph: nx.Graph,
        absent: frozenset[int],
        plan: list[PlannedEvent],
        reporter: ProgressReporter | None,
        shard: ShardPlace | None = None,
    ) -> None:
        self.config = config
        self.task = task
        self.graph = graph
        self.absent = absent
        self.plan = plan
        self.reporter = reporter
        self.peer_ids = [f"n{i:05d}" for i in range(config.nodes)]
        self.labels = labels = node_order(graph)  # node index -> the graph's label
        self.speeds = node_speeds(config, [graph.nodes[label] for label in labels])
        self.links = graph_links(graph, dict(zip(labels, self.peer_ids, strict=True)))
        self.founders = tuple(p for i, p in enumerate(self.peer_ids) if i not in absent)
        self.members = MemberList.of(self.founders)  # one list for every MoDeST node's view
        self.leaving = frozenset(n for e in plan if e.action == "leave" for n in e.nodes)
        self.byzantine = byzantine_nodes(config)
        self.byzantine_peers = frozenset(self.peer_ids[i] for i in self.byzantine)
        self.shard = shard
        # The nodes run here, in order, and the same as a set.
        self.local: Sequence[int] = range(config.nodes) if shard is None else shard.nodes
        self.here = frozenset(self.local)
        self.transports: list[MemoryTransport] = []  # every node's, those of other shards too
        self.nodes: dict[int, Node] = {}  # by index: the nodes run here
        self._splits: list[np.ndarray] | None = None
        self.scopes: dict[int, trio.CancelScope] = {}
        self.pending = list(plan)
        self.departed: set[int] = set()  # nodes that crashed or left
        self.consensus = ConsensusTracker()
        self.progress = 0  # newest round any node has recorded
        self.failure: NodeFailed | None = None  # the first node whose code raised
        self.running = 0  # nodes running here
        self.end = run_end(config)

    async def run(self) -> None:
        config = self.config
        place = () if self.shard is None else (self.shard.index,)
        async with open_memory_network(
            latency=config.latency,
            bandwidth=config.bandwidth,
            loss=config.loss,
            seed=derive_seed(config.seed, Purpose.NETWORK, *place),
            dial_any=config.protocol in EVENT_DRIVEN,
        ) as network:
            self.network = network
            self._build(network)
            gc.freeze()  # the nodes live as long as the run: see _collector_for_many_objects
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                for index in self.local:
                    if index not in self.absent:
                        nursery.start_soon(self._run_node, index)
                self._apply_due()  # events at round 0 hold from the start
                if config.resample_every:
                    nursery.start_soon(self._resample_topology)
                if self.shard is None:
                    await self._monitor()
                else:
                    await self._keep_in_step(self.shard.link)
                nursery.cancel_scope.cancel()

    def _build(self, network: MemoryNetwork) -> None:
        config, task = self.config, self.task
        self.transports = [network.add_peer(peer_id) for peer_id in self.peer_ids]
        for a, b, params in self.links:
            network.connect(a, b, **params)
        network.mark_remote([self.peer_ids[i] for i in range(config.nodes) if i not in self.here])
        self.pool = learner_pool(config, task)
        for i in self.local:
            transport = self.transports[i]
            attack = make_attack(config) if i in self.byzantine else None
            flip = attack if isinstance(attack, LabelFlip) else None  # data poisoning: trains honestly
            learner, aggregator = self._learner(i, flip)
            self.nodes[i] = Node(
                transport,
                learner,
                protocol=self._protocol(i),
                aggregator=aggregator,
                local_steps=config.local_steps,
                evaluate_every=config.evaluate_every,
                compute=VirtualCompute(config.seconds_per_step / self.speeds[i]),
                observer=self,
                attack=None if flip is not None else attack,
                attack_seed=derive_seed(config.seed, Purpose.ATTACK, i),
            )
            self.scopes[i] = trio.CancelScope()

    def _learner(self, index: int, flip: LabelFlip | None) -> tuple[LocalLearner, Aggregator]:
        """Node `index`'s learner (pooled when the pool can take it) and aggregator."""
        config, task = self.config, self.task
        init_seed = derive_seed(config.seed, Purpose.INIT, index if config.init == "independent" else 0)
        batch_seed = derive_seed(config.seed, Purpose.BATCHES, index)
        if self.pool is not None:
            data = partial(self._train_data, index, flip)
            learner = self.pool.learner(data=data, init_seed=init_seed, seed=batch_seed)
            return learner, build_aggregator(config.aggregation, **config.aggregation_params)
        model = task.make_model(seed=init_seed)
        if isinstance(task, TransferTask):
            honest_before = sum(1 for j in range(index) if j not in self.byzantine)
            rank = None if index in self.byzantine else honest_before
            train, aggregator = transfer_node(
                task,
                config,
                model,
                rank=rank,
                data_seed=derive_seed(config.seed, Purpose.SPLIT, index),
                aggregation_seed=derive_seed(config.seed, Purpose.AGGREGATION, index),
            )
            train = flip.apply(train) if flip is not None else train
        else:
            train = self._train_data(index, flip)
            aggregator = build_aggregator(config.aggregation, **config.aggregation_params)
        learner = Learner(
            model, train, task.test, batch_size=config.batch_size, lr=config.lr, seed=batch_seed
        )
        return learner, aggregator

    def _train_data(self, index: int, flip: LabelFlip | None) -> Dataset:
        data = self._local_data(index)
        return flip.apply(data) if flip is not None else data

    def _local_data(self, index: int) -> Dataset:
        if self.task.local_data is not None:
            return self.task.local_data(index)
        if self._splits is None:
            self._splits = data_split(self.task, self.config)
        return take(self.task.train, self._splits[index])

    async def _resample_topology(self) -> None:
        """Rewire the links between rounds: after the merge, before anyone sends again."""
        config = self.config
        half_training = 0.5 * config.local_steps * config.seconds_per_step
        start = trio.current_time()
        for round_ in range(config.resample_every, config.rounds, config.resample_every):
            await trio.sleep_until(start + round_ * config.period + half_training)
            graph = self._live_graph(round_)
            wanted = {frozenset((self.peer_ids[u], self.peer_ids[v])) for u, v in graph.edges}
            current = {frozenset((t.peer_id, peer)) for t in self.transports for peer in t.peers()}
            for a, b in sorted(tuple(sorted(link)) for link in current - wanted):
                self.network.disconnect(a, b)
            for a, b in sorted(tuple(sorted(link)) for link in wanted - current):
                self.network.connect(a, b)

    def _live_graph(self, round_: int) -> nx.Graph:
        """The topology for rounds from `round_` on, drawn over the nodes still running, as a peer
        sampler hands out live peers: departed nodes get no links back.

        When the family has no graph on that many nodes (say, torus rows that no longer divide
        them), it is drawn over all nodes and the edges of departed ones are left out.
        """
        config = self.config
        live = [i for i in range(config.nodes) if i not in self.departed]
        family = topology(config.topology, **config.topology_params)
        seed = derive_seed(config.seed, Purpose.TOPOLOGY, round_)
        try:
            check_size(family, len(live))
        except ConfigError:
            return graph_for(config, round_).subgraph(live)
        return nx.relabel_nodes(family.build(len(live), seed), dict(enumerate(live)))

    def _protocol(self, index: int) -> RoundProtocol:
        config = self.config
        if is_import_name(config.protocol):
            return make_protocol(config, seed=derive_seed(config.seed, Purpose.PROTOCOL, index))
        params = protocol_params(config)
        founders = self.founders
        if config.protocol == "modest":
            join_fanout = params.pop("join_fanout", 3)
            return Modest(
                rounds=config.rounds,
                participants=self.members,
                settings=ModestSettings(**params),
                join_fanout=join_fanout,
                leave_on_stop=index in self.leaving,
            )
        if config.protocol == "fl":
            server = self.peer_ids[FL_SERVER]
            clients = tuple(p for p in founders if p != server)
            return FederatedLearning(
                rounds=config.rounds,
                server=server,
                clients=clients,
                seed=derive_seed(config.seed, Purpose.PROTOCOL),
                **params,
            )
        if config.protocol == "dpsgd":
            return DPSGD(rounds=config.rounds, period=config.period)
        seed = derive_seed(config.seed, Purpose.PROTOCOL, index)
        return GossipLearning(rounds=config.rounds, period=config.period, fanout=config.fanout, seed=seed)

    async def _run_node(self, index: int) -> None:
        self.running += 1
        try:
            with self.scopes[index]:
                await self.nodes[index].run()
        except Exception as exc:  # a bug in node code (own rules and protocols included): stop the run
            if self.failure is None:
                self.failure = NodeFailed(
                    index, self.peer_ids[index], trio.current_time(), sole_exception(exc)
                )
            self.nursery.cancel_scope.cancel()
        finally:
            self.running -= 1

    def round_finished(self, node: Node, record: RoundRecord) -> None:
        """Node observer: track progress and apply churn the moment its round is reached (in a
        sharded run, at the next barrier: only then do the shards agree on the run's progress)."""
        if self.config.consensus and record.accuracy is not None and node.peer_id not in self.byzantine_peers:
            self.consensus.add(record.round, node.learner.state().flat)
        if record.round <= self.progress:
            return
        self.progress = record.round
        if self.reporter is not None:
            self.reporter.update(self.progress, self.config.rounds)
        if self.shard is None:
            self._apply_due()

    def _apply_due(self) -> None:
        """Apply the churn events whose round the run has reached."""
        while self.pending and self.pending[0].round <= self.progress:
            self._apply(self.pending.pop(0))

    async def _monitor(self) -> None:
        """Return when the run is over (`simulations.stopping`)."""
        end = self.end
        while True:
            await trio.sleep_until(end.next_check)
            joins = self._joins_pending()
            if end.over(
                trio.current_time(), progress=self.progress, running=self.running, joins_pending=joins
            ):
                return

    def _joins_pending(self) -> bool:
        return any(e.action == "join" for e in self.pending)

    async def _keep_in_step(self, link: ShardLink) -> None:
        """A shard's barriers (`simulations.shards`): hand over what was sent to other shards and
        take what they sent here, learn the run's progress, apply the churn it makes due, and run on
        to the next barrier. Return when the coordinator says the run is over."""
        network = self.network
        while True:
            # Let everything due at this instant run first: then the next deadline is the next event.
            await trio.testing.wait_all_tasks_blocked()
            now = trio.current_time()
            next_event = now + trio.lowlevel.current_statistics().seconds_to_next_deadline
            outgoing: list[list[Message]] = [[] for _ in self.shard.parts]
            shard_of = self._shard_of
            earliest = next_event
            for message in network.take_outgoing():
                outgoing[shard_of[message[2]]].append(message)
                earliest = min(earliest, message[0])
            reply = link.barrier(
                Barrier(
                    [pack(messages) for messages in outgoing],
                    earliest,
                    progress=self.progress,
                    running=self.running,
                    churn_round=self.pending[0].round if self.pending else None,
                    joins_pending=self._joins_pending(),
                )
            )
            if reply.stop:
                return
            for parcel in reply.parcels:
                for message in unpack(parcel):
                    network.inject(*message)
            self.progress = max(self.progress, reply.progress)
            self._apply_due()
            await trio.sleep_until(reply.next_barrier)

    @cached_property
    def _shard_of(self) -> dict[str, int]:
        """The shard of each node, by peer id."""
        return {self.peer_ids[i]: k for k, nodes in enumerate(self.shard.parts) for i in nodes}

    def _apply(self, event: PlannedEvent) -> None:
        if event.action == "partition":
            self.network.partition([[self.peer_ids[i] for i in event.nodes]])
            return
        if event.action == "heal":
            self.network.heal()
            return
        for index in event.nodes:
            peer = self.peer_ids[index]
            if event.action == "join":
                if index in self.here:
                    self.nursery.start_soon(self._run_node, index)
                continue
            self.departed.add(index)
            if event.action == "crash":
                self.network.crash(peer)
            elif self.config.protocol not in EVENT_DRIVEN:
                for neighbour in sorted(self.transports[index].peers()):
                    self.network.disconnect(peer, neighbour)
            if index in self.here:
                self.scopes[index].cancel()
