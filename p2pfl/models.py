"""Small reference models."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn


def mlp(sizes: Sequence[int], *, activation: type[nn.Module] = nn.ReLU, seed: int | None = None) -> nn.Module:
    """A multi-layer perceptron with layer widths `sizes`, e.g. (64, 32, 10) for digits.

    With `seed`, the initial weights are drawn from that seed alone, so nodes that build the model
    with the same seed start from the same point.
    """
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least input and output sizes, got {list(sizes)}")
    if seed is None:
        return _build_mlp(sizes, activation)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_mlp(sizes, activation)


def _build_mlp(sizes: Sequence[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(pairwise(sizes)):
        if i:
            layers.append(activation())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)
