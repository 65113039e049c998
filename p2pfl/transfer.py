"""Transfer learning as Bristle uses it (ALGORITHMS.md section 3).

The feature layers are pre-trained once on a small held-out set, frozen and identical on every
node; a node then only trains a linear output layer on the frozen features: the matrix `W`
(features x classes, starts at zero, the only thing exchanged) and a bias that stays local. Local
training updates only the columns of the node's own classes, so what a node learnt from its peers
about the other classes is not overwritten by its own one-sided data.

The functions here work on precomputed features and support leading batch dimensions, so an
emulation can train all its nodes with one batched matmul. `MaskedLinear` and `KeepLocal` are the
same setting as modules for a `Learner` and a `Node`: the output layer whose training changes only
the own classes' rows, and an aggregator wrapper that keeps tensors (the bias) local.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from p2pfl.aggregation.base import Aggregator, Contribution
from p2pfl.model_state import ModelState
from p2pfl.models import mlp

__all__ = ["KeepLocal", "MaskedLinear", "accuracy", "local_step", "pretrain_features"]


def pretrain_features(
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    hidden: int = 32,
    num_classes: int | None = None,
    steps: int = 500,
    lr: float = 0.01,
    seed: int = 0,
) -> nn.Module:
    """A frozen `Linear(inputs, hidden) + Tanh` feature extractor pre-trained on (`inputs`, `labels`).

    Trains an MLP in -> hidden (tanh) -> classes, initialised from `seed`, with full-batch Adam for
    `steps` steps (deterministic on a given machine), then drops the output layer. The returned
    module is in eval mode with `requires_grad=False` on every parameter. For digits: 300 held-out
    samples, 64 -> 32.
    """
    if inputs.ndim != 2 or labels.shape != (inputs.shape[0],) or inputs.shape[0] == 0:
        raise ValueError(
            f"need (n, d) inputs and n labels, got {list(inputs.shape)} and {list(labels.shape)}"
        )
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    model = mlp((inputs.shape[1], hidden, num_classes), activation=nn.Tanh, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    features = nn.Sequential(model[0], model[1]).eval()
    features.requires_grad_(False)
    return features


@torch.no_grad()
def local_step(
    weight: torch.Tensor,
    bias: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    lr: float,
    columns: torch.Tensor | None = None,
) -> torch.Tensor:
    """One gradient step of softmax cross-entropy on `logits = features @ weight + bias`, in place.

    Shapes: `weight` (..., f, C), `bias` (..., C), `features` (..., n, f), `labels` (..., n); the
    leading dimensions (e.g. one per node) broadcast. `columns` (..., C), boolean, says which classes'
    columns of `weight` and entries of `bias` may change (the node's own classes); None updates all.
    Returns the mean loss before the step, per leading index.
    """
    logits = features @ weight + bias.unsqueeze(-2)  # (..., n, C)
    log_probs = torch.log_softmax(logits, dim=-1)
    targets = nn.functional.one_hot(labels, weight.shape[-1]).to(logits.dtype)
    loss = -(log_probs * targets).sum(dim=-1).mean(dim=-1)
    error = (log_probs.exp() - targets) / labels.shape[-1]  # d mean-loss / d logits
    grad_weight = features.transpose(-1, -2) @ error
    grad_bias = error.sum(dim=-2)
    if columns is not None:
        mask = columns.to(logits.dtype)
        grad_weight = grad_weight * mask.unsqueeze(-2)
        grad_bias = grad_bias * mask
    weight.sub_(lr * grad_weight)
    bias.sub_(lr * grad_bias)
    return loss


@torch.no_grad()
def accuracy(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor):
    """Accuracy of `argmax(features @ weight + bias)` against `labels`, per leading index of weight/bias."""
    logits = features @ weight + bias.unsqueeze(-2)
    return (logits.argmax(dim=-1) == labels).to(torch.float32).mean(dim=-1)


class MaskedLinear(nn.Linear):
    """The output layer `features -> classes` (W and bias start at zero) whose training only changes
    the rows of `weight` and entries of `bias` of the `trainable` classes.

    The mask acts on the gradient (the other rows enter the forward pass detached), so any optimizer
    without weight decay leaves them exactly as they are; a merge may still change them. `classes`
    None trains everything. The mask is a non-persistent buffer: it is not part of the state dict,
    so it never travels and a loaded state does not change it. `seed` is accepted (and unused) so
    that the class fits a model factory called as `make_model(seed=...)`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        classes: Sequence[int] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(in_features, out_features)
        with torch.no_grad():
            self.weight.zero_()
            self.bias.zero_()
        self.register_buffer("trainable", torch.ones(out_features, dtype=torch.bool), persistent=False)
        if classes is not None:
            self.train_only(classes)

    def train_only(self, classes: Sequence[int] | None) -> None:
        """Let training change only `classes` (None: all of them)."""
        mask = torch.ones_like(self.trainable) if classes is None else torch.zeros_like(self.trainable)
        if classes is not None:
            chosen = [int(c) for c in classes]
            if not chosen or min(chosen) < 0 or max(chosen) >= self.out_features:
                raise ValueError(f"classes must be non-empty and in [0, {self.out_features}), got {chosen}")
            mask[chosen] = True
        self.trainable.copy_(mask)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if bool(self.trainable.all()):
            return super().forward(inputs)
        keep = self.trainable.to(self.weight.dtype)
        weight = self.weight * keep[:, None] + (self.weight * (1 - keep[:, None])).detach()
        bias = self.bias * keep + (self.bias * (1 - keep)).detach()
        return nn.functional.linear(inputs, weight, bias)


class KeepLocal(Aggregator):
    """Runs `inner` and then puts the own values of the tensors `names` (e.g. the bias) back, so that
    they stay local whatever the rule does with them."""

    def __init__(self, inner: Aggregator, names: Sequence[str]) -> None:
        self.inner = inner
        self.names = tuple(names)

    def aggregate(self, own: Contribution, received: Sequence[Contribution]) -> ModelState:
        merged = self.inner.aggregate(own, received)
        for name in self.names:
            if name in merged.layout.names:
                merged.tensor(name).copy_(own.state.tensor(name))
        return merged

    def peer_scores(self) -> Mapping[str, float]:
        return self.inner.peer_scores()
