"""Geometric median by smoothed Weiszfeld iterations (RFA, Pillutla, Kakade & Harchaoui 2022).

The geometric median (the point minimising the sum of Euclidean distances to the models) has
breakdown point 1/2 in the whole vector, not per coordinate, and it does not need f.

Every Weiszfeld iterate is a convex combination z = sum_i a_i x_i of the models, so its distances to
them follow from the Gram matrix: ||x_i - z||^2 = G_ii - 2 (G a)_i + a^T G a. The iterations therefore
update the n coefficients `a` on n x n numbers, after one Gram pass over the matrix, and one GEMV
builds the result, instead of a pass over all n x d numbers per iteration. There is no early stop:
testing convergence would synchronise with the device every iteration, and an iteration costs
microseconds.
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
    positive_param,
    split_far,
    sq_distances_to_combination,
)
from p2pfl.model_state import ModelState

__all__ = ["GeometricMedian", "geometric_median", "weiszfeld_coefficients"]


def weiszfeld_coefficients(gram: torch.Tensor, *, iterations: int, eps: float) -> torch.Tensor:
    """Coefficients (n,), summing to 1, of the smoothed geometric median of the Gram matrix's points.

    Starts at the mean; each step weights every point by 1 / max(eps, distance to the iterate). Points
    too far to measure (see `centered_gram`) get weight 0 from the start; were all of them so far,
    the coefficients would all be 0, i.e. the centre of the Gram matrix.
    """
    gram, far = split_far(gram)
    coeffs = (~far).to(gram.dtype)
    coeffs /= coeffs.sum().clamp_min(1.0)
    for _ in range(iterations):
        distances = sq_distances_to_combination(gram, far, coeffs).sqrt_()
        inverse = distances.clamp_min_(eps).reciprocal_()
        coeffs = inverse / inverse.sum().clamp_min(torch.finfo(inverse.dtype).tiny)
    return coeffs


def geometric_median(
    matrix: torch.Tensor,
    center: torch.Tensor | None = None,
    *,
    iterations: int = 100,
    eps: float = 1e-6,
    overwrite: bool = False,
) -> torch.Tensor:
    """The smoothed geometric median of the rows of `matrix`, (d,); `center`, `overwrite` as in `Centred`."""
    centred = Centred(matrix, center, overwrite=overwrite)
    return centred.combine(weiszfeld_coefficients(centred.gram(), iterations=iterations, eps=eps))


class GeometricMedian(Aggregator):
    """Smoothed geometric median of the participating models.

    `iterations` Weiszfeld steps from the mean; `eps` is the smoothing: distances below it count as
    `eps`, so an iterate on top of a model does not divide by zero (in the units of the parameters;
    the default is far below the distance between two trained models). The own model is the reference
    for the distances; `include_own=True` (default, decentralised use) lets it take part,
    `include_own=False` merges only the received models. Weights are not used (RFA weights by data
    size, but here a sender could claim any size); a model of weight 0 takes no part.
    """

    def __init__(self, *, iterations: int = 100, eps: float = 1e-6, include_own: bool = True) -> None:
        self.iterations = int_param("geometric_median", "iterations", iterations, 1)
        self.eps = positive_param("geometric_median", "eps", eps)
        self.include_own = bool_param("geometric_median", "include_own", include_own)

    def aggregate(self, own: Contribution, received: Sequence[Contribution]) -> ModelState:
        matrix, _ = stack(participants(own, received, self.include_own))
        merged = geometric_median(
            matrix, own.state.flat, iterations=self.iterations, eps=self.eps, overwrite=True
        )
        return own.state.with_flat(merged)
