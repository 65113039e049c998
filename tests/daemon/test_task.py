"""The daemon's digits task: disjoint shards, a shared initialisation, its SGD, and settings it cannot use."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from daemon_helpers import node_config, node_settings

from p2pfl.cli import main
from p2pfl.daemon.task import PlainSGD, build_learner
from p2pfl.errors import ConfigError


def test_shards_are_disjoint_and_cover_the_training_set(tmp_path):
    learners = [build_learner(node_config(tmp_path, index=i, of=3)) for i in range(3)]
    rows = [{tuple(x.tolist()) for x in learner._train.data.tensors[0]} for learner in learners]
    assert sum(len(r) for r in rows) == sum(learner.num_samples for learner in learners)
    assert not (rows[0] & rows[1]) and not (rows[1] & rows[2])
    assert all(learner.state().flat.equal(learners[0].state().flat) for learner in learners)


def test_plain_sgd_matches_torch_sgd():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    b = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    b.load_state_dict(a.state_dict())
    ours, theirs = PlainSGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    for step in range(5):
        x, y = torch.randn(8, 5, generator=torch.Generator().manual_seed(step)), torch.arange(8) % 3
        for model, optimizer in ((a, ours), (b, theirs)):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"task": {"shard": {"index": 1999, "of": 2000}}}, r"^task\.shard: cannot split \d+ samples into"),
        (
            {"task": {"shard": {"index": 5, "of": 20, "partition": "dirichlet", "alpha": 0.01}}},
            r"^task\.shard: could not give each of 20 parts a sample with alpha=0\.01; use a larger alpha",
        ),
    ],
)
def test_a_shard_the_data_cannot_fill_is_a_config_error_naming_the_field(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_learner(node_config(tmp_path, **overrides))


@pytest.mark.parametrize(
    ("fraction", "sizes"), [(1e-300, "1797 training and 0 test"), (0.9999999, "0 training")]
)
def test_a_test_fraction_that_empties_a_side_is_a_config_error_naming_the_field(tmp_path, fraction, sizes):
    """A fraction in (0, 1) that rounds a side to nothing used to fail later (dividing by zero)."""
    config = node_config(tmp_path, task={"test_fraction": fraction, "shard": {"index": 0, "of": 2}})
    with pytest.raises(ConfigError, match=rf"^task\.test_fraction: {fraction} leaves {sizes}"):
        build_learner(config)


@pytest.mark.parametrize(("device", "missing"), [("cuda", "CUDA"), ("mps", "MPS")])
def test_a_device_this_machine_lacks_is_a_config_error_naming_the_field(
    tmp_path, monkeypatch, device, missing
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    expected = rf"^training\.device: device {device} requested but {missing} is not available"
    with pytest.raises(ConfigError, match=expected):
        build_learner(node_config(tmp_path, training={"device": device}))


@pytest.mark.parametrize(
    ("count", "device", "devices"), [(1, "cuda:1", "1 CUDA device"), (2, "cuda:5", "2 CUDA devices")]
)
def test_a_cuda_index_this_machine_lacks_is_a_config_error_naming_the_field(
    tmp_path, monkeypatch, count, device, devices
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    expected = rf"^training\.device: device {device} requested but this machine has {devices}$"
    with pytest.raises(ConfigError, match=expected):
        build_learner(node_config(tmp_path, training={"device": device}))


def test_node_run_reports_an_unusable_shard_in_one_line_as_a_usage_error(write_toml, tmp_path):
    shard = {"index": 1999, "of": 2000}
    path = write_toml("node.toml", node_settings(tmp_path / "node", task={"shard": shard}))
    result = CliRunner().invoke(main, ["node", "run", "--config", str(path), "--no-fast-exit"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "Error: task.shard: cannot split" in result.output
