"""`node.toml`: the node daemon's configuration, validated by pydantic.

Unknown keys are errors, not silently ignored, and every error names its field (``task.shard.index:
...``), so a typo in a config file fails at start instead of changing nothing. Values are not coerced
between types either: `rounds = true` or `port = "8080"` is an error, not 1 or 8080. See docs/daemon.md for
the reference and an example file. Relative paths (`data_dir`) are relative to the config file.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import multiaddr
import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from gossip.modest_settings import ModestSettings, setting_problem
from p2pfl.errors import ConfigError
from transport.body_codec import COMPRESSIONS, CompressionConfig
from transport.compression import MAX_BLOCK
from transport.penalties import PenaltyConfig

__all__ = [
    "MAX_TORCH_THREADS",
    "AggregationConfig",
    "CheckpointConfig",
    "GossipProtocolConfig",
    "ModelCompressionConfig",
    "ModelConfig",
    "ModestProtocolConfig",
    "NodeConfig",
    "PeerDiscoveryConfig",
    "PenaltiesConfig",
    "ShardConfig",
    "StatusConfig",
    "TaskConfig",
    "TrainingConfig",
    "load_config",
    "parse_config",
]

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
# Seeds reach numpy's default_rng (refuses negatives) and torch's manual_seed (refuses >= 2**64):
# the range both take, so a seed fails at load instead of in the middle of building the task.
Seed = Annotated[int, Field(ge=0, le=2**64 - 1)]
# The daemon's model is float32: a step size beyond float32's largest value cannot be applied to it
# (torch raises an overflow error on the first SGD step), so it is refused like an infinite one.
LearningRate = Annotated[float, Field(gt=0, le=float(np.finfo(np.float32).max), allow_inf_nan=False)]
# torch.set_num_threads takes any count, but OpenMP then fails to create the threads (measured:
# 16384 fails, 100000 segfaults); 1024 is above the core count of any machine this runs on, and more
# threads than cores only slows the small models a daemon trains.
MAX_TORCH_THREADS = 1024


def _protocols_of(text: str) -> list[str]:
    try:
        return [p.name for p in multiaddr.Multiaddr(text).protocols()]
    except Exception as exc:
        raise ValueError(f"not a multiaddr: {text!r} ({exc})") from None


def _check_multiaddr(text: str) -> str:
    _protocols_of(text)
    return text


def _check_peer_addr(text: str) -> str:
    if "p2p" not in _protocols_of(text):
        raise ValueError(f"{text!r} must end in /p2p/<peer id>")
    return text


# What the transport binds as asked: py-libp2p listens on every interface for a host name
# (/dns4/...), and binds plain TCP, speaking Noise, whatever follows the port (/tls, /ws).
_LISTENABLE = (["ip4", "tcp"], ["ip6", "tcp"])


def _check_listen_addr(text: str) -> str:
    if _protocols_of(text) not in _LISTENABLE:
        raise ValueError(
            f"{text!r}: only /ip4/<address>/tcp/<port> and /ip6/<address>/tcp/<port> can be listened on"
        )
    return text


def _check_participant(text: str) -> str:
    if not text:
        raise ValueError("must be a peer ID or a full multiaddr, got an empty string")
    return _check_peer_addr(text) if text.startswith("/") else _peer_id(text)


def _peer_id(text: str) -> str:
    """`text` as the base58 peer ID the transport names peers by (a CIDv1 becomes that form too).

    The check is the one multiaddr gives the /p2p/ part of a bootstrap address: a multihash, so
    that a typo fails at start instead of leaving MoDeST waiting for a peer that cannot exist.
    """
    bad = ValueError(f"{text!r} is not a peer ID (12D3KooW..., Qm...)")
    if "/" in text:  # "<id>/tcp/1" would parse, as more than a peer ID
        raise bad
    try:
        return str(multiaddr.Multiaddr(f"/p2p/{text}").value_for_protocol("p2p"))
    except Exception:
        raise bad from None


Multiaddr = Annotated[str, AfterValidator(_check_multiaddr)]
PeerAddr = Annotated[str, AfterValidator(_check_peer_addr)]  # ends in /p2p/<peer id>
ListenAddr = Annotated[str, AfterValidator(_check_listen_addr)]
Participant = Annotated[str, AfterValidator(_check_participant)]


class _Strict(BaseModel):
    # strict: pydantic's lax mode would read `true` as the int 1 (bool is an int in Python), "3" as 3
    # and 1 as true; TOML already gives every value its type, so a mismatch is the file's mistake.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ShardConfig(_Strict):
    """Which part of the training set this node holds: part `index` of `of` (every node: same `of`,
    `partition`, `alpha` and `seed`, its own `index`, so the parts are disjoint)."""

    index: Annotated[int, Field(ge=0)] = 0
    of: PositiveInt = 1
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: PositiveFloat = 0.5  # dirichlet only: smaller is more label skew
    seed: Seed = 0

    @model_validator(mode="after")
    def _index_in_range(self) -> ShardConfig:
        if self.index >= self.of:
            raise ValueError(f"index must be < of ({self.of}), got {self.index}")
        return self


class TaskConfig(_Strict):
    """The data set. `seed` fixes the train/test split (the same on every node)."""

    name: Literal["digits"] = "digits"
    seed: Seed = 0
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    shard: ShardConfig = ShardConfig()


class ModelConfig(_Strict):
    """An MLP 64-hidden...-10. `init_seed` draws the initial weights: the same on every node gives a
    shared initialisation, which gossip averaging needs to work well."""

    hidden: list[PositiveInt] = [32]
    activation: Literal["relu", "tanh"] = "relu"
    xavier: bool = False
    init_seed: Seed = 0


class TrainingConfig(_Strict):
    lr: LearningRate = 0.2
    batch_size: PositiveInt = 16
    local_steps: int | Literal["epoch"] = 10  # SGD steps per round, or one pass over the shard
    evaluate_every: Annotated[int, Field(ge=0)] = 1  # rounds between evaluations; 0: never
    device: Annotated[str, Field(pattern=r"^(cpu|cuda(:\d+)?|mps)$")] | None = None  # None: cuda if any
    seed: Seed | None = None  # batch order; None: the shard index

    @field_validator("local_steps", mode="before")
    @classmethod
    def _steps(cls, value: object) -> object:
        if value != "epoch" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f'must be an int >= 1 or "epoch", got {value!r}')
        return value


class GossipProtocolConfig(_Strict):
    """Gossip learning: every `period` seconds train, push the model to `fanout` peers, merge."""

    name: Literal["gossip"]
    rounds: PositiveInt
    period: PositiveFloat = 1.0
    fanout: PositiveInt = 1
    seed: Seed | None = None  # choice of peers; None: the shard index


_MODEST_DEFAULTS = ModestSettings()


class ModestProtocolConfig(_Strict):
    """MoDeST. `participants`: the founding members, the same list on every node (peer IDs, or full
    multiaddrs ending in /p2p/<id>, which also tell the node where to dial them), or "discovered":
    wait until `expect_peers` peers are connected (at most `discovery_timeout` s; with 0, the whole
    timeout) and take them with this node."""

    name: Literal["modest"]
    rounds: PositiveInt
    participants: list[Participant] | Literal["discovered"] = "discovered"
    expect_peers: Annotated[int, Field(ge=0)] = 0
    discovery_timeout: PositiveFloat = 30.0
    join_fanout: PositiveInt = 3
    # True advertises a leave on SIGTERM. A node that left is not sampled again after a restart
    # (MoDeST has no re-join yet), so a daemon that may come back keeps this False.
    leave_on_stop: bool = False
    # ModestSettings' fields, flat in the table and in its order; its defaults and its checks.
    s: int = _MODEST_DEFAULTS.s
    a: int = _MODEST_DEFAULTS.a
    sf: float = _MODEST_DEFAULTS.sf
    ping_timeout: float = _MODEST_DEFAULTS.ping_timeout
    ping_interval: float = _MODEST_DEFAULTS.ping_interval
    inactivity_threshold: int = _MODEST_DEFAULTS.inactivity_threshold
    aggregation_timeout: float | None = _MODEST_DEFAULTS.aggregation_timeout
    min_models: int = _MODEST_DEFAULTS.min_models
    round_timeout: float | None = _MODEST_DEFAULTS.round_timeout
    start_depth: int | None = _MODEST_DEFAULTS.start_depth

    @field_validator("participants", mode="before")
    @classmethod
    def _participants(cls, value: object) -> object:
        if value != "discovered" and (not isinstance(value, list) or not value):
            raise ValueError(f'must be "discovered" or a non-empty list of peers, got {value!r}')
        return value

    @field_validator(*ModestSettings.__dataclass_fields__)
    @classmethod
    def _setting(cls, value: object, info: ValidationInfo) -> object:
        """Each setting checked on its own, so that every bad one is reported under its own name;
        a bound on an earlier setting (a <= s) sees it in `info.data` only if it was valid."""
        assert info.field_name is not None
        problem = setting_problem(info.field_name, value, info.data)
        if problem is not None:
            raise ValueError(problem)
        return value

    def settings(self) -> ModestSettings:
        names = ModestSettings.__dataclass_fields__
        return ModestSettings(**{name: getattr(self, name) for name in names})


ProtocolConfig = Annotated[GossipProtocolConfig | ModestProtocolConfig, Field(discriminator="name")]


class AggregationConfig(_Strict):
    """A rule of `p2pfl.aggregation.registry` by name, with its own keyword parameters."""

    name: str = "fedavg"
    params: dict[str, Any] = {}

    @model_validator(mode="after")
    def _buildable(self) -> AggregationConfig:
        from p2pfl.aggregation.registry import build_aggregator

        try:
            build_aggregator(self.name, **self.params)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


class StatusConfig(_Strict):
    """The local HTTP status and metrics endpoint. `port` 0 picks a free port; the one chosen is
    written to data_dir/status.json, where `p2pfl status --data-dir` finds it."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 0


class CheckpointConfig(_Strict):
    """Checkpoints in data_dir/checkpoint.npz. `on_corrupt`: "refuse" to start on an unreadable or
    mismatched checkpoint (the default: nothing is lost silently), or start "fresh" after moving
    the bad file aside to checkpoint.npz.bad-<time>."""

    enabled: bool = True
    every: PositiveInt = 1  # rounds between checkpoints
    on_corrupt: Literal["refuse", "fresh"] = "refuse"


class PeerDiscoveryConfig(_Strict):
    """Learning peers beyond the bootstrap ones (rendezvous at the bootstrap and connected peers,
    `transport.libp2p.discovery`): register and ask every `interval` seconds, and dial learned peers
    until `target` connections are open (0: learn addresses, dial nobody)."""

    enabled: bool = True
    interval: PositiveFloat = 5.0
    target: Annotated[int, Field(ge=0)] = 8


_COMPRESSION_DEFAULTS = CompressionConfig()


class ModelCompressionConfig(_Strict):
    """How this node sends models to peers (`transport.body_codec`); any node decodes every codec.
    `codec`: "none", or fp32, fp16, int8 (blocks of `int8_block` values), topk (the `topk_fraction`
    largest entries of each tensor). Lossy codecs keep what they left out per peer and add it to the
    next model sent there (`error_feedback`, for at most `feedback_peers` peers)."""

    codec: str = _COMPRESSION_DEFAULTS.codec
    int8_block: Annotated[int, Field(ge=1, le=MAX_BLOCK)] = _COMPRESSION_DEFAULTS.int8_block
    topk_fraction: Annotated[float, Field(gt=0, le=1)] = _COMPRESSION_DEFAULTS.topk_fraction
    error_feedback: bool = _COMPRESSION_DEFAULTS.error_feedback
    feedback_peers: PositiveInt = _COMPRESSION_DEFAULTS.feedback_peers

    @field_validator("codec")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in COMPRESSIONS:
            raise ValueError(f"unknown codec {value!r}; one of {', '.join(COMPRESSIONS)}")
        return value

    def transport(self) -> CompressionConfig:
        return CompressionConfig(**self.model_dump())


_PENALTY_DEFAULTS = PenaltyConfig()


class PenaltiesConfig(_Strict):
    """Banning peers that keep sending bad transfers (`transport.penalties`): a peer with `offences`
    transfers refused through its fault within `window` seconds is cut off for `ban_seconds`.
    Records and bans are kept for at most `max_peers` peers."""

    enabled: bool = _PENALTY_DEFAULTS.enabled
    offences: PositiveInt = _PENALTY_DEFAULTS.offences
    window: PositiveFloat = _PENALTY_DEFAULTS.window
    ban_seconds: PositiveFloat = _PENALTY_DEFAULTS.ban_seconds
    max_peers: PositiveInt = _PENALTY_DEFAULTS.max_peers

    def transport(self) -> PenaltyConfig:
        return PenaltyConfig(**self.model_dump())


class NodeConfig(_Strict):
    data_dir: Annotated[Path, Field(strict=False)]  # strict would take a Path object only, not a string
    listen: Annotated[list[ListenAddr], Field(min_length=1)] = ["/ip4/127.0.0.1/tcp/0"]
    announce: list[Multiaddr] | None = None
    bootstrap: list[PeerAddr] = []
    max_connections: PositiveInt = 128
    # An inbound connection that has not finished Noise + Yamux by then is closed, freeing its slot.
    handshake_timeout: PositiveFloat = 10.0
    discovery: PeerDiscoveryConfig = PeerDiscoveryConfig()
    compression: ModelCompressionConfig = ModelCompressionConfig()
    penalties: PenaltiesConfig = PenaltiesConfig()
    task: TaskConfig = TaskConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    protocol: ProtocolConfig
    aggregation: AggregationConfig = AggregationConfig()
    status: StatusConfig = StatusConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["kv", "json"] = "kv"
    # torch intra-op threads (process-wide); 0 leaves torch's default. Small models train much
    # faster single-threaded (measured 20x on a busy 2-core machine).
    torch_threads: Annotated[int, Field(ge=0, le=MAX_TORCH_THREADS)] = 1
    exit_when_done: bool = False  # False: keep serving peers and status after the last round

    @field_validator("announce")
    @classmethod
    def _announce_something(cls, value: list[str] | None) -> list[str] | None:
        """`announce` replaces the listen addresses in what peers are told: [] would tell them none."""
        if value == []:
            raise ValueError(
                "an empty list announces no address to peers; omit it to announce the listen addresses"
            )
        return value

    @property
    def local_steps(self) -> int | None:
        """`training.local_steps` as `Node` takes it: None for one epoch."""
        steps = self.training.local_steps
        return None if steps == "epoch" else steps

    @property
    def training_seed(self) -> int:
        return self.training.seed if self.training.seed is not None else self.task.shard.index

    @property
    def protocol_seed(self) -> int:
        seed = getattr(self.protocol, "seed", None)
        return seed if seed is not None else self.task.shard.index


def parse_config(data: dict[str, Any], *, source: str = "config", base_dir: Path | None = None) -> NodeConfig:
    """Validate a config mapping; `ConfigError` lists every bad field as ``path.to.field: problem``.

    A relative `data_dir` is taken relative to `base_dir` (the config file's directory) if given.
    """
    try:
        config = NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid configuration\n{_describe(exc)}") from None
    if base_dir is not None and not config.data_dir.is_absolute():
        config = config.model_copy(update={"data_dir": base_dir / config.data_dir})
    return config


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a node.toml; `ConfigError` on an unreadable file, bad TOML or a bad field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8: a file in another encoding, or not text
        problem = f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        raise ConfigError(f"{path}: not valid TOML: {problem}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, source=str(path), base_dir=path.resolve().parent)


def _describe(exc: ValidationError) -> str:
    found: list[tuple[str, str, bool]] = []
    for error in exc.errors():
        loc = list(error["loc"])
        # A tagged union puts the tag into the path (protocol.gossip.period); the file has no such level.
        if len(loc) > 1 and loc[0] == "protocol" and loc[1] in ("gossip", "modest"):
            del loc[1]
        # Other unions name their branches (list[...], literal[...]): drop those levels too, and the
        # literal branch's complaint when another branch says more (a list of peers that has a bad one).
        literal_branch = any(isinstance(part, str) and part.startswith("literal[") for part in loc)
        loc = [part for part in loc if not (isinstance(part, str) and "[" in part)]
        field = ".".join(str(part) for part in loc) or "(top level)"
        found.append((field, _message(error), literal_branch))
    lines = []
    for field, message, literal_branch in found:
        if literal_branch and any(f.startswith(field) and not lit for f, _, lit in found):
            continue
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)


# What a value of the wrong type should have been, by pydantic's strict-mode error type.
_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
}


def _message(error: ErrorDetails) -> str:
    """pydantic's message, or for a value of the wrong type what was expected and the value as written
    in TOML (`true`, not pydantic's "Input should be a valid integer" for `rounds = true`)."""
    expected = _EXPECTED.get(error["type"])
    if expected is None:
        return error["msg"].removeprefix("Value error, ")
    return f"expected {expected}, got {json.dumps(error['input'], default=str)}"
