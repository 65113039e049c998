"""Transfer learning as Bristle uses it (ALGORITHMS.md section 3).

The feature layers are pre-trained once on a small held-out set, frozen and identical on every
node; a node then only trains a linear output layer on the frozen features: the matrix `W`
(features x classes, starts at zero, the only thing exchanged) and a bias that stays local. Local
training updates only the columns of the node's own classes, so what a node learnt from its peers
about the other classes is not overwritten by its own one-sided data.

Everything here works on precomputed features and supports leading batch dimensions, so an
emulation can train all its nodes with one batched matmul.
"""

from __future__ import annotations

import torch
from torch import nn

from p2pfl.models import mlp

__all__ = ["accuracy", "local_step", "pretrain_features"]


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
