"""Byzantine attacks for tests and emulation (ALGORITHMS.md section 4).

Model poisoning (`ModelPoisoning.craft`: what a Byzantine node sends instead of its honest model),
label flipping (data poisoning), an attack registry for configs, and `choose_byzantine` to pick the
attacking nodes of an emulation.
"""

from p2pfl.attacks.label_flip import FlippedDataset, LabelFlip, flip_labels
from p2pfl.attacks.model_poisoning import (
    ALIE,
    IPM,
    Dissensus,
    FreeRider,
    GaussianNoise,
    ModelPoisoning,
    Scaling,
    SignFlip,
    alie_z_max,
)
from p2pfl.attacks.registry import ATTACKS, Attack, build_attack
from p2pfl.attacks.selection import choose_byzantine

__all__ = [
    "ALIE",
    "ATTACKS",
    "IPM",
    "Attack",
    "Dissensus",
    "FlippedDataset",
    "FreeRider",
    "GaussianNoise",
    "LabelFlip",
    "ModelPoisoning",
    "Scaling",
    "SignFlip",
    "alie_z_max",
    "build_attack",
    "choose_byzantine",
    "flip_labels",
]
