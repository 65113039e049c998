"""Bristle (ALGORITHMS.md section 3): prioritizer, integrator, and the transfer-learning pieces."""

import math
import statistics

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from p2pfl.aggregation import Contribution
from p2pfl.aggregation.bristle import Bristle
from p2pfl.model_state import ModelState
from p2pfl.transfer import accuracy, local_step, pretrain_features

F, C = 12, 10


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny; on a busy 2-core machine two threads spin-wait on each other (40x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


OWN_CLASSES = (0, 1, 2, 3)


def onehot_test_set(per_class: int = 5, noise: float = 0.05, seed: int = 0):
    """Features near the unit vector e_c for samples of class c (own classes only), F = 12 > C."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.tensor(OWN_CLASSES).repeat_interleave(per_class)
    noise = noise * torch.randn(len(labels), F, generator=gen)
    feats = torch.nn.functional.one_hot(labels, F).float() + noise
    return feats, labels


def bristle(feats, labels, **kwargs) -> Bristle:
    return Bristle(test_features=feats, test_labels=labels, classes=OWN_CLASSES, **kwargs)


def perfect() -> torch.Tensor:
    """W (F x C) that maps feature c to class c: F1 = 1 on every class."""
    return 5.0 * torch.eye(F, C)


def shifted() -> torch.Tensor:
    """A label-shifting attacker's W: feature c goes to class c + 1."""
    return 5.0 * torch.roll(torch.eye(F, C), shifts=1, dims=1)


def state(w: torch.Tensor, **extra) -> ModelState:
    return ModelState.from_tensors({"weight": w, **extra})


def contributions(ws) -> list[Contribution]:
    return [Contribution(f"peer{j}", state(w)) for j, w in enumerate(ws)]


def centred(w: torch.Tensor) -> torch.Tensor:
    return w - w.mean(dim=0, keepdim=True)


# -- prioritizer ----------------------------------------------------------------------------------


def test_prioritizer_keeps_the_closest_plus_random_others_in_distance_order():
    own = torch.zeros(F, C)
    distances = torch.tensor([7.0, 3.0, 11.0, 1.0, 9.0, 2.0, 10.0, 5.0, 8.0, 4.0, 6.0, 12.0])
    peers = distances[:, None, None] * torch.ones(F, C) / math.sqrt(F * C)  # ||peer_j|| = distances[j]
    nearest = [3, 5, 1]  # distances 1, 2, 3
    others_seen = set()
    for seed in range(30):
        b = bristle(*onehot_test_set(), closest=3, random_others=2, seed=seed)
        kept = b.prioritize(own, peers).tolist()
        assert kept[:3] == nearest
        assert len(kept) == 5 and len(set(kept)) == 5
        assert not set(kept[3:]) & set(nearest)
        assert distances[kept[3]] < distances[kept[4]]  # in order of distance
        others_seen.update(kept[3:])
    assert len(others_seen) >= 7  # random, not always the same two (9 candidates)


def test_prioritizer_keeps_everything_when_there_are_few_peers():
    peers = torch.stack([torch.full((F, C), v) for v in (3.0, -1.0, 2.0)])
    b = bristle(*onehot_test_set(), closest=20, random_others=5)
    assert b.prioritize(torch.zeros(F, C), peers).tolist() == [1, 2, 0]


def test_prioritizer_random_choice_follows_the_seed():
    peers = torch.randn(30, F, C, generator=torch.Generator().manual_seed(1))
    own = torch.zeros(F, C)
    runs = [bristle(*onehot_test_set(), seed=s).prioritize(own, peers).tolist() for s in (4, 4, 5)]
    assert runs[0] == runs[1]
    assert runs[0][:20] == runs[2][:20] and runs[0][20:] != runs[2][20:]


# -- integrator -----------------------------------------------------------------------------------


def test_identical_peers_leave_w_unchanged_up_to_column_means():
    feats, labels = onehot_test_set()
    own = perfect() + 0.3 * torch.randn(F, C, generator=torch.Generator().manual_seed(2))
    merged = bristle(feats, labels).aggregate(Contribution("me", state(own)), contributions([own] * 6))
    torch.testing.assert_close(merged.tensor("weight"), centred(own))
    assert not torch.allclose(merged.tensor("weight"), own)  # the subtraction did happen


def test_label_shifted_peer_gets_no_weight_and_a_better_honest_peer_a_positive_one():
    feats, labels = onehot_test_set(noise=0.0)
    own = perfect()
    own[:, 2:4] = 0.0  # the node does not know classes 2 and 3 yet: all logits 0, argmax picks 0
    b = bristle(feats, labels)
    f1 = b.f1_scores(torch.stack([own, perfect(), shifted()]))
    assert f1[0].tolist() == pytest.approx([0.5, 1.0, 0.0, 0.0])  # class 0: 5 right, 10 wrong
    assert f1[1].tolist() == [1.0] * 4
    assert f1[2].tolist() == [0.0] * 4
    weights = b.weights(own, torch.stack([perfect(), shifted()]))
    honest, attacker = weights
    assert attacker.abs().max() < 1e-12  # own classes and foreign columns alike
    # The honest peer is selected on 3 classes (its top 3 by F1: 0, 1, 2) and is better on 0 and 2.
    assert honest[0] > 1 and honest[2] > 1
    assert honest[1] == pytest.approx(1.0)  # equal F1 on class 1: score 0, weight = certainty = 1
    assert honest[3] == 0.0  # not among its selected classes
    foreign = [c for c in range(C) if c not in OWN_CLASSES]
    assert (honest[foreign] > 1).all() and torch.allclose(honest[foreign], honest[foreign[0]])
    merged = b.integrate(own, torch.stack([perfect(), shifted()]))
    # Class 2 is learnt from the honest peer; the attacker's columns had no say.
    assert b.f1_scores(merged.unsqueeze(0))[0, 2] == 1.0


def test_a_worse_peer_is_penalised_harder_than_a_better_one_is_rewarded():
    feats, labels = onehot_test_set()
    b = bristle(feats, labels, shared_classes=4)
    weak = perfect()
    weak[:, 2:4] = 0.0
    w_better = b.weights(weak, perfect().unsqueeze(0))[0]
    w_worse = b.weights(perfect(), weak.unsqueeze(0))[0]
    assert w_better[2] > 1.0
    assert w_worse[2] == 0.0 and w_worse[3] == 0.0


def reference_weights(own_f1, peer_f1, k):
    """The spec's formulas, one peer and one class at a time, in Python floats."""

    def sigmoid(x):
        return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))

    def gate(score):
        return max(0.0, 10 * sigmoid(score / 100) - 4)

    out = []
    for f1 in peer_f1:
        selected = sorted(range(len(f1)), key=lambda i: -f1[i])[:k]
        theirs = [f1[i] for i in selected]
        certainty = max(0.0, statistics.fmean(theirs) - statistics.pstdev(theirs))
        row = [0.0] * C
        scores = []
        for i in selected:
            d = 10 * abs(f1[i] - own_f1[i])
            score = d ** (3 + own_f1[i]) if f1[i] > own_f1[i] else -(d ** (4 + own_f1[i]))
            scores.append(score)
            row[OWN_CLASSES[i]] = certainty * gate(max(score, -100.0))
        for c in range(C):
            if c not in OWN_CLASSES:
                row[c] = certainty * gate(sum(scores))
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(4))
def test_weights_and_merge_follow_the_spec(seed):
    gen = torch.Generator().manual_seed(seed)
    feats, labels = onehot_test_set(per_class=6, noise=0.6, seed=seed)
    bias = 0.2 * torch.randn(C, generator=gen)
    own = perfect() + 3.0 * torch.randn(F, C, generator=gen)
    peers = perfect() + 3.0 * torch.randn(9, F, C, generator=gen)
    b = bristle(feats, labels, shared_classes=3)

    f1 = b.f1_scores(torch.cat([own.unsqueeze(0), peers]), bias)
    predicted = (feats @ torch.cat([own.unsqueeze(0), peers]) + bias).argmax(dim=-1)
    for m in range(len(f1)):
        expected = f1_score(labels, predicted[m], labels=list(OWN_CLASSES), average=None, zero_division=0)
        np.testing.assert_allclose(f1[m].numpy(), expected, atol=1e-12)
    assert len({tuple(row.tolist()) for row in f1}) > 5  # a case where the F1 values differ

    expected_w = reference_weights(f1[0].tolist(), f1[1:].tolist(), k=3)
    weights = b.weights(own, peers, bias=bias)
    torch.testing.assert_close(weights, expected_w, rtol=1e-9, atol=1e-12)

    merged = b.integrate(own, peers, bias=bias)
    w = expected_w.float()
    columns = (own + (w[:, None, :] * peers).sum(dim=0)) / (1 + w.sum(dim=0))
    torch.testing.assert_close(merged, centred(columns), rtol=1e-5, atol=1e-5)


def test_huge_negative_scores_give_zero_weight_without_overflow():
    feats, labels = onehot_test_set()
    b = bristle(feats, labels, shared_classes=4)
    weights = b.weights(perfect(), torch.zeros(1, F, C))  # F1 1.0 vs ~0: scores -1e5 each
    assert torch.isfinite(weights).all() and weights.abs().max() == 0.0


def test_column_means_are_zero():
    gen = torch.Generator().manual_seed(3)
    feats, labels = onehot_test_set()
    own = perfect() + torch.randn(F, C, generator=gen)
    received = contributions(perfect() + torch.randn(15, F, C, generator=gen))
    merged = bristle(feats, labels).aggregate(Contribution("me", state(own)), received)
    assert merged.tensor("weight").mean(dim=0).abs().max() < 1e-6
    alone = bristle(feats, labels).aggregate(Contribution("me", state(own)), [])
    torch.testing.assert_close(alone.tensor("weight"), centred(own))


def test_permutation_invariance_over_received():
    gen = torch.Generator().manual_seed(5)
    feats, labels = onehot_test_set(noise=0.5)
    own = perfect() + torch.randn(F, C, generator=gen)
    ws = list(perfect() + 2.0 * torch.randn(12, F, C, generator=gen))
    ws += [shifted(), shifted() + 0.1]
    order = torch.randperm(len(ws), generator=gen).tolist()
    results = [
        bristle(feats, labels, closest=6, random_others=3, seed=9)
        .aggregate(Contribution("me", state(own)), contributions(peers))
        .tensor("weight")
        for peers in (ws, [ws[i] for i in order])
    ]
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-6)
    assert not torch.allclose(results[0], centred(own), atol=1e-3)  # peers did change something


def test_aggregate_keeps_the_local_bias_and_uses_it():
    feats, labels = onehot_test_set()
    own = perfect()
    own[:, 2:4] = 0.0
    bias = torch.zeros(C)
    bias[2] = 100.0  # predicts class 2 for everything: own F1 on class 2 is now low but non-zero
    b = bristle(feats, labels, bias_name="bias")
    out = b.aggregate(Contribution("me", state(own, bias=bias)), contributions([perfect()]))
    assert torch.equal(out.tensor("bias"), bias)
    torch.testing.assert_close(out.tensor("weight"), b.integrate(own, perfect().unsqueeze(0), bias=bias))
    assert not torch.allclose(out.tensor("weight"), b.integrate(own, perfect().unsqueeze(0)))


def test_transposed_weights_like_nn_linear():
    gen = torch.Generator().manual_seed(6)
    feats, labels = onehot_test_set()
    own = perfect() + torch.randn(F, C, generator=gen)
    peers = perfect() + torch.randn(4, F, C, generator=gen)
    plain = bristle(feats, labels).aggregate(Contribution("me", state(own)), contributions(peers))
    flipped = bristle(feats, labels, transposed=True).aggregate(
        Contribution("me", state(own.T.contiguous())), contributions(peers.transpose(1, 2).contiguous())
    )
    torch.testing.assert_close(flipped.tensor("weight"), plain.tensor("weight").T)


def test_bad_configuration_and_mismatched_models_are_refused():
    feats, labels = onehot_test_set()
    with pytest.raises(ValueError, match="closest"):
        bristle(feats, labels, closest=-1)
    with pytest.raises(ValueError, match="shared_classes"):
        bristle(feats, labels, shared_classes=0)
    with pytest.raises(ValueError, match="test_labels"):
        Bristle(test_features=feats, test_labels=labels[:-1], classes=OWN_CLASSES)
    with pytest.raises(ValueError, match="classes"):
        Bristle(test_features=feats, test_labels=labels, classes=[1, 1, 2])
    with pytest.raises(ValueError, match="peer0"):
        bristle(feats, labels).aggregate(
            Contribution("me", state(perfect())), contributions([torch.zeros(3, 3)])
        )
    with pytest.raises(ValueError, match="no tensor"):
        bristle(feats, labels, weight_name="W").aggregate(Contribution("me", state(perfect())), [])


# -- transfer learning ----------------------------------------------------------------------------


def test_local_step_updates_only_the_own_columns_and_lowers_the_loss():
    gen = torch.Generator().manual_seed(7)
    feats = torch.randn(2, 40, F, generator=gen)  # two nodes at once
    labels = torch.randint(0, 4, (2, 40), generator=gen)
    weight = torch.zeros(2, F, C)
    bias = torch.zeros(2, C)
    columns = torch.zeros(2, C, dtype=torch.bool)
    columns[:, :4] = True
    columns[1, 9] = True
    losses = [local_step(weight, bias, feats, labels, lr=0.5, columns=columns) for _ in range(20)]
    assert losses[0].shape == (2,)
    assert (losses[-1] < losses[0]).all()
    assert losses[0][0].item() == pytest.approx(math.log(C))  # W and bias start at zero
    assert (weight[0, :, 4:] == 0).all() and (bias[0, 4:] == 0).all()
    assert (weight[1, :, 4:9] == 0).all() and (weight[1, :, 9] != 0).any()
    assert (weight[:, :, :4] != 0).all()


def test_local_step_gradient_matches_autograd():
    gen = torch.Generator().manual_seed(8)
    feats, labels = torch.randn(30, F, generator=gen), torch.randint(0, C, (30,), generator=gen)
    weight, bias = torch.randn(F, C, generator=gen), torch.randn(C, generator=gen)
    w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    torch.nn.functional.cross_entropy(feats @ w + b, labels).backward()
    loss = local_step(weight, bias, feats, labels, lr=0.1)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(feats @ w + b, labels).item())
    torch.testing.assert_close(weight, (w - 0.1 * w.grad).detach())
    torch.testing.assert_close(bias, (b - 0.1 * b.grad).detach())


def test_pretrained_features_are_frozen_seeded_and_useful():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy((digits.data[:300] / 16.0).astype(np.float32))
    y = torch.from_numpy(digits.target[:300].astype(np.int64))
    a = pretrain_features(x, y, steps=150, seed=1)
    b = pretrain_features(x, y, steps=150, seed=1)
    assert all(not p.requires_grad for p in a.parameters())
    assert not a.training
    assert torch.equal(a(x), b(x))
    feats = a(x)
    assert feats.shape == (300, 32) and feats.abs().max() <= 1.0
    # A linear layer trained on the frozen features separates the classes well.
    weight, bias = torch.zeros(32, 10), torch.zeros(10)
    for _ in range(200):
        local_step(weight, bias, feats, y, lr=1.0)
    assert accuracy(weight, bias, feats, y).item() > 0.9
