"""scikit-learn's bundled digits set (8x8 images, 10 classes): real data with no download."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits as _load_digits
from torch.utils.data import TensorDataset


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """A seeded stratified train/test split, features scaled to [0, 1] as float32."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = _load_digits()
    features = (bunch.data / 16.0).astype(np.float32)
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_index = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test_index.extend(members[: round(len(members) * test_fraction)])
    test_mask = np.zeros(len(labels), dtype=bool)
    test_mask[test_index] = True

    def subset(mask: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(features[mask]), torch.from_numpy(labels[mask]))

    return subset(~test_mask), subset(test_mask)
