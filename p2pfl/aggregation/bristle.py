"""Bristle: Byzantine-resilient integration for non-IID peers (ALGORITHMS.md section 3).

Bristle works in a transfer-learning setting (see `p2pfl.transfer`): the feature layers are
pre-trained, frozen and identical on every node, and only the output matrix `W` (features x classes)
travels. A node knows a few classes well (its own) and needs its peers for the rest. For every round:

* **Prioritizer**: the received `W_j` are sorted by L2 distance to the own `W`; the `closest` nearest
  are kept, plus `random_others` drawn (seeded) from the rest, so that far but useful peers (those
  with other classes) still get a chance.
* **Integrator**: the own `W` and each kept `W_j` are evaluated on the node's small local test set
  (precomputed frozen features), giving the per-class F1 on the own classes. For peer j only its
  `shared_classes` best own classes (by its F1) count. For such a class c::

      d        = 10 * |F1_j(c) - F1_own(c)|
      score_jc = d ** (3 + F1_own(c))        if F1_j(c) > F1_own(c)
               = -d ** (4 + F1_own(c))       otherwise
      cert_j   = max(0, mean_c F1_j(c) - std_c F1_j(c))       (over j's selected classes)
      w_jc     = cert_j * max(0, 10 * sigmoid(max(score_jc, -100) / 100) - 4)

  and 0 for the classes not selected. A foreign class (not one of the node's own) gets one weight
  per peer, `cert_j * max(0, 10 * sigmoid(sum_c score_jc / 100) - 4)` (unbounded scores summed over
  j's selected classes). Every column c of W is then the weighted mean of the own column (weight 1)
  and the peers' columns::

      W[:, c] = (W_own[:, c] + sum_j w_jc W_j[:, c]) / (1 + sum_j w_jc)

  and finally every column has its mean (over the features) subtracted.

A peer that is worse than the node on a class is penalised much harder (exponent 4 + F1) than a
better one is rewarded (3 + F1): a label-shifting attacker scores near 0 F1 on every own class and
gets weight 0, an honest peer that is better gets a positive weight, and an identical peer gets
weight `cert_j` (score 0, `10 * sigmoid(0) - 4 = 1`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from p2pfl.aggregation.base import Aggregator, Contribution
from p2pfl.model_state import ModelState


class Bristle(Aggregator):
    """The Bristle prioritizer and integrator on the output matrix `W` of a transfer-learning model.

    `test_features` (n, f) are the frozen features of the node's local test set (about 10 samples per
    own class) and `test_labels` (n,) their labels; `classes` are the node's own classes. Every state
    (own and received) must hold a tensor called `weight_name` of the same shape: (f, classes) or,
    with `transposed=True`, (classes, f) as `torch.nn.Linear.weight` stores it. Nothing else of the
    received states is read; the result is the own state with that tensor replaced (every other
    tensor, e.g. the local bias, is kept from the own model).

    Evaluations compute `logits = features @ W + bias` for the own and every kept `W_j` in one
    batched matmul, with the node's own bias (`bias_name` in the own state, shape (classes,)) or no
    bias when `bias_name` is None. Predictions are the argmax over all classes.

    The random choice of "others" uses a generator seeded with `seed` that advances with every call.
    Received peers are processed in order of distance, so the result does not depend on the order
    of `received` (up to exact distance ties between different models). `Contribution.weight` is not
    used. With nothing received, the result is the own W with its column means subtracted.
    """

    def __init__(
        self,
        *,
        test_features: torch.Tensor,
        test_labels: torch.Tensor,
        classes: Sequence[int],
        weight_name: str = "weight",
        bias_name: str | None = None,
        transposed: bool = False,
        closest: int = 20,
        random_others: int = 5,
        shared_classes: int = 3,
        seed: int = 0,
    ) -> None:
        if test_features.ndim != 2 or not test_features.is_floating_point():
            raise ValueError(
                f"Bristle test_features must be a floating (n, f) matrix, got "
                f"{test_features.dtype}{list(test_features.shape)}"
            )
        if test_labels.shape != (test_features.shape[0],) or test_labels.is_floating_point():
            raise ValueError(
                f"Bristle test_labels must be {test_features.shape[0]} integer labels, got "
                f"{test_labels.dtype}{list(test_labels.shape)}"
            )
        if test_features.shape[0] == 0:
            raise ValueError("Bristle needs a non-empty local test set")
        given = [int(c) for c in classes]
        own_classes = sorted(set(given))
        if not own_classes or own_classes[0] < 0 or len(own_classes) != len(given):
            raise ValueError(f"Bristle classes must be distinct class indices >= 0, got {given}")
        for name, value, minimum in (
            ("closest", closest, 0),
            ("random_others", random_others, 0),
            ("shared_classes", shared_classes, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"Bristle {name} must be an integer >= {minimum}, got {value!r}")
        self.test_features = test_features.detach()
        self.test_labels = test_labels.detach().to(torch.int64)
        self.classes = tuple(own_classes)
        self.weight_name = weight_name
        self.bias_name = bias_name
        self.transposed = bool(transposed)
        self.closest = closest
        self.random_others = random_others
        self.shared_classes = shared_classes
        self._generator = torch.Generator().manual_seed(seed)

    # -- the Aggregator interface ---------------------------------------------------------------

    def aggregate(self, own: Contribution, received: Sequence[Contribution]) -> ModelState:
        own_w = self._matrix(own.state)
        bias = own.state.tensor(self.bias_name) if self.bias_name is not None else None
        if received:
            matrices = [self._matrix(c.state) for c in received]
            for contribution, matrix in zip(received, matrices, strict=True):
                if matrix.shape != own_w.shape:
                    raise ValueError(
                        f"Bristle: {self.weight_name!r} from {contribution.sender!r} has shape "
                        f"{list(matrix.shape)}, the own one {list(own_w.shape)}"
                    )
            peers = torch.stack(matrices).to(own_w.device)
            peers = peers[self.prioritize(own_w, peers)]
        else:
            peers = own_w.new_empty((0, *own_w.shape))
        merged = self.integrate(own_w, peers, bias=bias)
        flat = own.state.flat.clone()
        out = own.state.with_flat(flat)
        out.tensor(self.weight_name).copy_(merged.T if self.transposed else merged)
        return out

    # -- the two stages, on (f, C) matrices, public for tests and diagnostics --------------------

    def prioritize(self, own: torch.Tensor, peers: torch.Tensor) -> torch.Tensor:
        """Indices into `peers` (P, f, C) of the kept models: the `closest` nearest to `own` by L2
        distance, then `random_others` random ones of the rest, all in order of distance."""
        distances = (peers - own).flatten(1).norm(dim=1)
        order = torch.sort(distances, stable=True).indices
        rest = order.numel() - self.closest
        if rest <= 0:
            return order
        others = torch.randperm(rest, generator=self._generator)[: self.random_others]
        positions = torch.cat([torch.arange(self.closest), self.closest + others.sort().values])
        return order[positions.to(order.device)]

    def f1_scores(self, matrices: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Per-class F1 (M, len(classes)) on the own classes of each W in `matrices` (M, f, C)."""
        feats = self.test_features.to(device=matrices.device, dtype=matrices.dtype)
        labels = self.test_labels.to(matrices.device)
        num_classes = matrices.shape[-1]
        if int(labels.max()) >= num_classes or self.classes[-1] >= num_classes:
            raise ValueError(f"Bristle: classes and test labels must be < {num_classes} (W's columns)")
        logits = feats @ matrices  # (M, n, C)
        if bias is not None:
            logits = logits + bias.to(logits)
        predicted = torch.nn.functional.one_hot(logits.argmax(dim=-1), num_classes).to(torch.float64)
        actual = torch.nn.functional.one_hot(labels, num_classes).to(torch.float64)
        true_positive = (predicted * actual).sum(dim=1)  # (M, C)
        denominator = predicted.sum(dim=1) + actual.sum(dim=0)  # 2TP + FP + FN
        f1 = torch.where(denominator > 0, 2 * true_positive / denominator.clamp_min(1), 0.0)
        return f1[:, list(self.classes)]

    def weights(
        self, own: torch.Tensor, peers: torch.Tensor, *, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The integration weights (P, C) of `peers` (P, f, C): `w_jc` in the own classes' columns,
        the per-peer foreign weight in the others (float64)."""
        num_peers, num_classes = peers.shape[0], own.shape[-1]
        f1 = self.f1_scores(torch.cat([own.unsqueeze(0), peers]), bias)
        own_f1, peer_f1 = f1[0], f1[1:]  # (K,), (P, K)
        k = min(self.shared_classes, len(self.classes))
        selected = torch.sort(peer_f1, dim=1, descending=True, stable=True).indices[:, :k]  # (P, k)
        mine = own_f1[selected]
        theirs = peer_f1.gather(1, selected)
        d = 10.0 * (theirs - mine).abs()
        score = torch.where(theirs > mine, d.pow(3.0 + mine), -d.pow(4.0 + mine))
        std, mean = torch.std_mean(theirs, dim=1, correction=0)
        certainty = (mean - std).clamp_min(0.0)  # (P,)
        # The spec's max(score, -100) changes nothing here (the gate is already 0 below 100 * ln(2/3) ~ -40.5)
        # but is kept so the code reads like the formula.
        per_class = certainty[:, None] * _gate(score.clamp_min(-100.0))  # (P, k)
        foreign = certainty * _gate(score.sum(dim=1))  # (P,)

        out = foreign[:, None].expand(num_peers, num_classes).clone()
        own_columns = torch.tensor(self.classes, device=out.device)
        out[:, own_columns] = 0.0
        class_index = own_columns[selected]  # (P, k): the W column of each selected own class
        out.scatter_(1, class_index, per_class)
        return out

    def integrate(
        self, own: torch.Tensor, peers: torch.Tensor, *, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The merged W (f, C) from the own W and the kept peers (P, f, C), column means removed."""
        if peers.shape[0]:
            weights = self.weights(own, peers, bias=bias).to(own.dtype)  # (P, C)
            numerator = own + torch.einsum("pc,pfc->fc", weights, peers)
            merged = numerator / (1.0 + weights.sum(dim=0))
        else:
            merged = own.clone()
        return merged - merged.mean(dim=0, keepdim=True)

    def _matrix(self, state: ModelState) -> torch.Tensor:
        if self.weight_name not in state.layout.names:
            raise ValueError(f"Bristle: the model has no tensor {self.weight_name!r}")
        tensor = state.tensor(self.weight_name)
        if tensor.ndim != 2:
            raise ValueError(
                f"Bristle: {self.weight_name!r} must be a matrix, got shape {list(tensor.shape)}"
            )
        return tensor.T if self.transposed else tensor


def _gate(score: torch.Tensor) -> torch.Tensor:
    """`max(0, 10 * sigmoid(score / 100) - 4)`; `torch.sigmoid` is stable for any finite score."""
    return (10.0 * torch.sigmoid(score / 100.0) - 4.0).clamp_min(0.0)
