"""VCA: variance-corrected averaging (ALGORITHMS.md section 2).

Averaging m models that were initialised independently divides the variance of each weight tensor by
about m, below what its initialisation chose, and decentralised learning then stalls. VCA merges as
usual and then rescales every weight tensor around its own mean so that its variance returns to the
(weighted) mean of the inputs' variances.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from p2pfl.aggregation.base import Aggregator, Contribution, stack
from p2pfl.aggregation.distances import bool_param, number_param
from p2pfl.model_state import Layout, ModelState, TensorSpec

_RUNNING_STATS = ("running_mean", "running_var")


@runtime_checkable
class Selector(Protocol):
    """Picks the received models worth merging (e.g. Krum, Multi-Krum) before VCA merges them."""

    def select(self, own: Contribution, received: Sequence[Contribution]) -> list[Contribution]: ...


class VCA(Aggregator):
    """Variance-corrected averaging.

    With self weight `c`, received weights `p_k` (`Contribution.weight`, normalised over the received
    models; the own model's weight is not used) and for every corrected tensor `l`::

        merged = c * w_self + (1 - c) * sum_k p_k * w_k
        target = c * Var(w_self_l) + (1 - c) * sum_k p_k * Var(w_k_l)
        mu     = mean(merged_l)
        factor = sqrt((target + eps) / (Var(merged_l) + eps))
        factor = 1 + ratio * (factor - 1)
        out_l  = mu + (merged_l - mu) * factor

    `Var` is the population (biased, divide-by-n) variance over all entries of the tensor, for the
    inputs and the merge alike. The mean of every tensor is kept; with `eps = 0` its variance becomes
    `target` exactly, with `eps > 0` it becomes `Var(merged) * (target + eps) / (Var(merged) + eps)`,
    i.e. `target` up to a deviation of order `eps`. Where `Var(merged) + eps` is zero (a constant
    merged tensor with `eps = 0`) there is nothing to rescale and the tensor is left as merged.

    Which tensors are corrected (decided once per layout from names and shapes):

    * tensors with two or more dimensions and more than one element (linear, convolution, embedding,
      attention projection weights);
    * with `correct_biases=True` also the 1-D biases of such layers: a 1-D tensor whose last name
      component contains ``bias`` (``0.bias``, ``in_proj_bias``, ``bias_ih_l0``) and that shares its
      module prefix (the name up to the last dot) with a corrected tensor of two or more dimensions;
    * never: scalars and one-element tensors, names ending in ``running_mean``/``running_var``
      (BatchNorm statistics), and any other 1-D tensor, in particular the affine weight and bias of
      BatchNorm/LayerNorm (their prefix has no tensor of two or more dimensions). Non-float buffers
      such as ``num_batches_tracked`` are not in the flat vector at all and are kept from the own model.

    Tensors that are not corrected get the plain merged value, bit for bit.

    `selection`, when given, is applied first ("filter first, then merge"): its `select(own, received)`
    result replaces `received`. When nothing is left to merge, the own model is returned unchanged.
    `ratio = 0` gives the plain merge; `self_weight = 0` leaves the own model out of merge and target.
    """

    def __init__(
        self,
        *,
        self_weight: float = 0.5,
        ratio: float = 1.0,
        eps: float = 1e-4,
        correct_biases: bool = False,
        selection: Selector | None = None,
    ) -> None:
        if selection is not None and not callable(getattr(selection, "select", None)):
            raise TypeError("VCA selection must have a select(own, received) method")
        self.self_weight = number_param("vca", "self_weight", self_weight, 0.0, 1.0)
        self.ratio = number_param("vca", "ratio", ratio, 0.0, 1.0)
        self.eps = number_param("vca", "eps", eps, 0.0, math.inf, include_high=False)
        self.correct_biases = bool_param("vca", "correct_biases", correct_biases)
        self.selection = selection
        self._last_plan: tuple[Layout, torch.device, _Plan] | None = None

    def aggregate(self, own: Contribution, received: Sequence[Contribution]) -> ModelState:
        if self.selection is not None:
            received = self.selection.select(own, received)
        received = list(received)
        if not received:
            return own.state.with_flat(own.state.flat.clone())
        if any(c.weight < 0 for c in received) or sum(c.weight for c in received) <= 0:
            raise ValueError("VCA weights of received models must be non-negative with a positive sum")

        matrix, weights = stack([own, *received])  # (m + 1, d); row 0 is the own model
        coeffs = weights.clone()
        coeffs[0] = self.self_weight
        coeffs[1:] *= (1.0 - self.self_weight) / weights[1:].sum()
        merged = coeffs @ matrix

        plan = self._plan(own.state.layout, merged.device)
        _, input_var = _segment_stats(matrix, plan, keep_centred=False)
        centred, merged_var = _segment_stats(merged.unsqueeze(0), plan, keep_centred=True)
        target = coeffs @ input_var
        denominator = merged_var[0] + self.eps
        factor = torch.sqrt((target + self.eps) / denominator.clamp_min(torch.finfo(denominator.dtype).tiny))
        scale_minus_one = torch.where(
            plan.corrected & (denominator > 0), self.ratio * (factor - 1.0), torch.zeros_like(factor)
        )
        # out = mu + (merged - mu) * (1 + s) = merged + (merged - mu) * s: exact where s == 0.
        out = merged + centred[0] * scale_minus_one.index_select(0, plan.segment)
        return own.state.with_flat(out)

    def _plan(self, layout: Layout, device: torch.device) -> _Plan:
        last = self._last_plan
        if last is not None and last[0] is layout and last[1] == device:
            return last[2]
        plan = _plan_for(layout, self.correct_biases, device)
        self._last_plan = (layout, device, plan)
        return plan


class _Plan:
    """Per-layout segment data: tensor index of every flat entry, entries per tensor, which to correct."""

    __slots__ = ("corrected", "counts", "segment")

    def __init__(self, segment: torch.Tensor, counts: torch.Tensor, corrected: torch.Tensor) -> None:
        self.segment = segment  # (d,) int64: index of the tensor each flat entry belongs to
        self.counts = counts  # (n,) float32: entries per tensor, at least 1
        self.corrected = corrected  # (n,) bool


@functools.lru_cache(maxsize=8)
def _plan_for(layout: Layout, correct_biases: bool, device: torch.device) -> _Plan:
    specs = layout.specs
    numels = torch.tensor([spec.numel for spec in specs], dtype=torch.int64)
    segment = torch.repeat_interleave(torch.arange(len(specs)), numels).to(device)
    counts = numels.clamp_min(1).to(device=device, dtype=torch.float32)
    flags = corrected_tensors(specs, correct_biases=correct_biases)
    corrected = torch.tensor(flags, dtype=torch.bool, device=device)
    return _Plan(segment, counts, corrected)


def corrected_tensors(specs: Sequence[TensorSpec], *, correct_biases: bool) -> list[bool]:
    """For each spec, whether VCA rescales it (the rule in the `VCA` docstring)."""

    def prefix(name: str) -> str:
        return name.rpartition(".")[0]

    def is_weight(spec: TensorSpec) -> bool:
        return len(spec.shape) >= 2 and spec.numel > 1 and not spec.name.endswith(_RUNNING_STATS)

    weight_prefixes = {prefix(spec.name) for spec in specs if is_weight(spec)}

    def is_bias(spec: TensorSpec) -> bool:
        return (
            len(spec.shape) == 1
            and spec.numel > 1
            and "bias" in spec.name.rpartition(".")[2]
            and not spec.name.endswith(_RUNNING_STATS)
            and prefix(spec.name) in weight_prefixes
        )

    return [is_weight(spec) or (correct_biases and is_bias(spec)) for spec in specs]


def _segment_stats(
    rows: torch.Tensor, plan: _Plan, *, keep_centred: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows minus their per-tensor means, (r, d), and per-tensor population variances, (r, n).

    Two passes (mean, then mean of squared deviations) to avoid the cancellation of E[x^2] - E[x]^2.
    Without `keep_centred` the deviations are squared in place and the first result is not meaningful.
    """
    n = plan.counts.numel()
    sums = rows.new_zeros(rows.shape[0], n).index_add_(1, plan.segment, rows)
    means = sums / plan.counts
    centred = rows - means.index_select(1, plan.segment)
    squared = centred.square() if keep_centred else centred.square_()
    squares = rows.new_zeros(rows.shape[0], n).index_add_(1, plan.segment, squared)
    return centred, squares / plan.counts
