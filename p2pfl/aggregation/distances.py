"""Geometry shared by the robust rules: Gram matrices, distances, affine combinations of models.

Why one Gram matrix: every distance-based rule (Krum, Multi-Krum, Weiszfeld, centred clipping) needs
the distances between the n stacked models, or between them and a point that is itself an affine
combination of them. All of these follow from G = Y @ Y.T with Y the models minus a reference point:
one GEMM over the (n, d) matrix, after which the rules iterate on n x n numbers only. `torch.cdist`
or a Python loop over rows reads the d-sized matrix once per row or per iteration instead.

Why centre on a reference first: ||x_i||^2 + ||x_j||^2 - 2 <x_i, x_j> cancels catastrophically when
the models are close compared to their norms, which is the normal case (every node near the same
trained model). Subtracting a reference (the rules pass the node's own model) keeps the terms of the
order of the distances. The subtraction runs chunk by chunk over columns into one small buffer, so
the (n, d) matrix (1.28 GB at n = 32, d = 1e7) is never copied.

Why float64 for the n x n part: chunk products are accumulated across chunks, and the small matrix
costs nothing in float64; the d-sized work stays in the models' float32.

Also here, because every robust rule shares them: which contributions take part (`participants`)
and the checks of constructor parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from p2pfl.aggregation.base import Contribution

# Elements per column chunk of the centred Gram pass: on a CPU a few MB that stay in the shared cache
# while few enough chunks keep the thread-pool hand-offs rare (they stall when cores are busy); on a
# GPU large enough that the launches per chunk do not matter.
_CHUNK_ELEMENTS = {"cpu": 1 << 22}
_DEFAULT_CHUNK_ELEMENTS = 1 << 26


def column_chunks(rows: int, cols: int, device: torch.device, elements: int | None = None) -> Iterator[slice]:
    """Column slices covering `cols` such that `rows` x chunk stays near a device-sized budget."""
    budget = elements if elements is not None else _CHUNK_ELEMENTS.get(device.type, _DEFAULT_CHUNK_ELEMENTS)
    width = max(1, budget // max(rows, 1))
    for start in range(0, cols, width):
        yield slice(start, min(start + width, cols))


class Centred:
    """The rows of an (n, d) matrix as differences to a centre c: Gram matrices and combinations.

    With `overwrite=True` the matrix is the caller's scratch (the rules' own `stack`): it is centred in
    place, so the Gram matrix is a single GEMM and a combination is c plus one GEMV, with no buffers
    and no copy of the matrix. Otherwise the matrix is left as it is and the subtraction runs by column
    chunks into one small buffer.

    A row too far from the centre for float32 (a Byzantine model with entries beyond ~1e19, finite
    but with squares that overflow) is infinitely far: +inf on the Gram diagonal and 0 elsewhere in
    its row and column, so that it cannot turn the n x n math into NaN.
    """

    def __init__(self, matrix: torch.Tensor, center: torch.Tensor | None = None, *, overwrite: bool = False):
        if center is None:
            center = matrix[0].clone() if overwrite else matrix[0]
        self.matrix, self.center, self.overwritten = matrix, center, overwrite
        if overwrite:
            matrix.sub_(center)

    def gram(self) -> torch.Tensor:
        """(X - c)(X - c)^T, (n, n) float64."""
        matrix = self.matrix
        if self.overwritten:
            gram = (matrix @ matrix.T).double()
        else:
            n = matrix.shape[0]
            gram = torch.zeros(n, n, dtype=torch.float64, device=matrix.device)
            for chunk in self._chunks():
                gram += chunk @ chunk.T
        far = ~torch.isfinite(gram.diagonal())
        gram.masked_fill_(far.unsqueeze(0) | far.unsqueeze(1), 0.0)
        gram.diagonal().masked_fill_(far, math.inf)
        return gram

    def sq_norms(self) -> torch.Tensor:
        """||x_i - c||^2, (n,) float64; the diagonal of `gram` without the rest."""
        if self.overwritten:
            sq_norms = torch.linalg.vector_norm(self.matrix, dim=1).double().square_()
        else:
            sq_norms = torch.zeros(self.matrix.shape[0], dtype=torch.float64, device=self.matrix.device)
            for chunk in self._chunks():
                sq_norms += torch.linalg.vector_norm(chunk, dim=1).double().square_()
        return sq_norms.nan_to_num_(nan=math.inf)

    def combine(self, coeffs: torch.Tensor) -> torch.Tensor:
        """c + sum_i coeffs_i (x_i - c), a new (d,) vector: one pass over the matrix (a GEMV)."""
        weights = coeffs.to(self.matrix.dtype)
        out = weights @ self.matrix
        if self.overwritten:
            return out.add_(self.center)
        return out.addcmul_(self.center, (1.0 - coeffs.sum()).to(self.matrix.dtype))

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The models at `index` (a tensor of row indices), (k, d)."""
        picked = self.matrix.index_select(0, index)
        return picked.add_(self.center) if self.overwritten else picked

    def _chunks(self) -> Iterator[torch.Tensor]:
        matrix, center = self.matrix, self.center
        n, d = matrix.shape
        width = next(column_chunks(n, d, matrix.device), slice(0, 0)).stop
        buffer = torch.empty(n, width, dtype=matrix.dtype, device=matrix.device)
        for cols in column_chunks(n, d, matrix.device):
            chunk = buffer[:, : cols.stop - cols.start]
            torch.sub(matrix[:, cols], center[cols], out=chunk)
            yield chunk


def centered_gram(
    matrix: torch.Tensor, center: torch.Tensor | None = None, *, diagonal_only: bool = False
) -> torch.Tensor:
    """(X - c)(X - c)^T as an (n, n) float64 matrix, or only its diagonal; `matrix` is left as it is.

    `center` (d,) defaults to the first row. The result does not depend on the choice mathematically;
    numerically a center close to the models (the node's own model) is best. Rows too far to measure
    in float32 are infinitely far (see `Centred`).
    """
    centred = Centred(matrix, center)
    return centred.sq_norms() if diagonal_only else centred.gram()


def pairwise_sq_distances(matrix: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances between the rows of `matrix`, (n, n) float64, from one Gram matrix.

    Negative values from rounding are clamped to 0 and the diagonal is exactly 0; a row too far to
    measure in float32 (see `Centred`) is at +inf from the others.
    """
    return sq_distances_from_gram(centered_gram(matrix, center))


def sq_distances_from_gram(gram: torch.Tensor) -> torch.Tensor:
    norms = gram.diagonal()
    distances = (norms.unsqueeze(0) + norms.unsqueeze(1) - 2.0 * gram).clamp_min_(0.0)
    return distances.fill_diagonal_(0.0)


def split_far(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gram matrix of `Centred.gram` with the rows too far to measure zeroed, and their mask."""
    far = torch.isinf(gram.diagonal())
    return gram.masked_fill(far.unsqueeze(0) | far.unsqueeze(1), 0.0), far


def sq_distances_to_combination(gram: torch.Tensor, far: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """||x_i - z||^2 for z = c + sum_j coeffs_j (x_j - c), from the Gram matrix centred on c; (n,).

    `gram` and `far` come from `split_far`; far rows are at +inf and must have coefficient 0.
    """
    gram_coeffs = gram @ coeffs
    distances = (gram.diagonal() - 2.0 * gram_coeffs + coeffs @ gram_coeffs).clamp_min_(0.0)
    return distances.masked_fill_(far, math.inf)


def clip_factors(distances: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """min(1, tau / distance) per row: 1 within tau (also 0 within 0), 0 at an infinite distance."""
    ratio = tau / distances.clamp_min(torch.finfo(distances.dtype).tiny)
    return torch.where(distances <= tau, torch.ones_like(distances), ratio)


# --- shared by the robust rules ---------------------------------------------------------------------


def participants(
    own: Contribution, received: Sequence[Contribution], include_own: bool
) -> list[Contribution]:
    """The contributions a robust rule looks at: the own model (when included), then the rest by sender.

    Weights are claims of the senders, so robust rules do not let them buy influence; a weight of
    exactly 0 is how a caller says a model does not count (the MoDeST aggregator passes its own model
    so), and such a model takes no part. Negative weights are refused as in FedAvg. The order by
    sender makes the result independent of arrival order even where a rule has exact ties (Krum's
    scores of two mutual nearest neighbours with one neighbour counted) and bit for bit elsewhere.
    """
    if any(c.weight < 0 for c in (own, *received)):
        raise ValueError("aggregation weights must be non-negative")
    head = [own] if include_own and own.weight > 0 else []
    return head + sorted((c for c in received if c.weight > 0), key=lambda c: c.sender)


def int_param(rule: str, name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{rule} {name} must be an integer >= {minimum}, got {value!r}")
    return value


def positive_param(rule: str, name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{rule} {name} must be a finite number > 0, got {value!r}")
    return float(value)


def number_param(
    rule: str, name: str, value: object, low: float, high: float, *, include_high: bool = True
) -> float:
    """`value` as a float if it is a number in [low, high] (or [low, high) with `include_high=False`).

    Booleans and strings are refused rather than compared or converted: `bool("false")` is True, and a
    string would fail the comparison with a TypeError that does not name the parameter.
    """
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not (low <= value <= high if include_high else low <= value < high):  # NaN too
        interval = f"[{low:g}, {high:g}{']' if include_high else ')'}"
        raise ValueError(f"{rule} {name} must be a number in {interval}, got {value!r}")
    return float(value)


def bool_param(rule: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{rule} {name} must be true or false, got {value!r}")
    return value
