"""What the emulated nodes learn: a data set and a model factory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn
from torch.utils.data import Dataset

from p2pfl.datasets import load_digits
from p2pfl.models import mlp


@dataclass(frozen=True)
class Task:
    """Training data to split across nodes, a shared test set, and how to build each node's model.

    `make_model` is called once per node; a factory that seeds its initialisation gives every node
    the same starting point, one that does not gives independent initialisations.
    """

    train: Dataset
    test: Dataset
    make_model: Callable[[], nn.Module]


def digits_task(*, seed: int = 0, hidden: int = 32) -> Task:
    """Digits (64 features, 10 classes) with an MLP 64-hidden-10 that every node initialises alike."""
    train, test = load_digits(seed=seed)
    return Task(train=train, test=test, make_model=partial(mlp, (64, hidden, 10), seed=seed))
