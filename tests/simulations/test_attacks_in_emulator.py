"""Byzantine nodes in the emulator: picked by seed, left out of the accuracy, stopped by robust rules."""

import pytest

from p2pfl.errors import ConfigError
from simulations import EmulationConfig, run_emulation

BASE = dict(nodes=10, topology="complete", protocol="dpsgd", rounds=8, local_steps=5, evaluate_every=4)


def test_sign_flipping_breaks_averaging_but_not_the_median():
    attacked = dict(BASE, attack="sign_flip", attack_params={"scale": 4.0}, byzantine_fraction=0.2)
    plain = run_emulation(EmulationConfig(**attacked))
    robust = run_emulation(EmulationConfig(**attacked, aggregation="median"))
    assert [n.byzantine for n in plain.nodes].count(True) == 2
    assert all(r.nodes == 8 for r in plain.rounds)  # honest nodes only
    assert plain.final_mean_accuracy < 0.3
    assert robust.final_mean_accuracy > 0.7


def test_label_flippers_poison_their_data_and_are_picked_by_seed():
    config = EmulationConfig(**BASE, attack="label_flip", byzantine_fraction=0.3, seed=5)
    a, b = run_emulation(config), run_emulation(config)
    flagged = [n.peer for n in a.nodes if n.byzantine]
    assert len(flagged) == 3 and flagged == [n.peer for n in b.nodes if n.byzantine]
    other = run_emulation(EmulationConfig(**{**BASE, "seed": 6}, attack="label_flip", byzantine_fraction=0.3))
    assert flagged != [n.peer for n in other.nodes if n.byzantine]


def test_label_flippers_flip_within_the_task_s_classes():
    # The synthetic task with 4 classes: flipping modulo 10 made labels the model has no output for.
    synthetic = dict(BASE, task="synthetic", task_params={"classes": 4, "features": 8}, rounds=4)
    result = run_emulation(EmulationConfig(**synthetic, attack="label_flip", byzantine_fraction=0.2))
    assert [n.byzantine for n in result.nodes].count(True) == 2
    assert result.rounds_reached == 4
    with pytest.raises(ConfigError, match="label_flip num_classes must be the task's 4 classes, got 10"):
        EmulationConfig(
            **synthetic, attack="label_flip", attack_params={"num_classes": 10}, byzantine_fraction=0.2
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attack": "teleport"}, "teleport"),
        ({"byzantine_fraction": 0.2}, "needs an attack"),
        ({"attack": "sign_flip", "byzantine_fraction": 1.0}, "byzantine_fraction"),
        ({"attack": "gaussian", "attack_params": {"std": -1.0}}, "gaussian"),
    ],
)
def test_invalid_attack_settings_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        EmulationConfig(**{**BASE, **overrides})


def test_the_consensus_distance_leaves_out_label_flippers(monkeypatch):
    """Label flippers run with no model attack (their data is what lies), so telling the honest
    nodes apart by `node.attack` counted them in."""
    from simulations.results import ConsensusTracker

    added = []
    original = ConsensusTracker.add
    monkeypatch.setattr(
        ConsensusTracker, "add", lambda self, r, flat: (added.append(r), original(self, r, flat))
    )
    config = EmulationConfig(
        nodes=8,
        rounds=2,
        topology_params={"degree": 3},
        attack="label_flip",
        byzantine_fraction=0.25,
        consensus=True,
    )
    result = run_emulation(config)
    assert [r.nodes for r in result.rounds] == [6, 6]
    assert added.count(1) == added.count(2) == 6
