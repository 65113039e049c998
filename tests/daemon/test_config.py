"""node.toml validation: good files parse, and every error names the field it is about."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from daemon_helpers import node_settings

from p2pfl.cli import main
from p2pfl.daemon.config import MAX_TORCH_THREADS, load_config, parse_config
from p2pfl.daemon.task import build_learner
from p2pfl.errors import ConfigError
from transport.body_codec import CompressionConfig
from transport.penalties import PenaltyConfig

PEER = "12D3KooWBfmETW1ZbkdZbKKPpE3jpjyQ5WBXoDF8y9oE8vMQPKLi"


def errors_of(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


def test_a_minimal_config_takes_the_defaults(tmp_path):
    config = parse_config({"data_dir": str(tmp_path), "protocol": {"name": "gossip", "rounds": 3}})
    assert config.listen == ["/ip4/127.0.0.1/tcp/0"]
    assert config.status.host == "127.0.0.1" and config.status.port == 0
    assert config.torch_threads == 1 and config.checkpoint.on_corrupt == "refuse"
    assert config.task.shard.index == 0 and config.task.shard.of == 1
    assert config.aggregation.name == "fedavg"


def test_local_steps_may_be_one_epoch(tmp_path):
    assert parse_config(node_settings(tmp_path, training={"local_steps": "epoch"})).local_steps is None
    assert parse_config(node_settings(tmp_path, training={"local_steps": 3})).local_steps == 3


def test_the_shard_index_seeds_batches_and_peer_choice_unless_given(tmp_path):
    config = parse_config(node_settings(tmp_path, index=3, of=4))
    assert config.training_seed == 3 and config.protocol_seed == 3
    config = parse_config(
        node_settings(tmp_path, training={"seed": 9}, protocol={"name": "gossip", "rounds": 2, "seed": 7})
    )
    assert config.training_seed == 9 and config.protocol_seed == 7


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"trainng": {"lr": 0.1}}, "trainng: Extra inputs are not permitted"),
        ({"training": {"lr": -1}}, "training.lr:"),
        ({"training": {"learning_rate": 0.1}}, "training.learning_rate: Extra inputs"),
        ({"task": {"shard": {"index": 4, "of": 4}}}, "task.shard: index must be < of (4)"),
        ({"task": {"shard": {"index": 0, "of": 2, "partition": "skewed"}}}, "task.shard.partition:"),
        ({"protocol": {"name": "gossip", "rounds": 5, "period": 0}}, "protocol.period:"),
        ({"protocol": {"name": "gossip"}}, "protocol.rounds: Field required"),
        ({"protocol": {"name": "flood", "rounds": 5}}, "protocol:"),
        (
            {"protocol": {"name": "modest", "rounds": 5, "s": 2, "a": 3}},
            "protocol.a: must be an int in [1, s=2], got 3",
        ),
        ({"protocol": {"name": "modest", "rounds": 5, "participants": []}}, "protocol.participants:"),
        (
            {"bootstrap": ["/ip4/127.0.0.1/tcp/4001"]},
            "bootstrap.0: '/ip4/127.0.0.1/tcp/4001' must end in /p2p/",
        ),
        ({"bootstrap": ["not an address"]}, "bootstrap.0: not a multiaddr"),
        ({"listen": ["/ip4/127.0.0.1/udp/4001"]}, "listen.0: '/ip4/127.0.0.1/udp/4001': only /ip4/"),
        ({"status": {"port": 70000}}, "status.port:"),
        ({"aggregation": {"name": "mean"}}, "aggregation: aggregation: unknown rule 'mean'"),
        ({"aggregation": {"name": "no_such_module:Rule"}}, "aggregation: aggregation: cannot import"),
        (
            {"aggregation": {"name": "trimmed_mean", "params": {"bogus": 1}}},
            "aggregation: aggregation 'trimmed_mean'",
        ),
        ({"log_level": "loud"}, "log_level:"),
        ({"torch_threads": -1}, "torch_threads:"),
        ({"training": {"local_steps": "all"}}, "training.local_steps:"),
        (
            {"compression": {"codec": "zstd"}},
            "compression.codec: unknown codec 'zstd'; one of none, fp32, fp16, int8, topk",
        ),
        ({"compression": {"topk_fraction": 0}}, "compression.topk_fraction:"),
        ({"compression": {"topk_fraction": 1.5}}, "compression.topk_fraction:"),
        ({"compression": {"int8_block": 0}}, "compression.int8_block:"),
        ({"compression": {"feedback_peers": 0}}, "compression.feedback_peers:"),
        ({"compression": {"level": 3}}, "compression.level: Extra inputs are not permitted"),
        ({"penalties": {"offences": 0}}, "penalties.offences:"),
        ({"penalties": {"window": float("inf")}}, "penalties.window:"),
        ({"penalties": {"ban_seconds": -1}}, "penalties.ban_seconds:"),
        ({"penalties": {"treshold": 3}}, "penalties.treshold: Extra inputs are not permitted"),
    ],
)
def test_errors_name_the_field(tmp_path, change, field):
    data = node_settings(tmp_path)
    data.update(change)
    assert field in errors_of(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"protocol": {"name": "gossip", "rounds": True}}, "protocol.rounds: expected an integer, got true"),
        (
            {"protocol": {"name": "modest", "rounds": 5, "s": False}},
            "protocol.s: expected an integer, got false",
        ),
        ({"training": {"lr": True}}, "training.lr: expected a number, got true"),
        ({"model": {"hidden": [32, True]}}, "model.hidden.1: expected an integer, got true"),
        ({"task": {"shard": {"index": 0, "of": 2, "seed": True}}}, "task.shard.seed: expected an integer"),
        ({"status": {"port": "8080"}}, 'status.port: expected an integer, got "8080"'),
        ({"protocol": {"name": "gossip", "rounds": 2.0}}, "protocol.rounds: expected an integer, got 2.0"),
        ({"checkpoint": {"enabled": 1}}, "checkpoint.enabled: expected true or false, got 1"),
    ],
)
def test_values_of_the_wrong_type_are_not_coerced(tmp_path, change, message):
    """bool is an int in Python, and pydantic would read `rounds = true` as 1 and "8080" as 8080."""
    data = node_settings(tmp_path)
    data.update(change)
    assert message in errors_of(data)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"task": {"seed": -1}}, "task.seed:"),
        ({"task": {"seed": 2**64}}, "task.seed:"),
        ({"task": {"shard": {"index": 0, "of": 2, "seed": -5}}}, "task.shard.seed:"),
        ({"model": {"init_seed": -1}}, "model.init_seed:"),
        ({"model": {"init_seed": 2**64}}, "model.init_seed:"),
        ({"training": {"seed": -1}}, "training.seed:"),
        ({"training": {"seed": 2**64}}, "training.seed:"),
        ({"protocol": {"name": "gossip", "rounds": 2, "seed": -1}}, "protocol.seed:"),
        ({"protocol": {"name": "gossip", "rounds": 2, "seed": 2**64}}, "protocol.seed:"),
        ({"training": {"lr": 1e300}}, "training.lr:"),
        ({"training": {"lr": 3.5e38}}, "training.lr:"),
        ({"training": {"lr": float("inf")}}, "training.lr:"),
        ({"training": {"lr": float("nan")}}, "training.lr:"),
        ({"training": {"lr": 0.0}}, "training.lr:"),
        ({"training": {"lr": -0.1}}, "training.lr:"),
        ({"torch_threads": 100000}, "torch_threads:"),
        ({"torch_threads": MAX_TORCH_THREADS + 1}, "torch_threads:"),
    ],
)
def test_values_that_would_fail_later_are_refused_at_load_naming_the_field(tmp_path, change, field):
    """Each of these passed validation once and then raised from numpy, torch or OpenMP at start."""
    data = node_settings(tmp_path)
    data.update(change)
    lines = errors_of(data).splitlines()[1:]
    assert len(lines) == 1 and lines[0].startswith(f"  {field} "), lines


def test_the_bounds_are_what_the_libraries_take(tmp_path):
    """The largest seed, float32's largest lr and MAX_TORCH_THREADS are valid: the bounds refuse only
    values that fail. The task builds and takes a step with every seed at its maximum."""
    top = 2**64 - 1
    config = parse_config(
        node_settings(
            tmp_path,
            task={"seed": top, "shard": {"index": 0, "of": 2, "seed": top}},
            model={"hidden": [8], "init_seed": top},
            training={"seed": top, "device": "cpu"},
            protocol={"name": "gossip", "rounds": 2, "seed": top},
            torch_threads=MAX_TORCH_THREADS,
        )
    )
    learner = build_learner(config)
    learner.train(steps=1)
    assert learner.evaluate().samples > 0
    biggest_lr = float(np.finfo(np.float32).max)
    assert parse_config(node_settings(tmp_path, training={"lr": biggest_lr})).training.lr == biggest_lr


def test_node_run_refuses_a_negative_seed_as_a_usage_error_naming_it(write_toml, tmp_path):
    path = write_toml("node.toml", node_settings(tmp_path / "node", task={"seed": -1}))
    result = CliRunner().invoke(main, ["node", "run", "--config", str(path), "--no-fast-exit"])
    assert result.exit_code == 2, result.output
    assert "task.seed: Input should be greater than or equal to 0" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "node").exists()  # refused before anything was started


def test_all_errors_are_reported_at_once(tmp_path):
    data = node_settings(tmp_path, training={"lr": 0, "batch_size": 0})
    message = errors_of(data)
    assert "training.lr:" in message and "training.batch_size:" in message


def test_every_bad_modest_setting_is_reported_under_its_own_name(tmp_path):
    settings = {"s": 2, "a": 3, "sf": 2.0, "ping_timeout": -1, "start_depth": 1}
    protocol = {"name": "modest", "rounds": 5, **settings}
    lines = errors_of(node_settings(tmp_path, protocol=protocol)).splitlines()[1:]
    assert lines == [
        "  protocol.a: must be an int in [1, s=2], got 3",
        "  protocol.sf: must be in (0, 1], got 2.0",
        "  protocol.ping_timeout: must be a finite number of seconds > 0, got -1.0",
        "  protocol.start_depth: must be None or an int >= s=2, got 1",
    ]


def test_a_bound_on_a_bad_modest_setting_is_not_checked_against_it(tmp_path):
    """With s itself wrong, `a` and `min_models` have no bound to be checked against: one error, not three."""
    protocol = {"name": "modest", "rounds": 5, "s": 0, "a": 3, "min_models": 2}
    lines = errors_of(node_settings(tmp_path, protocol=protocol)).splitlines()[1:]
    assert lines == ["  protocol.s: must be an int >= 1, got 0"]


def test_compression_and_penalties_become_the_transports_settings(tmp_path):
    default = parse_config(node_settings(tmp_path))
    assert default.compression.transport() == CompressionConfig()
    assert default.penalties.transport() == PenaltyConfig()
    assert default.compression.codec == "none" and default.penalties.enabled
    data = node_settings(tmp_path)
    data["compression"] = {"codec": "topk", "topk_fraction": 0.05, "error_feedback": False}
    data["penalties"] = {"offences": 3, "window": 60, "ban_seconds": 30}
    config = parse_config(data)
    assert config.compression.transport() == CompressionConfig(
        codec="topk", topk_fraction=0.05, error_feedback=False
    )
    assert config.penalties.transport() == PenaltyConfig(offences=3, window=60.0, ban_seconds=30.0)


def test_modest_participants_may_be_peer_ids_or_full_addresses(tmp_path):
    protocol = {"name": "modest", "rounds": 5, "participants": [PEER, f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER}"]}
    assert parse_config(node_settings(tmp_path, protocol=protocol)).protocol.participants[0] == PEER
    protocol["participants"] = ["/ip4/10.0.0.1/tcp/4001"]
    message = errors_of(node_settings(tmp_path, protocol=protocol))
    assert message.endswith("protocol.participants.0: '/ip4/10.0.0.1/tcp/4001' must end in /p2p/<peer id>")


@pytest.mark.parametrize("bad", ["bob", PEER[:-1], "1" + PEER, f"{PEER}/tcp/4001"])
def test_modest_participants_must_be_peer_ids(tmp_path, bad):
    """A string that is no peer ID would never answer a ping: the node would wait at round 0 forever."""
    protocol = {"name": "modest", "rounds": 5, "participants": [PEER, bad]}
    message = errors_of(node_settings(tmp_path, protocol=protocol))
    assert message.endswith(f"protocol.participants.1: {bad!r} is not a peer ID (12D3KooW..., Qm...)")


def test_modest_participants_are_kept_in_the_form_the_transport_uses(tmp_path):
    """A peer ID written as a CIDv1 names the same peer as its base58 form; the node compares strings."""
    cid = "bafzaajaiaejcag4dhgrqhtmm6kkfwzwitlbj7kiopfzr2zyaa2kcqr4rv5ae52y7"
    protocol = {"name": "modest", "rounds": 5, "participants": [cid]}
    assert parse_config(node_settings(tmp_path, protocol=protocol)).protocol.participants == [PEER]


@pytest.mark.parametrize(
    "addr",
    [
        "/dns4/localhost/tcp/4001",  # py-libp2p would listen on every interface
        "/ip4/127.0.0.1/tcp/4001/tls",  # plain TCP speaking Noise, which a TLS dialer cannot use
        "/ip4/127.0.0.1/tcp/4001/ws",
        f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}",
        "/ip4/127.0.0.1/udp/4001/quic-v1",
    ],
)
def test_listen_addresses_are_what_the_transport_can_bind(tmp_path, addr):
    message = errors_of(node_settings(tmp_path, listen=["/ip4/127.0.0.1/tcp/0", addr]))
    expected = f"listen.1: {addr!r}: only /ip4/<address>/tcp/<port> and /ip6/<address>/tcp/<port>"
    assert message.splitlines()[1:] == [f"  {expected} can be listened on"]


def test_listen_addresses_may_be_ip6(tmp_path):
    listen = ["/ip6/::1/tcp/0", "/ip4/0.0.0.0/tcp/4001"]
    assert parse_config(node_settings(tmp_path, listen=listen)).listen == listen


def test_an_empty_announce_list_is_an_error(tmp_path):
    """Peers would be told no address at all (`announce` replaces the listen addresses)."""
    message = errors_of(node_settings(tmp_path, announce=[]))
    assert message.endswith(
        "announce: an empty list announces no address to peers; omit it to announce the listen addresses"
    )
    assert parse_config(node_settings(tmp_path)).announce is None


def test_load_config_resolves_data_dir_against_the_file(write_toml, tmp_path):
    data = node_settings(tmp_path)
    data["data_dir"] = "node-a"
    config = load_config(write_toml("node.toml", data))
    assert config.data_dir == tmp_path / "node-a"


def test_load_config_reports_bad_toml_and_missing_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("data_dir = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read"):
        load_config(tmp_path / "missing.toml")


def test_a_config_file_that_is_not_utf8_is_a_config_error_and_a_usage_error(tmp_path):
    """It raised a bare UnicodeDecodeError: a traceback and exit code 1 from `p2pfl node run`."""
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('data_dir = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml: not valid TOML: not UTF-8 text"):
        load_config(latin1)
    result = CliRunner().invoke(main, ["node", "run", "--config", str(latin1), "--no-fast-exit"])
    assert result.exit_code == 2 and "not UTF-8 text" in result.output, result.output


def test_node_run_reports_a_bad_config_as_a_usage_error(write_toml, tmp_path):
    path = write_toml("node.toml", node_settings(tmp_path, task={"shard": {"index": 5, "of": 2}}))
    result = CliRunner().invoke(main, ["node", "run", "--config", str(path), "--no-fast-exit"])
    assert result.exit_code == 2
    assert "task.shard: index must be < of (2)" in result.output
