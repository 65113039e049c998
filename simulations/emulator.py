"""Run real `Node`s on a networkx topology over the in-memory transport, in virtual time.

The node code is the daemon's: only the transport (in-memory links with latency) and the compute
policy (modeled training time on trio's `MockClock`) differ. Every random choice derives from the
config's seed, so a run is deterministic for a seed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
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
from gossip.modest import Modest
from gossip.modest_settings import ModestSettings
from gossip.protocol import RoundProtocol
from p2pfl.aggregation.base import Aggregator, Contribution
from p2pfl.aggregation.bristle import Bristle
from p2pfl.aggregation.registry import build_aggregator
from p2pfl.attacks import Attack, LabelFlip, build_attack, choose_byzantine
from p2pfl.compute import VirtualCompute
from p2pfl.datasets import dirichlet_split, iid_split, labels_of, take
from p2pfl.errors import ConfigError
from p2pfl.learner import Learner
from p2pfl.model_state import ModelState
from p2pfl.node import Node, RoundRecord
from p2pfl.transfer import KeepLocal
from simulations.churn import ChurnEvent, PlannedEvent, plan_churn
from simulations.results import ConsensusTracker, EmulationResult, summarise_nodes, summarise_rounds
from simulations.seeds import derive_seed
from simulations.synthetic import synthetic_task
from simulations.task import Task, digits_task
from simulations.topology import build_topology, load_topology
from simulations.transfer_task import TransferParams, TransferTask, digits_transfer_task
from transport.links import LinkParams
from transport.memory import MemoryNetwork, open_memory_network

if TYPE_CHECKING:
    from simulations.report import ProgressReporter

# Purposes for derived seeds, so that e.g. changing the data split never changes the topology.
(_TOPOLOGY, _SPLIT, _BATCHES, _PROTOCOL, _INIT, _CHURN, _SCHEDULER, _BYZANTINE, _ATTACK, _NETWORK, _SPEED) = (
    range(11)
)
_AGGREGATION = 11

PROTOCOLS = ("gossip", "dpsgd", "modest", "fl")
# Protocols driven by events rather than a clock: their run ends when the last round is recorded.
_EVENT_DRIVEN = ("modest", "fl")
_MODEST_PARAMS = frozenset(f.name for f in fields(ModestSettings)) | {"join_fanout"}
_FL_PARAMS = frozenset({"s", "round_timeout"})
_FL_SERVER = 0  # node index of the FL baseline's server
_NUM_CLASSES = 10  # of the digits task; label_flip's default
_BRISTLE_PARAMS = ("closest", "random_others", "shared_classes")


@dataclass(frozen=True)
class EmulationConfig:
    """One emulated run. Times are virtual seconds."""

    nodes: int = 16
    topology: str = "random_regular"
    topology_params: dict[str, int | float] = field(default_factory=dict)
    topology_file: str | None = None  # a GraphML / GML / edge-list file; `nodes` must match it
    # Clock-driven protocols (gossip, dpsgd): draw a new graph of the same kind every this many
    # rounds (0: never), e.g. a fresh random 4-regular graph per round.
    resample_every: int = 0
    # or "synthetic": a Gaussian mixture generated per node; or "digits_transfer": Bristle's setting
    # (simulations/transfer_task.py), digits through a frozen pre-trained extractor, each node training
    # only an output layer on its own classes (needs partition "classes"). In it, Byzantine nodes
    # train every class on data of all classes and never merge (they keep their own model), and
    # honest nodes keep their bias local whatever the aggregation.
    task: str = "digits"
    # synthetic: features, classes, separation, samples_per_node, test_samples_per_class;
    # digits_transfer: the fields of simulations.transfer_task.TransferParams
    task_params: dict[str, Any] = field(default_factory=dict)
    protocol: str = "gossip"  # gossip, dpsgd, modest or fl
    # modest: ModestSettings fields (s, a, sf, ping_timeout, ping_interval, inactivity_threshold,
    # aggregation_timeout, min_models) and join_fanout; fl: s and round_timeout.
    protocol_params: dict[str, Any] = field(default_factory=dict)
    churn: tuple[ChurnEvent, ...] = ()
    # Byzantine nodes: `byzantine_fraction` of the nodes (picked by seed) run `attack` (a name from
    # p2pfl.attacks.ATTACKS, with `attack_params`); rows then average honest nodes only.
    attack: str | None = None
    attack_params: dict[str, Any] = field(default_factory=dict)
    byzantine_fraction: float = 0.0
    stall_timeout: float = 600.0  # stop (and say so) when no round finishes for this long
    # Intra-op threads for torch during the run. Nodes' models are small: with more threads torch
    # spends its time handing tiny kernels around (measured 20x slower on a busy 2-core machine).
    torch_threads: int = 1
    # A rule of p2pfl.aggregation.registry, or "bristle" (task digits_transfer only; params closest,
    # random_others, shared_classes; built per node on its local test set and classes).
    aggregation: str = "fedavg"
    aggregation_params: dict[str, object] = field(default_factory=dict)
    init: str = "shared"  # or "independent": every node draws its own initial weights
    hidden: tuple[int, ...] = (32,)
    activation: str = "relu"
    xavier: bool = False
    evaluate_every: int = 1
    rounds: int = 40
    partition: str = "iid"  # iid, dirichlet (alpha) or classes (classes_per_node; digits_transfer)
    alpha: float = 0.5
    classes_per_node: int = 4  # partition "classes": the r-th honest node has classes r, r+1, ... mod 10
    local_steps: int = 10
    batch_size: int = 16
    lr: float = 0.2
    fanout: int = 1
    period: float = 1.0
    latency: float = 0.01  # seconds per message, every link (a graph's edge attribute overrides)
    bandwidth: float | None = None  # bytes/s per link direction, None: unlimited (edge attribute too)
    loss: float = 0.0  # probability a message vanishes (edge attribute too)
    # Per-node compute speed: a node's training takes seconds_per_step / speed per step. Speeds are
    # log-normal with this sigma (0: all 1.0), or a graph's "speed" node attribute.
    speed_sigma: float = 0.0
    # Also measure, on evaluated rounds, the consensus distance: mean squared L2 distance of the
    # honest models that recorded the round to their average (costs a model copy per node).
    consensus: bool = False
    record_nodes: bool = False  # put every node's per-round accuracy in its summary
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
        if self.partition not in ("iid", "dirichlet", "classes"):
            raise ConfigError(f"partition must be 'iid', 'dirichlet' or 'classes', got {self.partition!r}")
        if self.partition == "dirichlet" and not self.alpha > 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        for name in ("local_steps", "batch_size", "fanout"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.latency < 0 or self.seconds_per_step < 0:
            raise ConfigError("latency and seconds_per_step must be >= 0")
        if self.bandwidth is not None and not self.bandwidth > 0:
            raise ConfigError(f"bandwidth must be > 0 bytes/s or None, got {self.bandwidth}")
        if not 0.0 <= self.loss < 1.0:
            raise ConfigError(f"loss must be in [0, 1), got {self.loss}")
        if self.speed_sigma < 0:
            raise ConfigError(f"speed_sigma must be >= 0, got {self.speed_sigma}")

        if self.task not in ("digits", "synthetic", "digits_transfer"):
            raise ConfigError(f"task must be 'digits', 'synthetic' or 'digits_transfer', got {self.task!r}")
        _check_transfer(self)
        if self.task == "digits" and self.task_params:
            raise ConfigError(f"task_params: the digits task takes none, got {sorted(self.task_params)}")
        if self.task == "synthetic":
            _make_task(self)  # raises ConfigError on bad task_params
        if self.resample_every < 0:
            raise ConfigError(f"resample_every must be >= 0, got {self.resample_every}")
        if self.resample_every and (self.protocol in _EVENT_DRIVEN or self.topology_file):
            raise ConfigError("resample_every needs a clock-driven protocol and a named topology")
        if self.topology_file is not None:
            graph = load_topology(self.topology_file)
            if graph.number_of_nodes() != self.nodes:
                raise ConfigError(
                    f"topology_file {self.topology_file} has {graph.number_of_nodes()} nodes "
                    f"but nodes is {self.nodes}"
                )
        if self.torch_threads < 1:
            raise ConfigError(f"torch_threads must be >= 1, got {self.torch_threads}")
        if not self.stall_timeout > 0:
            raise ConfigError(f"stall_timeout must be > 0, got {self.stall_timeout}")
        _protocol_params(self)  # raises ConfigError on bad params
        if not 0.0 <= self.byzantine_fraction < 1.0:
            raise ConfigError(f"byzantine_fraction must be in [0, 1), got {self.byzantine_fraction}")
        if self.byzantine_fraction and self.attack is None:
            raise ConfigError("byzantine_fraction > 0 needs an attack")
        if self.attack is not None:
            _build_attack(self)  # raises ConfigError naming the attack
        if any(e.action == "join" for e in self.churn) and self.protocol != "modest":
            raise ConfigError("churn: join is supported with protocol 'modest' only")
        busy = self.local_steps * self.seconds_per_step + self.latency
        if self.protocol not in _EVENT_DRIVEN and busy >= self.period:
            raise ConfigError(
                f"period ({self.period} s) must exceed training time plus latency ({busy:g} s), "
                "or models would arrive after the round they belong to"
            )


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
    task = task or _make_task(config)
    if graph is None:
        graph = _graph(config, 0)
    elif graph.number_of_nodes() != config.nodes:
        raise ConfigError(f"graph has {graph.number_of_nodes()} nodes but config.nodes is {config.nodes}")
    absent, plan = plan_churn(
        config.churn,
        config.nodes,
        seed=derive_seed(config.seed, _CHURN),
        protected=frozenset({_FL_SERVER}) if config.protocol == "fl" else frozenset(),
    )
    emulation = _Emulation(config, task, graph, absent, plan, progress)
    started = time.perf_counter()
    with _seeded_scheduler(derive_seed(config.seed, _SCHEDULER)), _torch_settings(config.torch_threads):
        trio.run(emulation.run, clock=trio.testing.MockClock(autojump_threshold=0))
    wall_s = time.perf_counter() - started
    return EmulationResult(
        config=config,
        rounds=summarise_rounds(emulation.honest_nodes, emulation.network, emulation.consensus),
        nodes=summarise_nodes(emulation.nodes, byzantine=emulation.byzantine, traces=config.record_nodes),
        churn=plan,
        wall_s=wall_s,
        stalled=emulation.stalled,
        graph=nx.convert_node_labels_to_integers(graph, ordering="sorted"),
    )


@contextmanager
def _seeded_scheduler(seed: int) -> Iterator[None]:
    """Make trio's scheduling order a function of `seed` for the duration of a run.

    trio runs each batch of ready tasks forwards or backwards at random (to flush out order
    assumptions), from a module-level `random.Random`. Event-driven protocols (MoDeST aggregates the
    first models that arrive) can see that order, so an emulation seeds it and restores it after.
    This reaches into trio's private module; if trio moves it, runs stay correct but lose
    reproducibility, which the determinism tests would catch.
    """
    rng = getattr(getattr(trio, "_core", None), "_run", None)
    rng = getattr(rng, "_r", None)
    if not isinstance(rng, random.Random):
        yield
        return
    saved = rng.getstate()
    rng.seed(seed)
    try:
        yield
    finally:
        rng.setstate(saved)


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


class _Emulation:
    """One run: builds the nodes, starts them, applies churn and decides when the run is over."""

    def __init__(
        self,
        config: EmulationConfig,
        task: Task,
        graph: nx.Graph,
        absent: frozenset[int],
        plan: list[PlannedEvent],
        reporter: ProgressReporter | None,
    ) -> None:
        self.config = config
        self.task = task
        self.graph = graph
        self.absent = absent
        self.plan = plan
        self.reporter = reporter
        self.peer_ids = [f"n{i:05d}" for i in range(config.nodes)]
        labels = sorted(graph.nodes)
        self.speeds = _speeds(config, [graph.nodes[label] for label in labels])
        self.links = _links(graph, dict(zip(labels, self.peer_ids, strict=True)))
        self.founders = tuple(p for i, p in enumerate(self.peer_ids) if i not in absent)
        self.leaving = frozenset(n for e in plan if e.action == "leave" for n in e.nodes)
        self.byzantine = frozenset(
            choose_byzantine(
                config.nodes, config.byzantine_fraction, seed=derive_seed(config.seed, _BYZANTINE)
            )
            if config.attack is not None
            else ()
        )
        self.nodes: list[Node] = []
        self._shards: list[np.ndarray] | None = None
        self.scopes: list[trio.CancelScope] = []
        self.pending = list(plan)
        self.consensus = ConsensusTracker()
        self.progress = 0  # newest round any node has recorded
        self.running = 0
        self.stalled = False

    async def run(self) -> None:
        config = self.config
        async with open_memory_network(
            latency=config.latency,
            bandwidth=config.bandwidth,
            loss=config.loss,
            seed=derive_seed(config.seed, _NETWORK),
            dial_any=config.protocol in _EVENT_DRIVEN,
        ) as network:
            self.network = network
            self._build(network)
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                for index in range(config.nodes):
                    if index not in self.absent:
                        nursery.start_soon(self._run_node, index)
                if config.resample_every:
                    nursery.start_soon(self._resample_topology)
                await self._monitor()
                nursery.cancel_scope.cancel()

    def _build(self, network: MemoryNetwork) -> None:
        config, task = self.config, self.task
        transports = [network.add_peer(peer_id) for peer_id in self.peer_ids]
        for a, b, params in self.links:
            network.connect(a, b, **params)
        for i, transport in enumerate(transports):
            init_seed = derive_seed(config.seed, _INIT, i if config.init == "independent" else 0)
            attack = _build_attack(config) if i in self.byzantine else None
            model = task.make_model(seed=init_seed)
            if isinstance(task, TransferTask):
                train, aggregator = self._transfer_node(i, model)
            else:
                train = self._local_data(i)
                aggregator = build_aggregator(config.aggregation, **config.aggregation_params)
            if isinstance(attack, LabelFlip):
                train, attack = attack.apply(train), None  # data poisoning: it then trains honestly
            learner = Learner(
                model,
                train,
                task.test,
                batch_size=config.batch_size,
                lr=config.lr,
                seed=derive_seed(config.seed, _BATCHES, i),
            )
            self.nodes.append(
                Node(
                    transport,
                    learner,
                    protocol=self._protocol(i),
                    aggregator=aggregator,
                    local_steps=config.local_steps,
                    evaluate_every=config.evaluate_every,
                    compute=VirtualCompute(config.seconds_per_step / self.speeds[i]),
                    observer=self,
                    attack=attack,
                    attack_seed=derive_seed(config.seed, _ATTACK, i),
                )
            )
            self.scopes.append(trio.CancelScope())

    def _transfer_node(self, index: int, model: torch.nn.Module) -> tuple[Dataset, Aggregator]:
        """digits_transfer: the node's data (by its rank among the honest nodes) and aggregator; its
        model (a `MaskedLinear`) is told which classes it trains."""
        config, task = self.config, self.task
        assert isinstance(task, TransferTask)
        rng = np.random.default_rng(derive_seed(config.seed, _SPLIT, index))
        if index in self.byzantine:
            data = task.node_data(rank=None, classes_per_node=config.classes_per_node, rng=rng)
            return data.train, _KeepOwn()
        rank = sum(1 for j in range(index) if j not in self.byzantine)
        data = task.node_data(rank=rank, classes_per_node=config.classes_per_node, rng=rng)
        model.train_only(data.classes)
        if config.aggregation == "bristle":
            assert data.local_test is not None and data.classes is not None
            features, labels = data.local_test.tensors
            seed = derive_seed(config.seed, _AGGREGATION, index)
            return data.train, _build_bristle(config, features, labels, data.classes, seed=seed)
        rule = build_aggregator(config.aggregation, **config.aggregation_params)
        return data.train, KeepLocal(rule, ("bias",))

    def _local_data(self, index: int) -> Dataset:
        if self.task.local_data is not None:
            return self.task.local_data(index)
        if self._shards is None:
            self._shards = _split(self.task, self.config)
        return take(self.task.train, self._shards[index])

    async def _resample_topology(self) -> None:
        """Rewire the links between rounds: after the merge, before anyone sends again."""
        config = self.config
        half_training = 0.5 * config.local_steps * config.seconds_per_step
        start = trio.current_time()
        for round_ in range(config.resample_every, config.rounds, config.resample_every):
            await trio.sleep_until(start + round_ * config.period + half_training)
            graph = _graph(config, round_)
            wanted = {frozenset((self.peer_ids[u], self.peer_ids[v])) for u, v in graph.edges}
            current = {
                frozenset((node.peer_id, peer)) for node in self.nodes for peer in node.transport.peers()
            }
            for a, b in sorted(tuple(sorted(link)) for link in current - wanted):
                self.network.disconnect(a, b)
            for a, b in sorted(tuple(sorted(link)) for link in wanted - current):
                self.network.connect(a, b)

    def _protocol(self, index: int) -> RoundProtocol:
        config = self.config
        params = _protocol_params(config)
        founders = self.founders
        if config.protocol == "modest":
            join_fanout = params.pop("join_fanout", 3)
            return Modest(
                rounds=config.rounds,
                participants=founders,
                settings=ModestSettings(**params),
                join_fanout=join_fanout,
                leave_on_stop=index in self.leaving,
            )
        if config.protocol == "fl":
            server = self.peer_ids[_FL_SERVER]
            clients = tuple(p for p in founders if p != server)
            return FederatedLearning(
                rounds=config.rounds,
                server=server,
                clients=clients,
                seed=derive_seed(config.seed, _PROTOCOL),
                **params,
            )
        if config.protocol == "dpsgd":
            return DPSGD(rounds=config.rounds, period=config.period)
        seed = derive_seed(config.seed, _PROTOCOL, index)
        return GossipLearning(rounds=config.rounds, period=config.period, fanout=config.fanout, seed=seed)

    async def _run_node(self, index: int) -> None:
        self.running += 1
        try:
            with self.scopes[index]:
                await self.nodes[index].run()
        finally:
            self.running -= 1

    @property
    def honest_nodes(self) -> list[Node]:
        return [node for i, node in enumerate(self.nodes) if i not in self.byzantine]

    def round_finished(self, node: Node, record: RoundRecord) -> None:
        """Node observer: track progress and apply churn the moment its round is reached."""
        if self.config.consensus and record.accuracy is not None and node.attack is None:
            self.consensus.add(record.round, node.learner.state().flat)
        if record.round <= self.progress:
            return
        self.progress = record.round
        if self.reporter is not None:
            self.reporter.update(self.progress, self.config.rounds)
        while self.pending and self.pending[0].round <= self.progress:
            self._apply(self.pending.pop(0))

    async def _monitor(self) -> None:
        """Return when the run is over: all rounds done, nobody left running, or no progress for long."""
        config = self.config
        progress, changed_at = self.progress, trio.current_time()
        while True:
            await trio.sleep(config.period)
            if self.running == 0 and not any(e.action == "join" for e in self.pending):
                break
            if config.protocol in _EVENT_DRIVEN and self.progress >= config.rounds:
                break
            if self.progress > progress:
                progress, changed_at = self.progress, trio.current_time()
            elif trio.current_time() - changed_at > config.stall_timeout:
                break
        self.stalled = self.progress < config.rounds

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
                self.nursery.start_soon(self._run_node, index)
                continue
            if event.action == "crash":
                self.network.crash(peer)
            elif self.config.protocol not in _EVENT_DRIVEN:
                for neighbour in sorted(self.nodes[index].transport.peers()):
                    self.network.disconnect(peer, neighbour)
            self.scopes[index].cancel()


def _speeds(config: EmulationConfig, attributes: list[dict[str, Any]]) -> list[float]:
    """Each node's compute speed: its graph attribute "speed", else a seeded log-normal draw."""
    rng = np.random.default_rng(derive_seed(config.seed, _SPEED))
    drawn = rng.lognormal(0.0, config.speed_sigma, size=len(attributes)) if config.speed_sigma else None
    speeds = []
    for i, attrs in enumerate(attributes):
        speed = float(attrs.get("speed", drawn[i] if drawn is not None else 1.0))
        if not speed > 0:
            raise ConfigError(f"node {i}: speed must be > 0, got {speed}")
        speeds.append(speed)
    return speeds


def _links(graph: nx.Graph, peer_of: dict[Any, str]) -> list[tuple[str, str, dict[str, float]]]:
    """Each edge as (peer, peer, link parameters from its attributes), checked before the run."""
    links = []
    for u, v, attributes in graph.edges(data=True):
        params = {k: float(attributes[k]) for k in ("latency", "bandwidth", "loss") if k in attributes}
        try:
            LinkParams(**{"latency": 0.0, **params})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"topology edge ({u}, {v}): {exc}") from exc
        links.append((peer_of[u], peer_of[v], params))
    return links


def _make_task(config: EmulationConfig) -> Task:
    if config.task == "digits_transfer":
        return digits_transfer_task(seed=config.seed, params=TransferParams.parse(config.task_params))
    model = dict(hidden=config.hidden, activation=config.activation, xavier=config.xavier)
    if config.task == "digits":
        return digits_task(seed=config.seed, **model)
    alpha = config.alpha if config.partition == "dirichlet" else None
    try:
        return synthetic_task(seed=config.seed, alpha=alpha, **model, **config.task_params)
    except TypeError as exc:
        raise ConfigError(f"task_params: {exc}") from exc


def _check_transfer(config: EmulationConfig) -> None:
    """The digits_transfer task, the classes partition and bristle only go together."""
    transfer = config.task == "digits_transfer"
    if transfer:
        params = TransferParams.parse(config.task_params)
        if config.partition != "classes":
            raise ConfigError(f"partition: task 'digits_transfer' needs 'classes', got {config.partition!r}")
    elif config.partition == "classes":
        raise ConfigError(f"partition 'classes' needs task 'digits_transfer', got task {config.task!r}")
    per_node = config.classes_per_node
    if isinstance(per_node, bool) or not isinstance(per_node, int) or not 1 <= per_node <= _NUM_CLASSES:
        raise ConfigError(f"classes_per_node must be an integer in [1, {_NUM_CLASSES}], got {per_node!r}")
    if config.aggregation == "bristle":
        if not transfer:
            raise ConfigError(f"aggregation 'bristle' needs task 'digits_transfer', got task {config.task!r}")
        if params.local_test_per_class < 1:
            raise ConfigError("aggregation 'bristle' needs task_params.local_test_per_class >= 1")
        _build_bristle(config, torch.zeros(1, 1), torch.zeros(1, dtype=torch.int64), (0,), seed=0)


def _build_bristle(
    config: EmulationConfig,
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: tuple[int, ...],
    *,
    seed: int,
) -> Bristle:
    """A node's Bristle on its local test set and own classes, on `MaskedLinear`'s weight (classes x
    features, hence transposed) with its own bias."""
    params = dict(config.aggregation_params)
    if unknown := sorted(set(params) - set(_BRISTLE_PARAMS)):
        raise ConfigError(
            f"aggregation_params: {unknown} not accepted by aggregation 'bristle'; "
            f"it accepts {sorted(_BRISTLE_PARAMS)}"
        )
    try:
        return Bristle(
            test_features=features,
            test_labels=labels,
            classes=classes,
            weight_name="weight",
            bias_name="bias",
            transposed=True,
            seed=seed,
            **params,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"aggregation_params: {exc}") from exc


class _KeepOwn(Aggregator):
    """Merges nothing: a digits_transfer Byzantine node keeps its own model."""

    def aggregate(self, own: Contribution, received: Sequence[Contribution]) -> ModelState:
        return own.state


def _graph(config: EmulationConfig, round: int) -> nx.Graph:
    """The topology for rounds from `round` on (0: the start)."""
    if config.topology_file is not None:
        return load_topology(config.topology_file)
    seed = derive_seed(config.seed, _TOPOLOGY, *((round,) if round else ()))
    return build_topology(config.topology, config.nodes, seed=seed, **config.topology_params)


def _build_attack(config: EmulationConfig) -> Attack:
    params = dict(config.attack_params)
    if config.attack == "label_flip":
        params.setdefault("num_classes", _NUM_CLASSES)
    return build_attack(config.attack or "", **params)


def _protocol_params(config: EmulationConfig) -> dict[str, Any]:
    """`config.protocol_params` checked against the protocol; a fresh dict the caller may consume."""
    params = dict(config.protocol_params)
    allowed = {"modest": _MODEST_PARAMS, "fl": _FL_PARAMS}.get(config.protocol, frozenset())
    if unknown := sorted(set(params) - allowed):
        raise ConfigError(
            f"protocol_params: {unknown} not accepted by protocol {config.protocol!r}; "
            f"it accepts {sorted(allowed) or 'none'}"
        )
    try:
        if config.protocol == "modest":
            ModestSettings(**{k: v for k, v in params.items() if k != "join_fanout"})
            if not isinstance(params.get("join_fanout", 3), int) or params.get("join_fanout", 3) < 1:
                raise ValueError(f"join_fanout must be an int >= 1, got {params['join_fanout']!r}")
        elif config.protocol == "fl":
            clients = tuple(str(i) for i in range(1, config.nodes))
            FederatedLearning(rounds=config.rounds, server="0", clients=clients, **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"protocol_params: {exc}") from exc
    return params

def _split(task: Task, config: EmulationConfig) -> list[np.ndarray]:
    seed = derive_seed(config.seed, _SPLIT)
    if config.partition == "iid":
        return iid_split(len(task.train), config.nodes, seed=seed)
    return dirichlet_split(labels_of(task.train), config.nodes, alpha=config.alpha, seed=seed)
