"""The learner a daemon trains, built from its config: the digits task with this node's shard.

Training uses `PlainSGD` rather than `torch.optim.SGD`: the same update (no momentum, no weight decay),
but building a `torch.optim` optimizer imports `torch._dynamo` on first use, which costs 2-5 s of CPU
at every daemon start on a 2-core machine (measured), far more than the whole digits task.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from p2pfl.daemon.config import NodeConfig
from p2pfl.datasets import dirichlet_split, iid_split, labels_of, load_digits, take
from p2pfl.device import choose_device
from p2pfl.errors import ConfigError
from p2pfl.learner import Learner
from p2pfl.models import mlp

__all__ = ["build_learner"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}
_DIGITS_FEATURES, _DIGITS_CLASSES = 64, 10


def build_learner(config: NodeConfig) -> Learner:
    """Digits split by `task.seed`; this node trains on shard `task.shard.index` and tests on the
    whole test set. Every node computes the same split from the same settings, so shards are disjoint
    without any coordination."""
    task, shard = config.task, config.task.shard
    # Values the config schema accepts but this machine or data set cannot honour (more shards than
    # samples, an alpha too small for every shard to get a sample, a GPU that is not there) are
    # config errors all the same, named by field rather than raised from deep inside.
    try:
        device = choose_device(config.training.device)
    except RuntimeError as exc:
        raise ConfigError(f"training.device: {exc}") from exc
    train, test = load_digits(test_fraction=task.test_fraction, seed=task.seed)
    if not len(train) or not len(test):  # a fraction so close to 0 or 1 that it rounds a side to empty
        raise ConfigError(
            f"task.test_fraction: {task.test_fraction} leaves {len(train)} training and {len(test)} test"
            " samples; each needs at least one"
        )
    try:
        if shard.partition == "iid":
            parts = iid_split(len(train), shard.of, seed=shard.seed)
        else:
            parts = dirichlet_split(labels_of(train), shard.of, alpha=shard.alpha, seed=shard.seed)
    except ValueError as exc:
        raise ConfigError(f"task.shard: {exc}") from exc
    model = mlp(
        (_DIGITS_FEATURES, *config.model.hidden, _DIGITS_CLASSES),
        activation=_ACTIVATIONS[config.model.activation],
        xavier=config.model.xavier,
        seed=config.model.init_seed,
    )
    return Learner(
        model,
        take(train, parts[shard.index]),
        test,
        batch_size=config.training.batch_size,
        optimizer=lambda params: PlainSGD(params, lr=config.training.lr),
        device=device,
        seed=config.training_seed,
    )


class PlainSGD:
    """``p -= lr * p.grad``: `torch.optim.SGD` with default options, without importing torch._dynamo."""

    def __init__(self, params: Iterable[nn.Parameter], *, lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.params = [p for p in params if p.requires_grad]
        self.lr = lr

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-self.lr)
