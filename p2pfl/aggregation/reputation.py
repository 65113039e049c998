"""Reputation: remember across rounds which peers pull the model where the node's rule takes it.

A robust rule judges each round alone; an attacker that is outvoted today comes back tomorrow. Here
every peer has a score, an exponential moving average of the cosine similarity between its update
(its model minus the own one) and the accepted update (the merged model minus the own one). Peers
whose score is below `threshold` are left out of the merge but still scored, so a peer that turns
honest again climbs back above it. The scores are exposed (`peer_scores`) for the node's status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from p2pfl.aggregation.base import Aggregator, Contribution, stack
from p2pfl.aggregation.distances import number_param
from p2pfl.model_state import ModelState


class Reputation(Aggregator):
    """Wraps `inner` (any rule): ignore peers scoring below `threshold`, score everyone after merging.

    score <- decay * score + (1 - decay) * cos(w_peer - w_own, w_merged - w_own); new peers start at
    `initial`. With nothing trusted left, the own model is kept.
    """

    def __init__(
        self, inner: Aggregator, *, decay: float = 0.8, threshold: float = 0.0, initial: float = 1.0
    ) -> None:
        self.inner = inner
        self.decay = number_param("reputation", "decay", decay, 0.0, 1.0, include_high=False)
        self.threshold = number_param("reputation", "threshold", threshold, -1.0, 1.0)
        self.initial = number_param("reputation", "initial", initial, -1.0, 1.0)
        self._scores: dict[str, float] = {}

    def peer_scores(self) -> Mapping[str, float]:
        return dict(self._scores)

    def aggregate(self, own: Contribution, received: Sequence[Contribution]) -> ModelState:
        trusted = [c for c in received if self._scores.get(c.sender, self.initial) >= self.threshold]
        merged = self.inner.aggregate(own, trusted) if trusted else own.state
        if received:
            self._score(own, received, merged)
        return merged

    def _score(self, own: Contribution, received: Sequence[Contribution], merged: ModelState) -> None:
        matrix, _ = stack(received)
        updates = matrix - own.state.flat
        accepted = merged.flat - own.state.flat
        norms = torch.linalg.vector_norm(updates, dim=1) * torch.linalg.vector_norm(accepted)
        cosines = (updates @ accepted) / norms.clamp_min(torch.finfo(updates.dtype).tiny)
        for contribution, cosine in zip(received, cosines.tolist(), strict=True):  # one host copy
            old = self._scores.get(contribution.sender, self.initial)
            self._scores[contribution.sender] = self.decay * old + (1.0 - self.decay) * cosine
