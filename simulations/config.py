"""What an emulated run is: `EmulationConfig`, every field validated, and the builders it implies.

Scenario files are validated against this one class (simulations/scenario.py), so a bad field fails
the same way from Python and from TOML: a `ConfigError` naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from gossip.federated import FederatedLearning
from gossip.modest_settings import ModestSettings
from gossip.protocol import RoundProtocol
from p2pfl.aggregation.bristle import Bristle
from p2pfl.aggregation.registry import AGGREGATORS, build_aggregator
from p2pfl.attacks import Attack, build_attack
from p2pfl.attacks.registry import ATTACKS
from p2pfl.errors import ConfigError
from p2pfl.registry import build_imported, import_attribute, is_import_name
from simulations.churn import ChurnEvent
from simulations.field_types import check_types
from simulations.synthetic import GaussianMixture, synthetic_task
from simulations.task import ACTIVATIONS, Task, digits_task
from simulations.topology import check_size, load_topology, topology
from simulations.transfer_task import NUM_CLASSES, TransferParams, digits_transfer_task

PROTOCOLS = ("gossip", "dpsgd", "modest", "fl")
# Protocols driven by events rather than a clock: their run ends when the last round is recorded.
EVENT_DRIVEN = ("modest", "fl")
MODEST_PARAMS = frozenset(f.name for f in fields(ModestSettings)) | {"join_fanout"}
FL_PARAMS = frozenset({"s", "round_timeout"})
FL_SERVER = 0  # node index of the FL baseline's server
BRISTLE_PARAMS = ("closest", "random_others", "shared_classes")


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
    # "digits": scikit-learn's digits, split across the nodes by `partition`; or "synthetic": a
    # Gaussian mixture generated per node; or "digits_transfer": Bristle's setting
    # (simulations/transfer_task.py), digits through a frozen pre-trained extractor, each node training
    # only an output layer on its own classes (needs partition "classes"). In it, Byzantine nodes
    # train every class on data of all classes and never merge (they keep their own model), and
    # honest nodes keep their bias local whatever the aggregation. Or "module:attribute", a task of
    # one's own (`make_task`), whose model `hidden`, `activation` and `xavier` do not shape.
    task: str = "digits"
    # synthetic: features, classes, separation, samples_per_node, test_samples_per_class;
    # digits_transfer: the fields of simulations.transfer_task.TransferParams; one's own task:
    # its factory's keyword arguments
    task_params: dict[str, Any] = field(default_factory=dict)
    protocol: str = "gossip"  # gossip, dpsgd, modest, fl, or module:attribute (`make_protocol`)
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
    # Train all nodes' models as rows of one tensor, one vmap-ed SGD step for every node that trains at
    # the same virtual instant (simulations/learner_pool.py), where the model allows (float
    # parameters, no buffers; not digits_transfer). Matches per-node training up to float rounding.
    batched_training: bool = True
    seconds_per_step: float = 0.001
    # Processes that run the nodes, each a part of them with few links to the others, kept in step
    # in virtual time (simulations/shards.py), one core each: 10,000 D-PSGD nodes ran 1.5x faster
    # in 2 than in 1 on 2 cores. Needs links between shards with latency > 0. Deterministic for a
    # seed and a shard count; other counts give other (equally valid) runs.
    shards: int = 1
    seed: int = 0

    @property
    def protected(self) -> frozenset[int]:
        """Nodes that no churn event or attack picks: the FL baseline's server, whose loss would end
        the run (only it records rounds)."""
        return frozenset({FL_SERVER}) if self.protocol == "fl" else frozenset()

    def __post_init__(self) -> None:
        check_types(EmulationConfig, vars(self))
        if not all(isinstance(event, ChurnEvent) for event in self.churn):
            raise ConfigError(f"churn must be ChurnEvents, got {self.churn!r}")
        if self.nodes < 2:
            raise ConfigError(f"nodes must be >= 2, got {self.nodes}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if not 1 <= self.shards <= self.nodes:
            raise ConfigError(f"shards must be between 1 and nodes ({self.nodes}), got {self.shards}")
        if is_import_name(self.protocol):
            import_attribute("protocol", self.protocol)  # one's own: built by `protocol_params`
        elif self.protocol not in PROTOCOLS:
            raise ConfigError(
                f"protocol must be one of {sorted(PROTOCOLS)} or module:attribute for your own, "
                f"got {self.protocol!r}"
            )
        if self.init not in ("shared", "independent"):
            raise ConfigError(f"init must be 'shared' or 'independent', got {self.init!r}")
        if self.evaluate_every < 1 or self.rounds % self.evaluate_every:
            raise ConfigError(f"evaluate_every must be >= 1 and divide rounds, got {self.evaluate_every}")
        if self.partition not in ("iid", "dirichlet", "classes"):
            raise ConfigError(f"partition must be 'iid', 'dirichlet' or 'classes', got {self.partition!r}")
        if self.partition == "dirichlet" and not 0 < self.alpha < math.inf:
            raise ConfigError(f"alpha must be > 0 and finite, got {self.alpha}")
        for name in ("local_steps", "batch_size", "fanout"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"lr must be > 0 and finite, got {self.lr}")
        for name in ("latency", "seconds_per_step"):
            if not 0 <= getattr(self, name) < math.inf:  # NaN too
                raise ConfigError(f"{name} must be >= 0 and finite, got {getattr(self, name)}")
        if not 0 < self.period < math.inf:  # event-driven protocols poll every period
            raise ConfigError(f"period must be > 0 and finite, got {self.period}")
        if self.bandwidth is not None and not self.bandwidth > 0:
            raise ConfigError(f"bandwidth must be > 0 bytes/s or None, got {self.bandwidth}")
        if not 0.0 <= self.loss < 1.0:
            raise ConfigError(f"loss must be in [0, 1), got {self.loss}")
        if not 0 <= self.speed_sigma < math.inf:
            raise ConfigError(f"speed_sigma must be >= 0 and finite, got {self.speed_sigma}")

        if self.seed < 0:  # numpy's SeedSequence refuses negative entries
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if any(size < 1 for size in self.hidden):
            raise ConfigError(f"hidden: layer sizes must be >= 1, got {list(self.hidden)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation: unknown {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")

        if is_import_name(self.task):  # a task of one's own: made (and its params checked) by check_run
            import_attribute("task", self.task)
            for name in _BUILT_IN_MODEL_FIELDS:
                if getattr(self, name) != _DEFAULT_VALUES[name]:
                    raise ConfigError(
                        f"{name}: applies to the built-in tasks; the task {self.task!r} makes its own model"
                    )
        elif self.task not in ("digits", "synthetic", "digits_transfer"):
            raise ConfigError(
                "task must be 'digits', 'synthetic', 'digits_transfer' or module:attribute for your own, "
                f"got {self.task!r}"
            )
        check_transfer(self)
        if self.task == "digits" and self.task_params:
            raise ConfigError(f"task_params: the digits task takes none, got {sorted(self.task_params)}")
        if self.task == "synthetic":
            make_task(self)  # raises ConfigError on bad task_params
        if self.resample_every < 0:
            raise ConfigError(f"resample_every must be >= 0, got {self.resample_every}")
        if self.resample_every and (self.protocol in EVENT_DRIVEN or self.topology_file):
            raise ConfigError("resample_every needs a clock-driven protocol and a named topology")
        check_topology(self)
        if self.topology_file is not None:
            try:
                graph = load_topology(self.topology_file)
            except ConfigError as exc:
                raise ConfigError(f"topology_file: {exc}") from exc
            if graph.number_of_nodes() != self.nodes:
                raise ConfigError(
                    f"topology_file {self.topology_file} has {graph.number_of_nodes()} nodes "
                    f"but nodes is {self.nodes}"
                )
        if self.torch_threads < 1:
            raise ConfigError(f"torch_threads must be >= 1, got {self.torch_threads}")
        if not 0 < self.stall_timeout < math.inf:  # a run whose nodes all hang would never end
            raise ConfigError(f"stall_timeout must be > 0 and finite, got {self.stall_timeout}")
        protocol_params(self)  # raises ConfigError on bad params
        check_aggregation(self)
        if not 0.0 <= self.byzantine_fraction < 1.0:
            raise ConfigError(f"byzantine_fraction must be in [0, 1), got {self.byzantine_fraction}")
        if self.byzantine_fraction and self.attack is None:
            raise ConfigError("byzantine_fraction > 0 needs an attack")
        if self.attack is None and self.attack_params:
            raise ConfigError(f"attack_params {sorted(self.attack_params)} need an attack")
        if self.attack is not None:
            make_attack(self)  # raises ConfigError naming the attack or attack_params
        if any(e.action == "join" for e in self.churn) and self.protocol != "modest":
            raise ConfigError("churn: join is supported with protocol 'modest' only")
        server = self.protected
        for event in self.churn:
            if event.round > self.rounds:
                raise ConfigError(
                    f"churn at round {event.round}: after the last round ({self.rounds}), so never applied"
                )
            if bad := [n for n in event.nodes if not 0 <= n < self.nodes or n in server]:
                raise ConfigError(
                    f"churn at round {event.round}: nodes {bad} are not in [0, {self.nodes})"
                    + (f" or are the FL server {FL_SERVER}" if server else "")
                )
        busy = self.local_steps * self.seconds_per_step + self.latency
        if self.protocol not in EVENT_DRIVEN and busy >= self.period:
            raise ConfigError(
                f"period ({self.period} s) must exceed training time plus latency ({busy:g} s), "
                "or models would arrive after the round they belong to"
            )


# The fields that shape the built-in tasks' model; a task of one's own makes its model itself.
_BUILT_IN_MODEL_FIELDS = ("hidden", "activation", "xavier")
_DEFAULT_VALUES = {f.name: f.default for f in fields(EmulationConfig) if f.name in _BUILT_IN_MODEL_FIELDS}


def make_task(config: EmulationConfig) -> Task:
    """The config's task; one of one's own (`module:attribute`) is built as
    `attribute(seed=config.seed, **config.task_params)` and must return a `Task`."""
    if is_import_name(config.task):
        return build_imported("task", config.task, {"seed": config.seed, **config.task_params}, expected=Task)
    if config.task == "digits_transfer":
        return digits_transfer_task(seed=config.seed, params=TransferParams.parse(config.task_params))
    model = dict(hidden=config.hidden, activation=config.activation, xavier=config.xavier)
    if config.task == "digits":
        return digits_task(seed=config.seed, **model)
    alpha = config.alpha if config.partition == "dirichlet" else None
    try:
        return synthetic_task(seed=config.seed, alpha=alpha, **model, **config.task_params)
    except (TypeError, ConfigError) as exc:  # alpha and activation are checked before, in __post_init__
        raise ConfigError(f"task_params: {exc}") from exc


def check_topology(config: EmulationConfig) -> None:
    """The topology's name and its parameters' names.

    Whether the values allow a graph on `config.nodes` nodes is `check_topology_size`'s question:
    a graph passed to `run_emulation` replaces the named topology, which then need not fit.
    """
    topology(config.topology, **config.topology_params)


def check_topology_size(config: EmulationConfig) -> None:
    """Whether the named topology has a graph on `config.nodes` nodes (checked when a file is loaded)."""
    if config.topology_file is None:
        check_size(topology(config.topology, **config.topology_params), config.nodes)


def check_aggregation(config: EmulationConfig) -> None:
    """The rule's name, and its params by building it once (bristle: `check_transfer`)."""
    if config.aggregation == "bristle":
        return
    if is_import_name(config.aggregation):
        import_attribute("aggregation", config.aggregation)  # a rule of one's own
    elif config.aggregation not in AGGREGATORS:
        raise ConfigError(
            f"aggregation: unknown rule {config.aggregation!r}; "
            f"choose one of {sorted([*AGGREGATORS, 'bristle'])}, or module:attribute for your own"
        )
    try:
        build_aggregator(config.aggregation, **config.aggregation_params)
    except ConfigError as exc:
        raise ConfigError(f"aggregation_params: {exc}") from exc


def check_transfer(config: EmulationConfig) -> None:
    """The digits_transfer task, the classes partition and bristle only go together."""
    transfer = config.task == "digits_transfer"
    if transfer:
        params = TransferParams.parse(config.task_params)
        if config.partition != "classes":
            raise ConfigError(f"partition: task 'digits_transfer' needs 'classes', got {config.partition!r}")
    elif config.partition == "classes":
        raise ConfigError(f"partition 'classes' needs task 'digits_transfer', got task {config.task!r}")
    per_node = config.classes_per_node
    if isinstance(per_node, bool) or not isinstance(per_node, int) or not 1 <= per_node <= NUM_CLASSES:
        raise ConfigError(f"classes_per_node must be an integer in [1, {NUM_CLASSES}], got {per_node!r}")
    if config.aggregation == "bristle":
        if not transfer:
            raise ConfigError(f"aggregation 'bristle' needs task 'digits_transfer', got task {config.task!r}")
        if params.local_test_per_class < 1:
            raise ConfigError("aggregation 'bristle' needs task_params.local_test_per_class >= 1")
        make_bristle(config, torch.zeros(1, 1), torch.zeros(1, dtype=torch.int64), (0,), seed=0)


def make_bristle(
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
    if unknown := sorted(set(params) - set(BRISTLE_PARAMS)):
        raise ConfigError(
            f"aggregation_params: {unknown} not accepted by aggregation 'bristle'; "
            f"it accepts {sorted(BRISTLE_PARAMS)}"
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


def make_protocol(config: EmulationConfig, *, seed: int) -> RoundProtocol:
    """A node's instance of a protocol of one's own (`module:attribute`), built as
    `attribute(rounds=..., period=..., seed=<the node's>, **protocol_params)`. It runs on the
    graph's links, as D-PSGD does, and a node is done when its `run` returns."""
    params = {"rounds": config.rounds, "period": config.period, "seed": seed, **config.protocol_params}
    return build_imported("protocol", config.protocol, params, expected=RoundProtocol)


def task_classes(config: EmulationConfig) -> int | None:
    """How many classes the config's task has; None for a task of one's own."""
    if is_import_name(config.task):
        return None
    if config.task == "synthetic":
        return config.task_params.get("classes", GaussianMixture.classes)
    return NUM_CLASSES


def make_attack(config: EmulationConfig) -> Attack:
    params = dict(config.attack_params)
    if config.attack == "label_flip":
        # Flipping modulo another count would make labels the model has no output for.
        classes = task_classes(config)
        if classes is None:
            if "num_classes" not in params:
                raise ConfigError(
                    f"attack_params: label_flip needs num_classes with the task {config.task!r}"
                )
        elif params.setdefault("num_classes", classes) != classes:
            raise ConfigError(
                f"attack_params: label_flip num_classes must be the task's {classes} classes, "
                f"got {params['num_classes']!r}"
            )
    if is_import_name(config.attack or ""):
        import_attribute("attack", config.attack)  # an attack of one's own
    elif config.attack not in ATTACKS:
        return build_attack(config.attack or "", **params)  # raises "attack: unknown attack ..."
    try:
        return build_attack(config.attack, **params)
    except ConfigError as exc:
        raise ConfigError(f"attack_params: {exc}") from exc


def protocol_params(config: EmulationConfig) -> dict[str, Any]:
    """`config.protocol_params` checked against the protocol; a fresh dict the caller may consume.

    A protocol of one's own takes them all: they are checked by building it once (`make_protocol`).
    """
    params = dict(config.protocol_params)
    if is_import_name(config.protocol):
        make_protocol(config, seed=0)
        return params
    allowed = {"modest": MODEST_PARAMS, "fl": FL_PARAMS}.get(config.protocol, frozenset())
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
