"""A task of one's own for scenario files: `task = "moons:moons_task"`.

A task is training data (split across the nodes by the scenario's `partition`, or made per node),
a shared test set, and a function that makes a node's initial model from a seed. The emulator calls
the factory as `moons_task(seed=<the run's seed>, **task_params)`; it must draw everything random
from that seed. Here: scikit-learn's two interleaving half-moons, made in memory (no download), and
a small MLP.

    p2pfl sim run examples/custom_task/compare.toml
"""

from __future__ import annotations

from functools import partial

import torch
from sklearn.datasets import make_moons
from torch import nn
from torch.utils.data import TensorDataset

from simulations import Task


def moons_task(*, seed: int, samples: int = 2000, noise: float = 0.2, hidden: int = 16) -> Task:
    """`samples` points (a fifth of them the test set) with Gaussian `noise`; an MLP 2-hidden-2."""
    if samples < 10 or not noise >= 0:
        raise ValueError(f"moons need samples >= 10 and noise >= 0, got {samples} and {noise}")
    points, labels = make_moons(n_samples=samples, noise=noise, random_state=seed)
    features = torch.tensor(points, dtype=torch.float32)
    targets = torch.tensor(labels, dtype=torch.int64)
    test = samples // 5
    return Task(
        train=TensorDataset(features[test:], targets[test:]),
        test=TensorDataset(features[:test], targets[:test]),
        make_model=partial(_mlp, hidden),
    )


def _mlp(hidden: int, *, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))
