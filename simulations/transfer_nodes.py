"""digits_transfer, Bristle's setting: what each emulated node trains on and how it merges.

Kept out of the emulator's run loop: honest nodes train only the output rows of their own classes
(`MaskedLinear.train_only`) and keep their bias local whatever the rule; with aggregation "bristle"
each builds its Bristle on its own local test set; Byzantine nodes train every class on data of all
classes and never merge (`KeepOwn`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from p2pfl.aggregation.base import Aggregator, Contribution
from p2pfl.aggregation.registry import build_aggregator
from p2pfl.model_state import ModelState
from p2pfl.transfer import KeepLocal, MaskedLinear
from simulations.config import EmulationConfig, make_bristle
from simulations.transfer_task import TransferTask

__all__ = ["KeepOwn", "transfer_node"]


def transfer_node(
    task: TransferTask,
    config: EmulationConfig,
    model: MaskedLinear,
    *,
    rank: int | None,
    data_seed: int,
    aggregation_seed: int,
) -> tuple[Dataset, Aggregator]:
    """The training data and aggregator of the honest node of `rank` (None: a Byzantine node); the
    model is told which classes it trains."""
    rng = np.random.default_rng(data_seed)
    data = task.node_data(rank=rank, classes_per_node=config.classes_per_node, rng=rng)
    if rank is None:
        return data.train, KeepOwn()
    model.train_only(data.classes)
    if config.aggregation == "bristle":
        assert data.local_test is not None and data.classes is not None
        features, labels = data.local_test.tensors
        return data.train, make_bristle(config, features, labels, data.classes, seed=aggregation_seed)
    rule = build_aggregator(config.aggregation, **config.aggregation_params)
    return data.train, KeepLocal(rule, ("bias",))


class KeepOwn(Aggregator):
    """Merges nothing: a digits_transfer Byzantine node keeps its own model."""

    def aggregate(self, own: Contribution, received: Sequence[Contribution]) -> ModelState:
        return own.state
