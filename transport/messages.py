"""Typed wire messages.

A message is a frozen dataclass registered with `codec.message` under a short tag and a version.
Field annotations are the schema: the codec validates every decoded field against them, so a
handler never sees a message of the wrong shape. Tensors travel as numpy arrays; the learning side
converts them to and from torch, so this layer never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transport.codec import message


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class ModelPayload:
    """A model as named tensors plus the weight it carries in a weighted average (e.g. samples).

    Weak references are allowed so that receivers can cache what they made of a payload.
    """

    tensors: dict[str, np.ndarray]
    weight: float


@message("model_update", version=1)
@dataclass(frozen=True, slots=True, eq=False)
class ModelUpdate:
    """A model a node sends after it finished `round`."""

    round: int
    model: ModelPayload
