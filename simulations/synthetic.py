"""A seeded synthetic task, generated per node, for runs larger than any bundled data set.

Digits has about 1,400 training samples: at 1,000 nodes each holds one or two. Here every node draws
its own samples from one Gaussian mixture (one component per class, means fixed by the seed), with
its own label mix from a Dirichlet(alpha) draw, so 100,000 nodes each hold real, skewed local data
and no node's data depends on how many others there are. The test set is a balanced draw from the
same mixture, shared by every node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, partial

import numpy as np
import torch
from torch.utils.data import TensorDataset

from p2pfl.errors import ConfigError
from p2pfl.models import mlp
from simulations.seeds import derive_seed
from simulations.task import ACTIVATIONS, Task

_MEANS, _NODE, _TEST = range(3)


@dataclass(frozen=True)
class GaussianMixture:
    """Class `c` draws features from N(mean_c, I); the means are N(0, separation^2 I) from `seed`."""

    features: int = 16
    classes: int = 10
    separation: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.features < 1 or self.classes < 2:
            raise ConfigError(f"synthetic task needs features >= 1 and classes >= 2, got {self}")
        if not 0 < self.separation < np.inf:
            raise ConfigError(f"synthetic separation must be > 0 and finite, got {self.separation}")

    @cached_property  # every node's data needs them: 10,000 nodes drew them 10,000 times
    def means(self) -> np.ndarray:
        rng = np.random.default_rng(derive_seed(self.seed, _MEANS))
        means = (rng.standard_normal((self.classes, self.features)) * self.separation).astype(np.float32)
        means.setflags(write=False)  # shared by every caller
        return means

    def sample(self, labels: np.ndarray, rng: np.random.Generator) -> TensorDataset:
        noise = rng.standard_normal((len(labels), self.features), dtype=np.float32)
        features = self.means[labels] + noise
        return TensorDataset(torch.from_numpy(features), torch.from_numpy(labels.astype(np.int64)))

    def node_data(self, index: int, *, samples: int, alpha: float | None) -> TensorDataset:
        """Node `index`'s data: `samples` draws, labels IID or skewed by Dirichlet(`alpha`)."""
        rng = np.random.default_rng(derive_seed(self.seed, _NODE, index))
        mix = rng.dirichlet(np.full(self.classes, alpha)) if alpha is not None else None
        labels = rng.choice(self.classes, size=samples, p=mix)
        return self.sample(labels, rng)

    def test_data(self, samples_per_class: int) -> TensorDataset:
        rng = np.random.default_rng(derive_seed(self.seed, _TEST))
        return self.sample(np.repeat(np.arange(self.classes), samples_per_class), rng)


def synthetic_task(
    *,
    seed: int = 0,
    features: int = 16,
    classes: int = 10,
    separation: float = 1.0,
    samples_per_node: int = 32,
    alpha: float | None = None,
    test_samples_per_class: int = 50,
    hidden: Sequence[int] = (32,),
    activation: str = "relu",
    xavier: bool = False,
) -> Task:
    """A `Task` whose nodes make their own data (`Task.local_data`); the model is an MLP."""
    counts = dict(
        features=features,
        classes=classes,
        samples_per_node=samples_per_node,
        test_samples_per_class=test_samples_per_class,
    )
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"synthetic {name} must be an integer, got {value!r}")
    if isinstance(separation, bool) or not isinstance(separation, int | float):
        raise ConfigError(f"synthetic separation must be a number, got {separation!r}")
    for name in ("samples_per_node", "test_samples_per_class"):
        if counts[name] < 1:
            raise ConfigError(f"synthetic {name} must be >= 1, got {counts[name]}")
    if alpha is not None and not alpha > 0:
        raise ConfigError(f"alpha must be > 0, got {alpha}")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation: unknown {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    mixture = GaussianMixture(features=features, classes=classes, separation=separation, seed=seed)
    return Task(
        train=None,
        test=mixture.test_data(test_samples_per_class),
        make_model=partial(
            mlp, (features, *hidden, classes), activation=ACTIVATIONS[activation], xavier=xavier
        ),
        local_data=partial(mixture.node_data, samples=samples_per_node, alpha=alpha),
    )
