"""Bristle's setting in the emulator: the digits_transfer task, the classes partition, bristle."""

from pathlib import Path

import pytest
import torch
import trio

from p2pfl.aggregation import Contribution, FedAvg
from p2pfl.aggregation.bristle import Bristle
from p2pfl.errors import ConfigError
from p2pfl.model_state import ModelState
from p2pfl.transfer import KeepLocal, MaskedLinear
from simulations import EmulationConfig, run_emulation
from simulations.config import make_task
from simulations.emulation import Emulation
from simulations.emulator import check_run
from simulations.run_setup import graph_for
from simulations.scenario import load_scenario
from transport.memory import open_memory_network

BASE = dict(
    task="digits_transfer",
    partition="classes",
    topology="complete",
    protocol="dpsgd",
    local_steps=1,
    batch_size=80,
    lr=0.5,
    rounds=6,
    evaluate_every=3,
)
ROOT = Path(__file__).resolve().parents[2]


def _built(config: EmulationConfig) -> Emulation:
    """An emulation with its nodes built (not run)."""
    emulation = Emulation(config, make_task(config), graph_for(config, 0), frozenset(), [], None)

    async def build() -> None:
        async with open_memory_network(latency=0.0) as network:
            emulation._build(network)

    trio.run(build)
    return emulation


def test_transfer_nodes_exchange_only_the_output_layer_and_hold_only_their_classes():
    config = EmulationConfig(
        **BASE, nodes=9, aggregation="bristle", attack="label_flip", byzantine_fraction=0.34
    )
    emulation = _built(config)
    assert len(emulation.byzantine) == 3
    rank = 0
    for index, node in emulation.nodes.items():
        state = node.learner.state()
        assert state.layout.names == ("weight", "bias")
        assert list(state.tensor("weight").shape) == [10, 32]
        assert not state.flat.any()  # W and bias start at zero
        labels = node.learner._train.data.tensors[1]
        if index in emulation.byzantine:
            assert sorted(labels.unique().tolist()) == list(range(10))
            assert node.learner.model.trainable.all()
            continue
        own = [(rank + j) % 10 for j in range(4)]
        assert sorted(labels.unique().tolist()) == sorted(own)
        assert len(labels) == 4 * 20
        assert isinstance(node.aggregator, Bristle) and sorted(node.aggregator.classes) == sorted(own)
        assert len(node.aggregator.test_labels) == 4 * 10
        assert torch.nonzero(node.learner.model.trainable).flatten().tolist() == sorted(own)
        rank += 1


def test_training_changes_only_the_own_classes_rows():
    config = EmulationConfig(**BASE, nodes=3)
    node = _built(config).nodes[1]  # honest rank 1: classes 1..4
    before = node.learner.state().clone()
    node.learner.train(steps=3)
    after = node.learner.state()
    for name in ("weight", "bias"):
        changed = (after.tensor(name) != before.tensor(name)).reshape(10, -1).any(dim=1)
        assert torch.nonzero(changed).flatten().tolist() == [1, 2, 3, 4]


def test_masked_linear_mask_survives_load_and_is_not_exchanged():
    model = MaskedLinear(4, 3, classes=[2])
    assert set(model.state_dict()) == {"weight", "bias"}
    model.load_state_dict({"weight": torch.ones(3, 4), "bias": torch.ones(3)})
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    torch.nn.functional.cross_entropy(model(torch.randn(5, 4)), torch.tensor([0, 1, 2, 0, 1])).backward()
    optimizer.step()
    assert torch.equal(model.weight[:2], torch.ones(2, 4)) and not torch.equal(model.weight[2], torch.ones(4))
    with pytest.raises(ValueError, match="classes"):
        model.train_only([3])


def test_keep_local_restores_the_bias():
    own = ModelState.from_tensors({"weight": torch.zeros(2, 2), "bias": torch.zeros(2)})
    other = ModelState.from_tensors({"weight": torch.ones(2, 2), "bias": torch.ones(2)})
    merged = KeepLocal(FedAvg(), ("bias",)).aggregate(Contribution("a", own), [Contribution("b", other)])
    assert torch.allclose(merged.tensor("weight"), torch.full((2, 2), 0.5))
    assert not merged.tensor("bias").any()


def test_bristle_resists_label_shifting_where_averaging_does_not():
    attacked = dict(
        BASE, nodes=15, attack="label_flip", byzantine_fraction=0.34, rounds=10, evaluate_every=10
    )
    bristle = run_emulation(EmulationConfig(**attacked, aggregation="bristle"))
    average = run_emulation(EmulationConfig(**attacked, aggregation="fedavg"))
    assert all(r.nodes == 10 for r in bristle.rounds)
    assert bristle.final_mean_accuracy > 0.8
    assert average.final_mean_accuracy < bristle.final_mean_accuracy - 0.2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"task": "digits", "partition": "iid", "aggregation": "bristle"}, "bristle.*digits_transfer"),
        ({"partition": "iid"}, "partition.*classes"),
        ({"task": "digits"}, "partition 'classes' needs task 'digits_transfer'"),
        ({"classes_per_node": 0}, "classes_per_node"),
        ({"classes_per_node": 11}, "classes_per_node"),
        ({"task_params": {"depth": 2}}, "task_params"),
        ({"task_params": {"train_per_class": 0}}, "task_params.train_per_class"),
        ({"aggregation": "bristle", "aggregation_params": {"f": 3}}, "aggregation_params.*bristle"),
        ({"aggregation": "bristle", "aggregation_params": {"closest": -1}}, "closest"),
        ({"aggregation": "bristle", "aggregation_params": {"shared_classes": 0}}, "shared_classes"),
        (
            {"aggregation": "bristle", "task_params": {"local_test_per_class": 0}},
            "local_test_per_class",
        ),
    ],
)
def test_invalid_transfer_settings_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        EmulationConfig(**{**BASE, "nodes": 4, **overrides})


def test_too_many_samples_per_class_is_a_config_error():
    with pytest.raises(ConfigError, match="train_per_class"):
        make_task(EmulationConfig(**BASE, nodes=4, task_params={"train_per_class": 500}))


def test_the_bristle_scenario_file_loads_with_exact_attacker_counts():
    scenario = load_scenario(ROOT / "scenarios" / "bristle.toml")
    counts = {}
    for variant in scenario.variants:
        emulation = Emulation(
            variant.config, make_task(variant.config), graph_for(variant.config, 0), frozenset(), [], None
        )
        counts[variant.name] = (len(emulation.byzantine), variant.config.nodes)
    assert {v for v in counts.values()} == {(0, 20), (10, 30), (30, 50)}


def test_nodes_draw_from_the_pool_so_it_need_not_split_into_one_part_per_node():
    # More nodes than the pool has samples: fine, nodes draw their classes' samples from it.
    config = EmulationConfig(**{**BASE, "nodes": 1500, "topology": "ring"})
    assert len(make_task(config).train) < 1500
    check_run(config)
