"""Label flipping: data poisoning, the attacker trains honestly on wrongly labelled data.

`LabelFlip(num_classes=C, shift=s)` maps every label `k -> (k + s) mod C` (ALGORITHMS.md, Bristle:
attackers shift every label k -> k + 1). Nothing about the model exchange changes: the attacker's
`Learner` is simply given `flip_labels(train_data, ...)` instead of its training data.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

__all__ = ["FlippedDataset", "LabelFlip", "flip_labels"]


class LabelFlip:
    """Maps labels `k -> (k + shift) mod num_classes`; `shift` must not be a multiple of `num_classes`,
    so that every label changes."""

    def __init__(self, *, num_classes: int, shift: int = 1) -> None:
        for name, value in (("num_classes", num_classes), ("shift", shift)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"LabelFlip {name} must be an integer, got {value!r}")
        if num_classes < 2:
            raise ValueError(f"LabelFlip num_classes must be >= 2, got {num_classes}")
        if shift % num_classes == 0:
            raise ValueError(
                f"LabelFlip shift must not be a multiple of num_classes={num_classes} "
                f"(it would change no label), got {shift}"
            )
        self.num_classes = num_classes
        self.shift = shift

    def __repr__(self) -> str:
        return f"LabelFlip(num_classes={self.num_classes}, shift={self.shift})"

    def __call__(self, labels: Any) -> Any:
        """Flip labels: an integer (Python or NumPy) or an integer tensor of any shape.

        The result has the input's type (and a tensor's dtype and device).
        """
        if isinstance(labels, torch.Tensor):
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"labels must lie in [0, {self.num_classes}), got a value outside")
            # In int64: `labels + shift` would wrap around in a narrow dtype (uint8 0 - 1 = 255).
            flipped = torch.remainder(labels.to(torch.int64) + self.shift, self.num_classes)
            return flipped.to(labels.dtype)
        if isinstance(labels, bool | np.bool_) or not isinstance(labels, numbers.Integral):
            raise ValueError(f"a label must be an integer or an integer tensor, got {labels!r}")
        if not 0 <= labels < self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {labels}")
        return type(labels)((int(labels) + self.shift) % self.num_classes)

    def apply(self, dataset: Dataset) -> Dataset:
        """`dataset` with every label flipped (see `flip_labels`)."""
        if isinstance(dataset, TensorDataset):
            *features, labels = dataset.tensors
            if not features:
                raise ValueError("a TensorDataset to flip needs feature tensors before the label tensor")
            return TensorDataset(*features, self(labels))
        return FlippedDataset(dataset, self)


class FlippedDataset(Dataset):
    """A view of a dataset of `(features..., label)` items whose label is flipped on access."""

    def __init__(self, dataset: Dataset, flip: LabelFlip) -> None:
        self.dataset = dataset
        self.flip = flip

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index):
        item = self.dataset[index]
        if not isinstance(item, tuple | list) or len(item) < 2:
            raise ValueError("FlippedDataset items must be (features..., label) tuples")
        *features, label = item
        return (*features, self.flip(label))


def flip_labels(dataset: Dataset, *, num_classes: int, shift: int = 1) -> Dataset:
    """A new dataset with labels `k -> (k + shift) mod num_classes`; the input is left untouched.

    A `TensorDataset` (label tensor last) becomes a `TensorDataset` sharing the feature tensors with
    a new label tensor, so the `Learner` keeps its fast path; any other dataset of
    `(features..., label)` items is wrapped in a `FlippedDataset` that flips the label on access.
    """
    return LabelFlip(num_classes=num_classes, shift=shift).apply(dataset)
