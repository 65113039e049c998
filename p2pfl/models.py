"""Small reference models."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn


def mlp(
    sizes: Sequence[int],
    *,
    activation: type[nn.Module] = nn.ReLU,
    xavier: bool = False,
    seed: int | None = None,
) -> nn.Module:
    """A multi-layer perceptron with layer widths `sizes`, e.g. (64, 32, 10) for digits.

    With `seed`, the initial weights are drawn from that seed alone, so nodes that build the model
    with the same seed start from the same point. `xavier` draws weights from Xavier-normal
    (variance 2 / (fan_in + fan_out)) with zero biases, the initialisation VCA's analysis assumes,
    instead of torch's default.
    """
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least input and output sizes, got {list(sizes)}")
    if seed is None:
        return _build_mlp(sizes, activation, xavier)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_mlp(sizes, activation, xavier)


def _build_mlp(sizes: Sequence[int], activation: type[nn.Module], xavier: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(pairwise(sizes)):
        if i:
            layers.append(activation())
        linear = nn.Linear(fan_in, fan_out)
        if xavier:
            nn.init.xavier_normal_(linear.weight)
            nn.init.zeros_(linear.bias)
        layers.append(linear)
    return nn.Sequential(*layers)
