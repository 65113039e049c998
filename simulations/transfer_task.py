"""The `digits_transfer` task: Bristle's transfer-learning setting (ALGORITHMS.md section 3).

Digits are split (seeded) into `pretrain_samples` held-out samples that pre-train a frozen
64 -> `features` tanh extractor (`p2pfl.transfer.pretrain_features`), `test_samples` for the shared
test set, and the rest, the pool the nodes draw from. Every sample is mapped through the extractor
once, so a node's model is only the output layer `MaskedLinear(features, 10)` (W and bias start at
zero), and that is all that travels.

Nodes get their data with `partition = "classes"`: an honest node holds `classes_per_node`
consecutive classes (the r-th honest node r, r+1, ... mod 10), `train_per_class` training and
`local_test_per_class` local test samples of each, drawn from the pool (draws of different nodes
may overlap); a Byzantine node holds as many training samples spread evenly over all classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np
import torch
from torch.utils.data import TensorDataset

from p2pfl.datasets.digits import digits_arrays
from p2pfl.errors import ConfigError
from p2pfl.transfer import MaskedLinear, pretrain_features
from simulations.task import Task

NUM_CLASSES = 10


@dataclass(frozen=True)
class TransferParams:
    """`task_params` of the digits_transfer task."""

    pretrain_samples: int = 300
    test_samples: int = 400
    features: int = 32
    pretrain_steps: int = 500
    train_per_class: int = 20
    local_test_per_class: int = 10

    def __post_init__(self) -> None:
        for name in ("pretrain_samples", "test_samples", "features", "pretrain_steps", "train_per_class"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"task_params.{name} must be an integer >= 1, got {value!r}")
        value = self.local_test_per_class
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"task_params.local_test_per_class must be an integer >= 0, got {value!r}")
        if self.pretrain_samples + self.test_samples > 1400:
            raise ConfigError("task_params: pretrain_samples + test_samples must leave a pool (<= 1400)")

    @classmethod
    def parse(cls, params: dict) -> TransferParams:
        try:
            return cls(**params)
        except TypeError as exc:
            raise ConfigError(f"task_params: {exc}") from exc


@dataclass(frozen=True)
class NodeData:
    """One node's share: training data, its classes (None: all) and local test set (None: none)."""

    train: TensorDataset
    classes: tuple[int, ...] | None
    local_test: TensorDataset | None


@dataclass(frozen=True, kw_only=True)
class TransferTask(Task):
    """A `Task` whose `train` is the pool; nodes' data come from `node_data`, not from a split of it."""

    params: TransferParams

    def node_data(self, *, rank: int | None, classes_per_node: int, rng: np.random.Generator) -> NodeData:
        """The data of the `rank`-th honest node, or of a Byzantine node (`rank` None)."""
        features, labels = self.train.tensors
        by_class = [np.flatnonzero(labels.numpy() == c) for c in range(NUM_CLASSES)]
        p = self.params
        if rank is None:
            per_class = max(1, p.train_per_class * classes_per_node // NUM_CLASSES)
            index = np.concatenate(
                [rng.choice(by_class[c], per_class, replace=False) for c in range(NUM_CLASSES)]
            )
            return NodeData(_subset(features, labels, index), None, None)
        classes = tuple((rank + j) % NUM_CLASSES for j in range(classes_per_node))
        picks = [
            rng.choice(by_class[c], p.train_per_class + p.local_test_per_class, replace=False)
            for c in classes
        ]
        train = np.concatenate([pick[: p.train_per_class] for pick in picks])
        local = np.concatenate([pick[p.train_per_class :] for pick in picks])
        local_test = _subset(features, labels, local) if len(local) else None
        return NodeData(_subset(features, labels, train), classes, local_test)


@lru_cache(maxsize=4)
def digits_transfer_task(*, seed: int, params: TransferParams) -> TransferTask:
    """Pre-train the extractor (seeded), map every sample through it, and set up pool and test set.

    Cached (the variants of a scenario share it): callers must not modify the returned tensors."""
    data, target = digits_arrays()  # not sklearn's loader: importing it cost every run 0.8 s
    inputs = torch.from_numpy((data / 16.0).astype(np.float32))
    labels = torch.from_numpy(target.astype(np.int64))
    order = np.random.default_rng(seed).permutation(len(labels))
    pretrain = order[: params.pretrain_samples]
    test = order[params.pretrain_samples : params.pretrain_samples + params.test_samples]
    pool = order[params.pretrain_samples + params.test_samples :]
    smallest = int(np.bincount(labels[pool].numpy(), minlength=NUM_CLASSES).min())
    if params.train_per_class + params.local_test_per_class > smallest:
        raise ConfigError(
            f"task_params: train_per_class + local_test_per_class must be <= {smallest} "
            "(samples of the rarest class in the pool)"
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: more threads only fight over the cores
    try:
        extractor = pretrain_features(
            inputs[pretrain], labels[pretrain], hidden=params.features, steps=params.pretrain_steps, seed=seed
        )
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        mapped = extractor(inputs)
    return TransferTask(
        train=_subset(mapped, labels, pool),
        test=_subset(mapped, labels, test),
        make_model=partial(MaskedLinear, params.features, NUM_CLASSES),
        params=params,
    )


def _subset(features: torch.Tensor, labels: torch.Tensor, index: np.ndarray) -> TensorDataset:
    index_t = torch.from_numpy(np.asarray(index, dtype=np.int64))
    return TensorDataset(features[index_t].clone(), labels[index_t].clone())
