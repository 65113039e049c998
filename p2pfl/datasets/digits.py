"""scikit-learn's bundled digits set (8x8 images, 10 classes): real data with no download.

The data file ships inside the scikit-learn package; it is read directly, because importing
`sklearn.datasets` costs seconds (measured 4-6 s on a busy 2-core machine) in every daemon start.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """A seeded stratified train/test split, features scaled to [0, 1] as float32."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    data, target = digits_arrays()
    features = (data / 16.0).astype(np.float32)
    labels = target.astype(np.int64)
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


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(1797 x 64 pixel values 0-16, 1797 labels), from the file scikit-learn ships."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as stream:
                table = np.loadtxt(stream, delimiter=",", dtype=np.float64)
            return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sklearn_digits  # layout changed: ask scikit-learn

    bunch = sklearn_digits()
    return bunch.data, bunch.target
