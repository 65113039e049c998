"""Byzantine attacks (ALGORITHMS.md section 4): each crafted model has the property its name promises."""

import statistics

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from p2pfl.attacks import (
    ALIE,
    ATTACKS,
    IPM,
    Dissensus,
    FlippedDataset,
    FreeRider,
    GaussianNoise,
    LabelFlip,
    ModelPoisoning,
    Scaling,
    SignFlip,
    alie_z_max,
    build_attack,
    choose_byzantine,
    flip_labels,
)
from p2pfl.errors import ConfigError
from p2pfl.model_state import ModelState


def vectors(m: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An own vector (d,) and an honest matrix (m, d) of distinct random values."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=gen), torch.randn(m, d, generator=gen) + 0.5


def craft(attack: ModelPoisoning, own, honest, seed: int = 0, round: int = 0):
    return attack.craft(own, honest, round=round, generator=torch.Generator().manual_seed(seed))


# -- sign flip, IPM, scaling ------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 4.0, 0.25])
def test_sign_flip_negates_and_scales_the_own_model(scale):
    own, honest = vectors(5, 7)
    sent = craft(SignFlip(scale=scale), own, honest)
    torch.testing.assert_close(sent, -scale * own)
    assert (torch.sign(sent) == -torch.sign(own)).all()


def test_ipm_sends_minus_epsilon_times_the_honest_mean():
    own, honest = vectors(6, 9)
    sent = craft(IPM(epsilon=0.3), own, honest)
    torch.testing.assert_close(sent, -0.3 * honest.mean(dim=0))
    assert torch.dot(sent, honest.mean(dim=0)) < 0  # the point of the attack


def test_ipm_without_honest_models_uses_the_own_model():
    own, _ = vectors(0, 4)
    torch.testing.assert_close(craft(IPM(epsilon=2.0), own, torch.empty(0, 4)), -2.0 * own)


@pytest.mark.parametrize("factor", [3.0, 10.0, -1.0])
def test_scaling_multiplies_the_update_from_the_honest_mean(factor):
    own, honest = vectors(4, 6)
    mean = honest.mean(dim=0)
    sent = craft(Scaling(factor=factor), own, honest)
    torch.testing.assert_close(sent - mean, factor * (own - mean))


def test_scaling_by_n_replaces_the_plain_average():
    """Model replacement: with n - 1 others at the mean, the average of all n is the attacker's model."""
    n = 5
    own, honest = vectors(1, 8)
    others = honest.expand(n - 1, -1)
    sent = craft(Scaling(factor=n), own, others)
    torch.testing.assert_close(torch.cat([others, sent.unsqueeze(0)]).mean(dim=0), own)


# -- Gaussian noise -----------------------------------------------------------------------------------


@pytest.mark.parametrize("std", [0.1, 2.0])
def test_gaussian_noise_has_the_requested_std(std):
    own = torch.linspace(-3, 3, 200_000)
    sent = craft(GaussianNoise(std=std), own, torch.empty(0, own.numel()), seed=3)
    noise = (sent - own).double()
    assert noise.std().item() == pytest.approx(std, rel=0.01)
    assert abs(noise.mean().item()) < 0.01 * std
    pure = craft(GaussianNoise(std=std, replace=True), own, torch.empty(0, own.numel()), seed=3)
    torch.testing.assert_close(pure, sent - own)  # same seed, same noise, without own


def test_gaussian_noise_is_reproducible_by_seed():
    own = torch.zeros(50)
    empty = torch.empty(0, 50)
    a, b = craft(GaussianNoise(), own, empty, seed=1), craft(GaussianNoise(), own, empty, seed=1)
    c = craft(GaussianNoise(), own, empty, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# -- ALIE ---------------------------------------------------------------------------------------------


def test_alie_z_max_matches_the_paper_formula():
    # n = 50, f = 24: s = floor(26) - 24 = 2, z = Phi^-1(48 / 50)
    assert alie_z_max(50, 24) == pytest.approx(statistics.NormalDist().inv_cdf(0.96), abs=1e-9)
    assert alie_z_max(50, 24) == pytest.approx(1.7507, abs=1e-4)
    for n, f in [(10, 0), (20, 3), (31, 7)]:
        s = (n // 2 + 1) - f
        assert alie_z_max(n, f) == pytest.approx(statistics.NormalDist().inv_cdf((n - s) / n), abs=1e-9)


@pytest.mark.parametrize(("n", "f"), [(1, 0), (10, 6), (10, 10)])
def test_alie_z_max_refuses_impossible_counts(n, f):
    with pytest.raises(ValueError):
        alie_z_max(n, f)


def test_alie_sends_mean_minus_z_std_of_the_honest_models():
    own, honest = vectors(8, 12)
    attack = ALIE(n=20, f=4)
    assert attack.z == pytest.approx(alie_z_max(20, 4))
    sent = craft(attack, own, honest)
    expected = honest.double().mean(dim=0) - attack.z * honest.double().std(dim=0, unbiased=True)
    torch.testing.assert_close(sent.double(), expected, rtol=1e-6, atol=1e-6)
    sent_z = craft(ALIE(z=1.5), own, honest)
    expected_z = honest.double().mean(dim=0) - 1.5 * honest.double().std(dim=0, unbiased=True)
    torch.testing.assert_close(sent_z.double(), expected_z, rtol=1e-6, atol=1e-6)


def test_alie_with_one_honest_model_sends_it():
    own, honest = vectors(1, 5)
    torch.testing.assert_close(craft(ALIE(z=1.0), own, honest), honest[0])


def test_alie_parameters_are_z_or_n_and_f():
    with pytest.raises(ValueError):
        ALIE(z=1.0, n=10, f=2)
    with pytest.raises(ValueError):
        ALIE(n=10)


# -- free rider ---------------------------------------------------------------------------------------


def test_free_rider_resends_the_stale_first_model():
    rider = FreeRider()
    first, honest = vectors(3, 6, seed=1)
    assert torch.equal(craft(rider, first, honest, round=0), first)
    remembered = first.clone()
    first.add_(100.0)  # the caller reusing its buffer must not change what is resent
    for round_, seed in [(1, 2), (2, 3)]:
        newer, honest = vectors(3, 6, seed=seed)
        sent = craft(rider, newer, honest, round=round_)
        assert torch.equal(sent, remembered)
        assert not torch.equal(sent, newer)
    rider.reset()
    assert torch.equal(craft(rider, newer, honest), newer)


def test_free_rider_refuses_a_model_of_another_size():
    rider = FreeRider()
    craft(rider, torch.zeros(4), torch.empty(0, 4))
    with pytest.raises(ValueError):
        craft(rider, torch.zeros(5), torch.empty(0, 5))


# -- dissensus ----------------------------------------------------------------------------------------


def test_dissensus_pushes_away_from_the_neighbours_mean():
    own, honest = vectors(4, 10)
    mean = honest.mean(dim=0)
    sent = craft(Dissensus(epsilon=1.5), own, honest)
    # The sent model lies on the far side of `own`, opposite the honest neighbours.
    assert torch.dot(sent - own, mean - own) < 0
    assert torch.linalg.vector_norm(sent - mean) > torch.linalg.vector_norm(own - mean)


@pytest.mark.parametrize(("epsilon", "byzantine"), [(1.0, 1), (1.0, 3), (2.0, 2), (0.5, 1)])
def test_dissensus_scales_the_victims_gossip_step_by_one_minus_epsilon(epsilon, byzantine):
    victim, honest = vectors(5, 7, seed=4)
    sent = craft(Dissensus(epsilon=epsilon, byzantine_neighbours=byzantine), victim, honest)
    neighbours = torch.cat([honest, sent.expand(byzantine, -1)])
    w = 1.0 / (len(neighbours) + 1)  # the victim weighs itself and every neighbour equally
    step = victim + w * (neighbours - victim).sum(dim=0)
    honest_step = w * (honest - victim).sum(dim=0)
    torch.testing.assert_close(step, victim + (1.0 - epsilon) * honest_step, rtol=1e-5, atol=1e-5)


def test_dissensus_without_honest_neighbours_sends_own():
    own, _ = vectors(0, 3)
    torch.testing.assert_close(craft(Dissensus(epsilon=2.0), own, torch.empty(0, 3)), own)


# -- model states -------------------------------------------------------------------------------------


def test_craft_state_keeps_the_layout_and_extras():
    def state(seed):
        gen = torch.Generator().manual_seed(seed)
        return ModelState.from_tensors(
            {"a": torch.randn(2, 3, generator=gen), "b": torch.randn(4, generator=gen), "n": torch.tensor(7)}
        )

    own, honest = state(0), [state(1), state(2)]
    out = IPM(epsilon=1.0).craft_state(own, honest, round=0, generator=torch.Generator())
    assert out.layout is own.layout
    assert torch.equal(out.extras["n"], torch.tensor(7))
    torch.testing.assert_close(out.flat, -torch.stack([s.flat for s in honest]).mean(dim=0))


def test_craft_state_refuses_a_different_layout_of_the_same_size():
    own = ModelState.from_tensors({"a": torch.zeros(2, 3)})
    other = ModelState.from_tensors({"a": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="layout"):
        SignFlip().craft_state(own, [other], round=0, generator=torch.Generator())


# -- label flip ---------------------------------------------------------------------------------------


def test_label_flip_maps_k_to_k_plus_shift_mod_classes():
    labels = torch.arange(10).repeat(3)
    features = torch.randn(30, 4)
    data = TensorDataset(features, labels)
    flipped = flip_labels(data, num_classes=10)
    assert isinstance(flipped, TensorDataset)
    assert torch.equal(flipped.tensors[1], (labels + 1) % 10)
    assert flipped.tensors[0] is features  # features shared, not copied
    assert torch.equal(data.tensors[1], torch.arange(10).repeat(3))  # input untouched
    assert torch.equal(flip_labels(data, num_classes=10, shift=3).tensors[1], (labels + 3) % 10)


def test_label_flip_with_negative_shift_in_a_narrow_dtype():
    flip = LabelFlip(num_classes=10, shift=-1)
    labels = torch.tensor([0, 1, 9], dtype=torch.uint8)
    out = flip(labels)
    assert out.dtype == torch.uint8
    assert out.tolist() == [9, 0, 8]


def test_label_flip_on_single_labels():
    flip = LabelFlip(num_classes=4, shift=1)
    assert flip(3) == 0
    assert flip(np.int64(2)) == 3
    with pytest.raises(ValueError):
        flip(4)
    with pytest.raises(ValueError):
        flip(torch.tensor([0.0, 1.0]))


def test_label_flip_wraps_other_datasets():
    class Pairs(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.full((2,), float(i)), i

    flipped = flip_labels(Pairs(), num_classes=5, shift=2)
    assert isinstance(flipped, FlippedDataset)
    assert len(flipped) == 5
    assert [flipped[i][1] for i in range(5)] == [2, 3, 4, 0, 1]
    assert torch.equal(flipped[1][0], torch.full((2,), 1.0))


@pytest.mark.parametrize("shift", [0, 10, -20])
def test_label_flip_refuses_a_shift_that_changes_nothing(shift):
    with pytest.raises(ValueError):
        LabelFlip(num_classes=10, shift=shift)


# -- choosing the Byzantine nodes ---------------------------------------------------------------------


def test_choose_byzantine_is_deterministic_for_a_seed_and_differs_across_seeds():
    first = choose_byzantine(100, count=10, seed=7)
    assert first == choose_byzantine(100, count=10, seed=7)
    assert len(first) == 10 and len(set(first)) == 10
    assert first == sorted(first) and all(0 <= i < 100 for i in first)
    assert first != choose_byzantine(100, count=10, seed=8)
    picks = {tuple(choose_byzantine(100, count=10, seed=s)) for s in range(20)}
    assert len(picks) == 20


def test_choose_byzantine_by_fraction():
    assert len(choose_byzantine(100, fraction=0.29, seed=0)) == 29
    assert len(choose_byzantine(7, fraction=0.5, seed=0)) == 3
    assert choose_byzantine(5, fraction=1.0, seed=0) == [0, 1, 2, 3, 4]
    assert choose_byzantine(5, fraction=0.0, seed=0) == []


def test_choose_byzantine_draws_uniformly():
    counts = np.zeros(10)
    for seed in range(2000):
        counts[choose_byzantine(10, count=3, seed=seed)] += 1
    assert np.allclose(counts / 2000, 0.3, atol=0.04)


@pytest.mark.parametrize(
    "kwargs",
    [{"count": 3, "fraction": 0.1}, {}, {"count": 11}, {"fraction": 1.5}, {"count": 2, "seed": -1}],
)
def test_choose_byzantine_refuses_bad_arguments(kwargs):
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(ValueError):
        choose_byzantine(10, **kwargs)


# -- the registry -------------------------------------------------------------------------------------


def test_build_attack_builds_every_attack():
    assert set(ATTACKS) == {
        "sign_flip",
        "gaussian",
        "alie",
        "ipm",
        "scaling",
        "free_rider",
        "dissensus",
        "label_flip",
    }
    assert isinstance(build_attack("sign_flip", scale=2.0), SignFlip)
    assert build_attack("alie", n=50, f=24).z == pytest.approx(alie_z_max(50, 24))
    assert isinstance(build_attack("label_flip", num_classes=10), LabelFlip)
    assert build_attack("free_rider") is not build_attack("free_rider")  # state per attacker


@pytest.mark.parametrize(
    ("name", "params", "fragment"),
    [
        ("sign_flop", {}, "'sign_flop'"),
        ("alie", {"n": 10, "f": 9}, "attack 'alie'"),
        ("gaussian", {"std": -1.0}, "attack 'gaussian'"),
        ("ipm", {"eps": 0.1}, "attack 'ipm'"),
        ("label_flip", {"num_classes": 10, "shift": 10}, "attack 'label_flip'"),
        ("dissensus", {"byzantine_neighbours": 0}, "attack 'dissensus'"),
        ("scaling", {"factor": float("nan")}, "attack 'scaling'"),
    ],
)
def test_build_attack_errors_name_the_attack(name, params, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_attack(name, **params)
