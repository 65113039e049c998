"""Krum and Multi-Krum (Blanchard et al. 2017).

A model's score is the sum of squared distances to its n - f - 2 nearest neighbours: an honest model
sits in the honest cluster, a Byzantine one far enough to matter is far from most of it. All
distances come from one centred Gram matrix (`distances.py`), and the scoring and choice run on the
device on n x n numbers; only `select`, which must hand back Python objects, moves the chosen indices
to the host.

Both also implement the `Selector` protocol of `vca.py`, so `VCA(selection=MultiKrum(f=...))` filters
first and then merges with variance correction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from p2pfl.aggregation.base import Aggregator, Contribution, stack
from p2pfl.aggregation.distances import (
    Centred,
    bool_param,
    int_param,
    participants,
    sq_distances_from_gram,
)
from p2pfl.model_state import ModelState

__all__ = ["Krum", "MultiKrum", "krum", "krum_scores", "multi_krum", "multi_krum_choice"]


def krum_scores(sq_distances: torch.Tensor, f: int) -> torch.Tensor:
    """Each model's sum of squared distances to its n - f - 2 nearest others, (n,).

    The neighbour count is kept within [1, n - 1]: with n <= f + 2 the guarantee of Krum is gone
    anyway, and scoring by the nearest neighbour still prefers models inside a cluster.
    """
    n = sq_distances.shape[0]
    if n == 1:
        return sq_distances.new_zeros(1)
    neighbours = min(max(n - f - 2, 1), n - 1)
    others = sq_distances.clone().fill_diagonal_(float("inf"))
    return torch.topk(others, neighbours, dim=1, largest=False, sorted=False).values.sum(dim=1)


def multi_krum_choice(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the `m` lowest scores (all of them if fewer), on the scores' device."""
    return torch.topk(scores, min(m, scores.shape[0]), largest=False, sorted=False).indices


def multi_krum(
    matrix: torch.Tensor,
    f: int,
    m: int | None = None,
    center: torch.Tensor | None = None,
    *,
    overwrite: bool = False,
) -> torch.Tensor:
    """The mean of the `m` rows (default n - f) with the lowest Krum scores, (d,).

    `center` and `overwrite` as in `Centred`.
    """
    centred = Centred(matrix, center, overwrite=overwrite)
    n = matrix.shape[0]
    chosen = multi_krum_choice(
        krum_scores(sq_distances_from_gram(centred.gram()), f), max(n - f, 1) if m is None else m
    )
    coeffs = torch.zeros(n, dtype=torch.float64, device=matrix.device)
    return centred.combine(coeffs.index_fill_(0, chosen, 1.0 / chosen.numel()))


def krum(
    matrix: torch.Tensor, f: int, center: torch.Tensor | None = None, *, overwrite: bool = False
) -> torch.Tensor:
    """The row with the lowest Krum score, (d,); `center` and `overwrite` as in `Centred`."""
    centred = Centred(matrix, center, overwrite=overwrite)
    scores = krum_scores(sq_distances_from_gram(centred.gram()), f)
    return centred.rows(multi_krum_choice(scores, 1)).squeeze(0)


class MultiKrum(Aggregator):
    """Mean of the `m` models with the lowest Krum scores; `m=1` is Krum. Default m = n - f.

    `f` is the number of Byzantine models to tolerate; the guarantee needs n > 2f + 2 participants,
    and with fewer the rule still runs (see `krum_scores`). The own model is always the reference
    for the distances (it is trusted, and close to the honest ones); with `include_own=True`
    (default, the decentralised use) it is also scored, votes as a neighbour and may be chosen; with
    `include_own=False` only the received models are (a federated server's view). The chosen models
    are averaged without their weights, which are claims of their senders; a model of weight 0 takes
    no part.

    As a selector (`select`), the own model (when included) only votes: the caller merges it anyway,
    so the choice is among the received models, `m` of them (default: received - f, at least 1).
    """

    name = "multi_krum"

    def __init__(self, *, f: int, m: int | None = None, include_own: bool = True) -> None:
        self.f = int_param(self.name, "f", f, 0)
        self.m = None if m is None else int_param(self.name, "m", m, 1)
        self.include_own = bool_param(self.name, "include_own", include_own)

    def aggregate(self, own: Contribution, received: Sequence[Contribution]) -> ModelState:
        matrix, _ = stack(participants(own, received, self.include_own))
        return own.state.with_flat(multi_krum(matrix, self.f, self.m, own.state.flat, overwrite=True))

    def select(self, own: Contribution, received: Sequence[Contribution]) -> list[Contribution]:
        voters = participants(own, received, self.include_own)
        candidates = voters[1:] if voters and voters[0] is own else voters
        if not candidates:
            return []
        matrix, _ = stack(voters)
        gram = Centred(matrix, own.state.flat, overwrite=True).gram()
        scores = krum_scores(sq_distances_from_gram(gram), self.f)
        offset = len(voters) - len(candidates)
        default = max(len(candidates) - self.f, 1)
        chosen = multi_krum_choice(scores[offset:], self.m if self.m is not None else default)
        picked = {id(candidates[i]) for i in chosen.tolist()}  # the one host transfer: a few indices
        return [c for c in received if id(c) in picked]


class Krum(MultiKrum):
    """The single model with the lowest Krum score (Blanchard et al. 2017).

    Participation, reference and weights as in `MultiKrum`; as a selector it keeps one received model.
    """

    name = "krum"

    def __init__(self, *, f: int, include_own: bool = True) -> None:
        super().__init__(f=f, m=1, include_own=include_own)

    def aggregate(self, own: Contribution, received: Sequence[Contribution]) -> ModelState:
        matrix, _ = stack(participants(own, received, self.include_own))
        return own.state.with_flat(krum(matrix, self.f, own.state.flat, overwrite=True))
