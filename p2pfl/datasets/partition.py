"""Splitting one data set across nodes: IID or label-skewed (Dirichlet)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset


def iid_split(num_samples: int, num_parts: int, *, seed: int) -> list[np.ndarray]:
    """Shuffle indices and deal them into `num_parts` parts whose sizes differ by at most one."""
    _check_parts(num_samples, num_parts)
    order = np.random.default_rng(seed).permutation(num_samples)
    return [np.sort(part) for part in np.array_split(order, num_parts)]


def dirichlet_split(labels: np.ndarray, num_parts: int, *, alpha: float, seed: int) -> list[np.ndarray]:
    """Label skew: each class is divided among parts in proportions drawn from Dirichlet(alpha).

    Smaller `alpha` means more skew. Every part gets at least one sample: proportions are redrawn
    (same seeded stream) until that holds, as in the usual reference implementations.
    """
    labels = np.asarray(labels)
    _check_parts(len(labels), num_parts)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_parts)]
        for label in classes:
            members = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet(np.full(num_parts, alpha))) * len(members)).astype(int)[:-1]
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(part) for part in parts) > 0:
            return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]
    raise ValueError(
        f"could not give each of {num_parts} parts a sample with alpha={alpha};"
        " use a larger alpha or fewer parts"
    )


def labels_of(dataset: Dataset) -> np.ndarray:
    """The label of every sample: read directly from a `TensorDataset`, else by iterating."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].cpu().numpy()
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])


def take(dataset: Dataset, indices: np.ndarray) -> Dataset:
    """The samples at `indices`; a `TensorDataset` stays one (sliced tensors), others become a Subset."""
    if isinstance(dataset, TensorDataset):
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return TensorDataset(*(t[index] for t in dataset.tensors))
    return Subset(dataset, np.asarray(indices).tolist())


def _check_parts(num_samples: int, num_parts: int) -> None:
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    if num_samples < num_parts:
        raise ValueError(f"cannot split {num_samples} samples into {num_parts} non-empty parts")
