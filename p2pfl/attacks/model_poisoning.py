"""Model poisoning: what a Byzantine node sends instead of its honest model.

Every attack is a `ModelPoisoning` with one method::

    craft(own, honest, *, round, generator) -> flat vector to send

`own` is the attacker's own, honestly trained flat vector (d,); `honest` is an (m, d) matrix of the
honest flat vectors the attacker knows (an omniscient attacker; which ones is the caller's choice).
When `m == 0` the attacker falls back to `own` as its only estimate of the honest models. The result
has `own`'s shape, dtype and device; `honest` is moved to `own`'s dtype and device if it differs.
Everything is vector math over the flat vectors (no per-parameter loops), and all randomness comes
from `generator`, which the caller seeds, so runs are reproducible.

The rules were defined for gradients; here they act on model vectors, as in decentralized learning
where models are what travels (He et al. 2022 implement ALIE, IPM and dissensus the same way).
`round` is passed for attacks that change over time; none of the ones here uses it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from p2pfl.model_state import ModelState

__all__ = [
    "ALIE",
    "IPM",
    "Dissensus",
    "FreeRider",
    "GaussianNoise",
    "ModelPoisoning",
    "Scaling",
    "SignFlip",
    "alie_z_max",
]


class ModelPoisoning(ABC):
    """A Byzantine node's rule for the model it sends. Parameters are keyword-only and validated."""

    @abstractmethod
    def craft(
        self, own: torch.Tensor, honest: torch.Tensor, *, round: int, generator: torch.Generator
    ) -> torch.Tensor:
        """The flat vector to send, shaped, typed and placed like `own`."""

    def craft_state(
        self,
        own: ModelState,
        honest: Sequence[ModelState],
        *,
        round: int,
        generator: torch.Generator,
    ) -> ModelState:
        """`craft` on model states: the result has `own`'s layout and non-float extras."""
        for state in honest:
            if state.layout != own.layout:
                raise ValueError(
                    f"an honest model's layout ({state.layout.numel} values) differs from the own "
                    f"model's ({own.layout.numel} values): names, shapes and dtypes must match"
                )
        matrix = (
            torch.stack([state.flat.to(own.device) for state in honest])
            if honest
            else own.flat.new_empty((0, own.layout.numel))
        )
        return own.with_flat(self.craft(own.flat, matrix, round=round, generator=generator))

    def __repr__(self) -> str:
        params = ", ".join(f"{name}={value!r}" for name, value in self._params().items())
        return f"{type(self).__name__}({params})"

    def _params(self) -> dict[str, object]:
        return {}


class SignFlip(ModelPoisoning):
    """Sends `-scale * own`: the attacker's own honest model with its sign reversed and scaled.

    The classic sign-flipping (bit-flipping) attack negates the attacker's own honest value (e.g.
    RSA, Li et al. 2019, with scale 4). It needs no knowledge of the others; `honest` is ignored.
    Its omniscient counterpart that negates the honest mean is `IPM`.
    """

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale = _real("SignFlip", "scale", scale, minimum=0.0, strict=True)

    def craft(self, own, honest, *, round, generator):
        _check_own(own)
        return own * -self.scale

    def _params(self):
        return {"scale": self.scale}


class GaussianNoise(ModelPoisoning):
    """Sends `own + N(0, std^2)` noise per coordinate, or pure noise `N(0, std^2)` with `replace=True`.

    The noise is drawn on the generator's device (so the same seed gives the same noise wherever
    `own` lives) and then moved to `own`'s device.
    """

    def __init__(self, *, std: float = 1.0, replace: bool = False) -> None:
        self.std = _real("GaussianNoise", "std", std, minimum=0.0, strict=True)
        if not isinstance(replace, bool):
            raise TypeError(f"GaussianNoise replace must be a bool, got {replace!r}")
        self.replace = replace

    def craft(self, own, honest, *, round, generator):
        _check_own(own)
        noise = torch.randn(own.shape, generator=generator, dtype=own.dtype, device=generator.device)
        noise = noise.to(own.device).mul_(self.std)
        return noise if self.replace else own + noise

    def _params(self):
        return {"std": self.std, "replace": self.replace}


def alie_z_max(n: int, f: int) -> float:
    """The largest safe `z` of "a little is enough" (Baruch et al., NeurIPS 2019, section 3).

    With `n` workers of which `f` are Byzantine, the attackers need `s = floor(n/2 + 1) - f` honest
    "supporters" whose values lie farther from the mean than theirs, so that a majority-based rule
    still picks them. The largest such distance in standard deviations is::

        z_max = Phi^{-1}((n - s) / n)

    with `Phi` the standard normal CDF. E.g. n = 50, f = 24: s = 2, z_max = Phi^{-1}(0.96) ~ 1.7507.
    `(n - s) / n` must lie strictly between 0 and 1: `f` must leave at least one supporter to find
    (s >= 1 unless f = 0) and the count must not reach `n`.
    """
    n = _integer("ALIE", "n", n, minimum=1)
    f = _integer("ALIE", "f", f, minimum=0)
    if f >= n:
        raise ValueError(f"ALIE f must be < n, got n={n}, f={f}")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0.0 < p < 1.0:
        raise ValueError(
            f"ALIE n={n}, f={f} gives s = floor(n/2 + 1) - f = {s} and (n - s)/n = {p}, "
            "which must lie strictly between 0 and 1"
        )
    return float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))


class ALIE(ModelPoisoning):
    """ "A little is enough" (Baruch et al. 2019): sends `mean - z * std`, per coordinate over `honest`.

    `std` is the sample standard deviation (divide by m - 1) of the honest models, taken as 0 when
    fewer than two are known (with none, `own` stands in, so the attack sends `own`). Give `z`
    directly, or `n` (all nodes) and `f` (Byzantine nodes) to use the paper's `z_max` (see
    `alie_z_max`), not both.
    """

    def __init__(self, *, z: float | None = None, n: int | None = None, f: int | None = None) -> None:
        if z is not None:
            if n is not None or f is not None:
                raise ValueError("ALIE takes either z or (n, f), not both")
            self.z = _real("ALIE", "z", z)
        elif n is None or f is None:
            raise ValueError("ALIE needs z, or both n and f to compute z")
        else:
            self.z = alie_z_max(n, f)
        self.n, self.f = n, f

    def craft(self, own, honest, *, round, generator):
        honest = _honest(own, honest)
        if honest.shape[0] < 2:
            return _mean(honest)
        std, mean = torch.std_mean(honest, dim=0, correction=1)
        return mean.sub_(std.mul_(self.z))

    def _params(self):
        return {"z": self.z, "n": self.n, "f": self.f}


class IPM(ModelPoisoning):
    """Inner product manipulation (Xie et al., UAI 2020): sends `-epsilon * mean(honest)`.

    Its inner product with the honest mean is `-epsilon * |mean|^2 < 0`. Unlike `SignFlip`, which
    negates the attacker's own model, IPM needs the honest models. The paper uses a small
    `epsilon` (0.1 to 0.5) to slip past robust rules and a large one against plain averaging.
    """

    def __init__(self, *, epsilon: float = 0.5) -> None:
        self.epsilon = _real("IPM", "epsilon", epsilon, minimum=0.0, strict=True)

    def craft(self, own, honest, *, round, generator):
        return -self.epsilon * _mean(_honest(own, honest))

    def _params(self):
        return {"epsilon": self.epsilon}


class Scaling(ModelPoisoning):
    """Model replacement / boosting (Bagdasaryan et al., AISTATS 2020): sends `mean + factor * (own - mean)`.

    `mean` is the mean of `honest`, the attacker's estimate of what the others will average to. The
    attacker's deviation from it is amplified `factor` times, so that after averaging with about
    `factor` models near `mean` the result lands near `own`: with `factor = n` and n - 1 honest models
    equal to `mean`, the plain average of all n is exactly `own`. With no honest models known the
    mean is `own` itself and the attack sends `own`.
    """

    def __init__(self, *, factor: float = 10.0) -> None:
        self.factor = _real("Scaling", "factor", factor)

    def craft(self, own, honest, *, round, generator):
        mean = _mean(_honest(own, honest))
        return mean + self.factor * (own - mean)

    def _params(self):
        return {"factor": self.factor}


class FreeRider(ModelPoisoning):
    """Sends a stale model: a copy of the first `own` it was given, every time after.

    The state lives in the instance, so every attacker node needs its own `FreeRider` (the registry
    builds a new one per call). `reset()` forgets the remembered model.
    """

    def __init__(self) -> None:
        self._stale: torch.Tensor | None = None

    def craft(self, own, honest, *, round, generator):
        _check_own(own)
        if self._stale is None:
            self._stale = own.detach().clone()
        elif self._stale.shape != own.shape:
            raise ValueError(
                f"FreeRider remembered a model of {self._stale.numel()} values, got one of {own.numel()}"
            )
        return self._stale.to(device=own.device, dtype=own.dtype, copy=True)

    def reset(self) -> None:
        self._stale = None


class Dissensus(ModelPoisoning):
    """The dissensus attack on gossip (He, Karimireddy & Jaggi 2022, "Byzantine-robust decentralized
    learning via ClippedGossip", section 5): undo the victim's consensus step.

    The paper's Byzantine neighbour j of victim i sends::

        x_j = x_i - epsilon * sum_{k honest} W_ik (x_k - x_i) / sum_{b Byzantine} W_ib

    so that the victim's gossip step `x_i + sum_j W_ij (x_j - x_i)` becomes
    `x_i + (1 - epsilon) * sum_{k honest} W_ik (x_k - x_i)`: epsilon = 1 cancels it, epsilon > 1
    pushes the victim away from its honest neighbours. Our interface has no gossip weights, so this
    assumes the victim weighs all its neighbours equally; then, with `own` = the victim's model,
    `honest` = its m honest neighbours' models and `byzantine_neighbours` = b::

        sent = own - epsilon * sum_k (honest_k - own) / b = own - epsilon * (m / b) * (mean(honest) - own)

    Each of the victim's b Byzantine neighbours must send this (with the same b) for the exact
    cancellation. With no honest neighbours known there is nothing to cancel and `own` is sent.
    """

    def __init__(self, *, epsilon: float = 1.0, byzantine_neighbours: int = 1) -> None:
        self.epsilon = _real("Dissensus", "epsilon", epsilon, minimum=0.0)
        self.byzantine_neighbours = _integer(
            "Dissensus", "byzantine_neighbours", byzantine_neighbours, minimum=1
        )

    def craft(self, own, honest, *, round, generator):
        _check_own(own)
        honest = _matrix(own, honest)
        pull = honest.sum(dim=0).sub_(own, alpha=honest.shape[0])  # sum_k (honest_k - own)
        return own - (self.epsilon / self.byzantine_neighbours) * pull

    def _params(self):
        return {"epsilon": self.epsilon, "byzantine_neighbours": self.byzantine_neighbours}


def _check_own(own: torch.Tensor) -> None:
    if own.ndim != 1 or not own.is_floating_point():
        raise ValueError(f"own must be a 1-D floating-point vector, got {own.dtype}{list(own.shape)}")


def _matrix(own: torch.Tensor, honest: torch.Tensor) -> torch.Tensor:
    """`honest` checked to be (m, d) with d = len(own), on own's device and dtype."""
    if honest.ndim != 2 or honest.shape[1] != own.shape[0]:
        raise ValueError(f"honest must be an (m, {own.shape[0]}) matrix, got {list(honest.shape)}")
    return honest.to(device=own.device, dtype=own.dtype)


def _honest(own: torch.Tensor, honest: torch.Tensor) -> torch.Tensor:
    """The honest matrix, or `own` as a one-row matrix when it is empty."""
    _check_own(own)
    honest = _matrix(own, honest)
    return honest if honest.shape[0] else own.unsqueeze(0)


def _mean(honest: torch.Tensor) -> torch.Tensor:
    return honest.mean(dim=0)


def _real(
    owner: str, name: str, value: object, *, minimum: float | None = None, strict: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{owner} {name} must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{owner} {name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


def _integer(owner: str, name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner} {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner} {name} must be >= {minimum}, got {value!r}")
    return value
