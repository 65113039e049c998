"""Clipping rules: centred clipping (Karimireddy, He & Jaggi 2021) and ClippedGossip (He, Karimireddy &
Jaggi 2022).

Clipping bounds what any single model can do to the result to a radius tau around a trusted point,
whatever it sends, while honest models within tau pass unchanged, so it costs little accuracy when
the honest models agree.

Every iterate is the centre plus a combination of the models' differences to it, so the distances the
iterations need follow from one Gram matrix centred on that point (`distances.py`), the iterations
run on n coefficients, and one GEMV builds the result.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from p2pfl.aggregation.base import Aggregator, Contribution, stack
from p2pfl.aggregation.distances import (
    Centred,
    bool_param,
    clip_factors,
    int_param,
    participants,
    positive_param,
    split_far,
    sq_distances_to_combination,
)
from p2pfl.model_state import Layout, ModelState

__all__ = ["CenteredClipping", "ClippedGossip", "centered_clipping", "clipped_gossip"]


def centered_clipping(
    matrix: torch.Tensor, center: torch.Tensor, *, tau: float, iterations: int = 1, overwrite: bool = False
) -> torch.Tensor:
    """v <- v + mean_i clip(x_i - v, tau), `iterations` times from v = `center`; (d,).

    `overwrite` as in `Centred`.
    """
    n = matrix.shape[0]
    centred = Centred(matrix, center, overwrite=overwrite)
    if iterations == 1:  # the distances to the centre itself: the Gram diagonal suffices
        coeffs = clip_factors(centred.sq_norms().sqrt_(), tau) / n
    else:
        gram, far = split_far(centred.gram())
        coeffs = torch.zeros(n, dtype=gram.dtype, device=gram.device)
        for _ in range(iterations):
            factors = clip_factors(sq_distances_to_combination(gram, far, coeffs).sqrt_(), tau)
            coeffs = coeffs + (factors - coeffs * factors.sum()) / n
    return centred.combine(coeffs)


def clipped_gossip(
    matrix: torch.Tensor,
    center: torch.Tensor,
    weights: torch.Tensor,
    *,
    tau: float | None = None,
    k: int | None = None,
    overwrite: bool = False,
) -> torch.Tensor:
    """center + sum_j weights_j clip(x_j - center, radius); (d,).

    The radius is `tau`, or else the distance from the centre to the k-th closest row (k capped at n).
    `overwrite` as in `Centred`.
    """
    centred = Centred(matrix, center, overwrite=overwrite)
    distances = centred.sq_norms().sqrt_()
    if tau is not None:
        radius: torch.Tensor | float = tau
    else:
        radius = torch.kthvalue(distances, min(k, distances.shape[0])).values
    return centred.combine(weights.to(distances.dtype) * clip_factors(distances, radius))


class CenteredClipping(Aggregator):
    """Centred clipping: from a trusted centre, move by the mean of the clipped differences.

    `center="own"` (default) starts from the own model; `center="previous"` from the result of this
    aggregator's previous call (the paper's choice, which carries robustness across rounds), falling
    back to the own model on the first call or when the model layout or device changed. `iterations`
    clipping steps (the paper finds one enough when the centre is good). `tau` is in parameter units.

    `include_own=True` (default, decentralised use) counts the own model among the n averaged
    differences; `include_own=False` averages the received models only. Weights are not used (a
    sender could claim any weight); a model of weight 0 takes no part.
    """

    def __init__(
        self, *, tau: float, iterations: int = 1, center: str = "own", include_own: bool = True
    ) -> None:
        self.tau = positive_param("centered_clipping", "tau", tau)
        self.iterations = int_param("centered_clipping", "iterations", iterations, 1)
        if center not in ("own", "previous"):
            raise ValueError(f"centered_clipping center must be 'own' or 'previous', got {center!r}")
        self.center = center
        self.include_own = bool_param("centered_clipping", "include_own", include_own)
        self._previous: tuple[Layout, torch.Tensor] | None = None

    def aggregate(self, own: Contribution, received: Sequence[Contribution]) -> ModelState:
        matrix, _ = stack(participants(own, received, self.include_own))
        center = own.state.flat
        previous = self._previous
        if (
            self.center == "previous"
            and previous is not None
            and previous[0] == own.state.layout
            and previous[1].device == center.device
        ):
            center = previous[1]
        merged = centered_clipping(matrix, center, tau=self.tau, iterations=self.iterations, overwrite=True)
        if self.center == "previous":
            self._previous = (own.state.layout, merged.clone())  # the caller may modify what it gets
        return own.state.with_flat(merged)


class ClippedGossip(Aggregator):
    """Self-centred clipping for gossip graphs (ClippedGossip, He, Karimireddy & Jaggi 2022).

    x_own <- x_own + sum_j w_j clip(x_j - x_own, tau) over the received models, where w_j are the
    contributions' weights normalised over the own model and the received ones (the gossip mixing
    weights when the caller passes them; clip(0) = 0 makes the own term vanish). The own model is the
    centre, which a node can trust, so there is no `include_own`: its weight only sets how much of
    the step the neighbours get. A neighbour moves the result by at most w_j * tau, whatever it sends.

    Give exactly one of `tau` (a fixed radius in parameter units) or `k`: the radius is then the
    distance to the k-th closest received model (capped at their number), so the neighbours beyond
    the k closest are clipped (the adaptive radius of the paper; choose k = neighbours minus the
    Byzantine neighbours to tolerate). With nothing received the own model is returned unchanged.
    """

    def __init__(self, *, tau: float | None = None, k: int | None = None) -> None:
        if (tau is None) == (k is None):
            raise ValueError("clipped_gossip: give exactly one of tau= (fixed) or k= (adaptive)")
        self.tau = None if tau is None else positive_param("clipped_gossip", "tau", tau)
        self.k = None if k is None else int_param("clipped_gossip", "k", k, 1)

    def aggregate(self, own: Contribution, received: Sequence[Contribution]) -> ModelState:
        neighbours = participants(own, received, include_own=False)
        if not neighbours:
            return own.state.with_flat(own.state.flat.clone())
        total = own.weight + sum(c.weight for c in neighbours)
        matrix, weights = stack(neighbours)
        merged = clipped_gossip(
            matrix, own.state.flat, weights / total, tau=self.tau, k=self.k, overwrite=True
        )
        return own.state.with_flat(merged)
