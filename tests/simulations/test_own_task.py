"""A task of one's own, named `module:attribute` in a config or scenario file."""

import textwrap

import pytest

from p2pfl.errors import ConfigError
from simulations.config import EmulationConfig, make_attack, make_task
from simulations.emulator import check_run, run_emulation
from simulations.task import Task

OWN_TASKS = '''
from functools import partial

import torch
from torch.utils.data import TensorDataset

from p2pfl.models import mlp
from simulations import Task


def blobs(*, seed, samples=64, features=4):
    """Two Gaussian blobs, a sample of each class alternately."""
    if samples < 4:
        raise ValueError(f"samples must be >= 4, got {samples}")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(samples) % 2
    points = torch.randn(samples, features, generator=generator) + 3.0 * labels[:, None]
    data = TensorDataset(points, labels)
    return Task(train=data, test=data, make_model=partial(mlp, (features, 8, 2)))


def not_a_task(*, seed):
    return {"seed": seed}
'''


@pytest.fixture(autouse=True)
def own_tasks(tmp_path, monkeypatch):
    (tmp_path / "own_tasks.py").write_text(textwrap.dedent(OWN_TASKS))
    monkeypatch.syspath_prepend(str(tmp_path))


def config(**fields) -> EmulationConfig:
    return EmulationConfig(
        **{"nodes": 4, "topology": "ring", "rounds": 3, "task": "own_tasks:blobs", **fields}
    )


def test_a_task_of_ones_own_is_made_with_the_seed_and_its_params_and_runs():
    task = make_task(config(task_params={"samples": 40}, seed=5))
    assert isinstance(task, Task) and len(task.train) == 40
    assert make_task(config(seed=5)).train.tensors[0].equal(make_task(config(seed=5)).train.tensors[0])
    result = run_emulation(config(local_steps=5, lr=0.2))
    assert result.final_mean_accuracy > 0.9  # two well separated blobs
    assert result.to_json()["config"]["task"] == "own_tasks:blobs"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task": "no_such_module:blobs"}, "task: cannot import 'no_such_module'"),
        ({"task": "own_tasks:missing"}, "task: module 'own_tasks' has no attribute 'missing'"),
        ({"hidden": (8,)}, "hidden: applies to the built-in tasks; the task 'own_tasks:blobs' makes its own"),
        ({"activation": "tanh"}, "activation: applies to the built-in tasks"),
        ({"task": "blobs"}, "task must be 'digits', 'synthetic', 'digits_transfer' or module:attribute"),
    ],
)
def test_a_config_naming_a_task_of_ones_own_is_checked(fields, message):
    with pytest.raises(ConfigError, match=message):
        config(**fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"task_params": {"samples": 2}}, r"^task 'own_tasks:blobs': samples must be >= 4, got 2$"),
        ({"task_params": {"colour": 1}}, r"^task 'own_tasks:blobs': .*unexpected keyword argument 'colour'"),
        ({"task": "own_tasks:not_a_task"}, r"built an object of type dict, not a simulations\.task\.Task$"),
    ],
)
def test_what_only_making_the_task_shows_is_found_before_a_run(fields, message):
    with pytest.raises(ConfigError, match=message):
        check_run(config(**fields))


def test_label_flip_on_a_task_of_ones_own_needs_the_class_count():
    flipping = {"attack": "label_flip", "byzantine_fraction": 0.25}
    with pytest.raises(ConfigError, match="label_flip needs num_classes with the task 'own_tasks:blobs'"):
        config(**flipping)
    attack = make_attack(config(**flipping, attack_params={"num_classes": 2}))
    assert attack.num_classes == 2
