"""Attacks by name, for configs and scenario files."""

from __future__ import annotations

from collections.abc import Callable

from p2pfl.attacks.label_flip import LabelFlip
from p2pfl.attacks.model_poisoning import (
    ALIE,
    IPM,
    Dissensus,
    FreeRider,
    GaussianNoise,
    ModelPoisoning,
    Scaling,
    SignFlip,
)
from p2pfl.registry import build_named

Attack = ModelPoisoning | LabelFlip

ATTACKS: dict[str, Callable[..., Attack]] = {
    "sign_flip": SignFlip,
    "gaussian": GaussianNoise,
    "alie": ALIE,
    "ipm": IPM,
    "scaling": Scaling,
    "free_rider": FreeRider,
    "dissensus": Dissensus,
    "label_flip": LabelFlip,
}


def build_attack(name: str, **params: object) -> Attack:
    """A new instance of the attack called `name` (one per attacker node: `FreeRider` keeps state).

    `label_flip` gives a `LabelFlip` (data poisoning, applied to the training data with its `apply`);
    every other name gives a `ModelPoisoning`. `ConfigError` names the attack and what is wrong.
    """
    return build_named("attack", "attack", ATTACKS, name, params, expected=(ModelPoisoning, LabelFlip))
