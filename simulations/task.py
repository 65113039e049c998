"""What the emulated nodes learn: a data set and a model factory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from torch import nn
from torch.utils.data import Dataset

from p2pfl.datasets import load_digits
from p2pfl.errors import ConfigError
from p2pfl.models import mlp


@dataclass(frozen=True)
class Task:
    """Training data to split across nodes (or made per node), a shared test set, and the model.

    `make_model(seed=...)` is called once per node and must draw its initial weights from that seed
    alone: the emulator passes one seed to every node for a shared initialisation, or a seed per
    node for independent ones.
    """

    train: Dataset | None
    test: Dataset
    make_model: Callable[..., nn.Module]
    # When set, node i's training data is `local_data(i)` (generated per node) and `train` is unused.
    local_data: Callable[[int], Dataset] | None = None

    def __post_init__(self) -> None:
        if (self.train is None) == (self.local_data is None):
            raise ConfigError("a task needs exactly one of train (split across nodes) and local_data")


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def digits_task(
    *, seed: int = 0, hidden: Sequence[int] = (32,), activation: str = "relu", xavier: bool = False
) -> Task:
    """Digits (64 features, 10 classes) with an MLP 64-hidden...-10; `seed` fixes the train/test split."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation: unknown {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    train, test = load_digits(seed=seed)
    sizes = (64, *hidden, 10)
    return Task(
        train, test, make_model=partial(mlp, sizes, activation=ACTIVATIONS[activation], xavier=xavier)
    )
