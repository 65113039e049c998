import pytest
import torch

from p2pfl.aggregation import Contribution, FedAvg, Reputation
from p2pfl.aggregation.registry import build_aggregator
from p2pfl.errors import ConfigError
from p2pfl.model_state import ModelState


def state(values):
    return ModelState.from_tensors({"w": torch.tensor(values, dtype=torch.float32)})


def contributions(honest_step, attacker_step, *, own=(0.0, 0.0)):
    own_c = Contribution("me", state(own))
    received = [
        Contribution(f"h{i}", state([own[0] + honest_step + 0.01 * i, own[1] + honest_step]))
        for i in range(4)
    ]
    received.append(Contribution("bad", state([own[0] + attacker_step, own[1] + attacker_step])))
    return own_c, received


def test_an_attacker_pulling_against_the_merge_loses_trust_and_is_ignored():
    rule = Reputation(FedAvg(), decay=0.5, threshold=0.0)
    for _ in range(3):
        own, received = contributions(1.0, -3.0)
        rule.aggregate(own, received)
    scores = rule.peer_scores()
    assert scores["bad"] < 0 < min(scores[f"h{i}"] for i in range(4))
    own, received = contributions(1.0, -100.0)
    merged = rule.aggregate(own, received)
    expected = FedAvg(include_own=True).aggregate(own, received[:4])
    assert torch.allclose(merged.flat, expected.flat)  # the attacker no longer counts


def test_a_peer_that_turns_honest_recovers():
    rule = Reputation(FedAvg(), decay=0.5, threshold=0.0)
    for _ in range(3):
        rule.aggregate(*contributions(1.0, -3.0))
    for _ in range(4):
        rule.aggregate(*contributions(1.0, 1.0))
    assert rule.peer_scores()["bad"] > 0


def test_scores_start_at_initial_and_nothing_trusted_keeps_the_own_model():
    rule = Reputation(FedAvg(), initial=-1.0, threshold=0.0)
    own, received = contributions(1.0, 1.0)
    assert torch.equal(rule.aggregate(own, received).flat, own.state.flat)


def test_built_by_name_around_another_rule():
    rule = build_aggregator("reputation", rule="median", decay=0.9)
    assert isinstance(rule, Reputation) and rule.peer_scores() == {}
    with pytest.raises(ConfigError, match="reputation"):
        build_aggregator("reputation", rule="reputation")
    with pytest.raises(ConfigError, match="decay"):
        build_aggregator("reputation", decay=1.0)
