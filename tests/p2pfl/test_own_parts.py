"""Rules and attacks of one's own, named `module:attribute` where a config names ours."""

import textwrap

import pytest
import torch

from p2pfl.aggregation import Aggregator, Contribution, FedAvg
from p2pfl.aggregation.registry import build_aggregator
from p2pfl.attacks import ModelPoisoning
from p2pfl.attacks.registry import build_attack
from p2pfl.errors import ConfigError
from p2pfl.model_state import Layout, ModelState

OWN_PARTS = '''
import torch
from p2pfl.aggregation import Aggregator, FedAvg
from p2pfl.attacks import ModelPoisoning

class KeepOwn(Aggregator):
    """Ignores every received model."""
    def __init__(self, *, factor=1.0):
        if factor <= 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        self.factor = factor
    def aggregate(self, own, received):
        return own.state.with_flat(own.state.flat * self.factor)

def fedavg_without_own():
    return FedAvg(include_own=False)

class Zeros(ModelPoisoning):
    def craft(self, own, honest, *, round, generator):
        return torch.zeros_like(own)

class NotARule:
    pass

CONSTANT = 3
'''


@pytest.fixture
def own_parts(tmp_path, monkeypatch):
    (tmp_path / "own_parts.py").write_text(textwrap.dedent(OWN_PARTS))
    (tmp_path / "broken_parts.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "own_parts"


def state(*values: float) -> ModelState:
    flat = torch.tensor(values)
    return ModelState(Layout.of({"w": flat}), flat)


def test_a_rule_of_ones_own_is_built_with_its_params_and_merges(own_parts):
    rule = build_aggregator("own_parts:KeepOwn", factor=2.0)
    assert isinstance(rule, Aggregator) and type(rule).__name__ == "KeepOwn"
    merged = rule.aggregate(Contribution("me", state(1.0, 2.0)), [Contribution("p", state(9.0, 9.0))])
    assert merged.flat.tolist() == [2.0, 4.0]


def test_a_function_that_returns_a_rule_will_do(own_parts):
    rule = build_aggregator("own_parts:fedavg_without_own")
    assert isinstance(rule, FedAvg) and rule.include_own is False


def test_a_rule_of_ones_own_can_be_wrapped_by_reputation(own_parts):
    rule = build_aggregator("reputation", rule="own_parts:KeepOwn", rule_params={"factor": 3.0})
    merged = rule.aggregate(Contribution("me", state(1.0)), [Contribution("p", state(5.0))])
    assert merged.flat.tolist() == [3.0]


def test_an_attack_of_ones_own_is_built(own_parts):
    attack = build_attack("own_parts:Zeros")
    assert isinstance(attack, ModelPoisoning)
    crafted = attack.craft(torch.ones(3), torch.ones(2, 3), round=1, generator=torch.Generator())
    assert crafted.tolist() == [0.0, 0.0, 0.0]


IMPORT_FAILED = r"^aggregation: cannot import 'no_such_module' for 'no_such_module:Rule': ModuleNotFound"
NOT_A_RULE = r"^aggregation 'own_parts:NotARule': built an object of type NotARule, not a p2pfl\.aggregation"
NOT_CALLABLE = r"^aggregation: 'own_parts:CONSTANT' is not a class or function .*type is int\)$"
NOT_THE_FORM = r"^aggregation: '{}' is not of the form module:attribute$"


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("no_such_module:Rule", {}, IMPORT_FAILED),
        ("broken_parts:Rule", {}, r"^aggregation: cannot import 'broken_parts' .*RuntimeError: boom$"),
        ("own_parts:Missing", {}, r"^aggregation: module 'own_parts' has no attribute 'Missing'$"),
        ("own_parts:CONSTANT", {}, NOT_CALLABLE),
        ("own_parts:NotARule", {}, NOT_A_RULE),
        ("own_parts:KeepOwn", {"factor": 0.0}, r"^aggregation 'own_parts:KeepOwn': factor must be > 0"),
        ("own_parts:KeepOwn", {"facter": 2.0}, r"^aggregation 'own_parts:KeepOwn': .*unexpected keyword"),
        ("own_parts:", {}, NOT_THE_FORM.format("own_parts:")),
        (":KeepOwn", {}, NOT_THE_FORM.format(":KeepOwn")),
        ("own_parts:Keep.Own", {}, NOT_THE_FORM.format(r"own_parts:Keep\.Own")),
    ],
)
def test_what_is_wrong_with_a_rule_of_ones_own_is_named(own_parts, name, params, message):
    with pytest.raises(ConfigError, match=message):
        build_aggregator(name, **params)


def test_an_attack_must_be_an_attack(own_parts):
    message = r"^attack 'own_parts:KeepOwn': built an object of type KeepOwn, not a .*ModelPoisoning or "
    with pytest.raises(ConfigError, match=message):
        build_attack("own_parts:KeepOwn")


def test_unknown_names_say_that_ones_own_can_be_named():
    with pytest.raises(
        ConfigError, match=r"unknown rule 'fedavgg'; choose one of \[.*\], or module:attribute"
    ):
        build_aggregator("fedavgg")


def test_a_node_config_takes_a_rule_of_ones_own(own_parts, tmp_path):
    from p2pfl.daemon.config import parse_config

    def config(params):
        return parse_config(
            {
                "data_dir": str(tmp_path / "node"),
                "protocol": {"name": "gossip", "rounds": 3},
                "aggregation": {"name": "own_parts:KeepOwn", "params": params},
            }
        )

    aggregation = config({"factor": 0.5}).aggregation
    rule = build_aggregator(aggregation.name, **aggregation.params)
    assert type(rule).__name__ == "KeepOwn" and rule.factor == 0.5
    with pytest.raises(
        ConfigError, match=r"aggregation: aggregation 'own_parts:KeepOwn': factor must be > 0"
    ):
        config({"factor": -1})
