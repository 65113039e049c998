"""The network model of the in-memory transport: what a link costs and when a message arrives.

A link is modelled per direction as a FIFO queue in front of a pipe: a message waits until the
previous one on that direction finished transmitting, takes `size / bandwidth` seconds to
transmit, then `latency` seconds to arrive; with probability `loss` it never arrives. Directions
are independent (a full-duplex link), and so are a peer's links (no shared uplink is modelled).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Container, Sequence
from dataclasses import dataclass

from transport.base import PeerId


@dataclass(frozen=True, slots=True)
class LinkParams:
    """Latency (s), bandwidth (bytes/s; None or inf: unlimited) and loss probability of a link."""

    latency: float = 0.0
    bandwidth: float | None = None
    loss: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.latency) and self.latency >= 0):
            raise ValueError(f"latency must be a finite number >= 0, got {self.latency}")
        if self.bandwidth is not None:
            if not self.bandwidth > 0:
                raise ValueError(f"bandwidth must be > 0 (or None for unlimited), got {self.bandwidth}")
            if math.isinf(self.bandwidth):
                object.__setattr__(self, "bandwidth", None)
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss must be a probability in [0, 1], got {self.loss}")

    def override(
        self, *, latency: float | None = None, bandwidth: float | None = None, loss: float | None = None
    ) -> LinkParams:
        """These parameters with the given ones replaced; None keeps the current value."""
        if latency is None and bandwidth is None and loss is None:
            return self
        return LinkParams(
            latency=self.latency if latency is None else latency,
            bandwidth=self.bandwidth if bandwidth is None else bandwidth,
            loss=self.loss if loss is None else loss,
        )


class Link:
    """One direction of a link: its parameters and the state of its transmit queue.

    `up` turns False when the link is closed, so that messages still in flight on it are dropped
    when they arrive, even if a new link between the same peers was opened meanwhile.
    """

    __slots__ = ("bandwidth", "busy_until", "last_arrival", "latency", "loss", "up")

    def __init__(self, params: LinkParams) -> None:
        self.latency = params.latency
        self.bandwidth = params.bandwidth
        self.loss = params.loss
        self.busy_until = -math.inf  # when the message being transmitted finishes
        self.last_arrival = -math.inf
        self.up = True

    @property
    def params(self) -> LinkParams:
        return LinkParams(self.latency, self.bandwidth, self.loss)

    def arrival(self, now: float, size: int) -> float:
        """Queue a message of `size` bytes sent at `now`; return the instant it arrives.

        Arrivals never go backwards on a link, so messages arrive in the order they were sent.
        """
        bandwidth = self.bandwidth
        if bandwidth is None:
            at = now + self.latency
        else:
            start = self.busy_until if self.busy_until > now else now
            self.busy_until = start + size / bandwidth
            at = self.busy_until + self.latency
        if at < self.last_arrival:
            at = self.last_arrival
        self.last_arrival = at
        return at


def group_index(groups: Sequence[Collection[PeerId]], peers: Container[PeerId]) -> dict[PeerId, int]:
    """Map each peer named in `groups` to its group's index; peers not named are left out.

    Raises KeyError for a peer not in `peers` and ValueError for a peer named in two groups.
    """
    index: dict[PeerId, int] = {}
    for number, group in enumerate(groups):
        if isinstance(group, str):
            raise TypeError(f"a group is a collection of peer IDs, got the string {group!r}")
        for peer in group:
            if peer not in peers:
                raise KeyError(f"unknown peer {peer!r}")
            if index.setdefault(peer, number) != number:
                raise ValueError(f"peer {peer!r} is in two groups")
    return index
