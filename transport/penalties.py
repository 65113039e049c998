"""Misbehaviour records of peers, and bans for the peers that offend too often.

An offence is input refused through the sender's fault: an oversize or malformed header, a body that
fails its hash or does not decode, a writer that stalls or breaks off. A peer with `offences`
offences within `window` seconds is banned for `ban_seconds`, after which it starts again with a
clean record; older offences are forgotten. So an honest peer whose transfer breaks now and then is
never banned, while one that keeps sending garbage is, after a known number of tries. Refusals that
are our own doing (no free slot, a round we no longer want) are not offences: the caller decides
what it charges.

Offences are counted in a sliding window rather than as an exponentially decaying score because the
rule is then exact and easy to state ("5 bad transfers within 10 minutes"): with a decaying score, N
offences a second apart never quite reach a threshold of N.

This module only keeps the books; what a ban means is the transport's business (the libp2p one
closes the peer's connections, resets its streams and refuses to dial it). Time is the trio clock.
Memory is bounded: records of at most `max_peers` peers (the least recent offender's is forgotten
first), each at most `offences` times, and at most `max_peers` bans (the one ending first is lifted).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from transport.base import PeerId

__all__ = ["DEFAULT_PENALTIES", "Penalties", "PenaltyConfig"]


@dataclass(frozen=True, slots=True)
class PenaltyConfig:
    """A peer with `offences` offences within `window` seconds is banned for `ban_seconds`."""

    enabled: bool = True
    offences: int = 5
    window: float = 600.0
    ban_seconds: float = 300.0
    max_peers: int = 1024

    def __post_init__(self) -> None:
        for name in ("window", "ban_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0, got {value!r}")
        for name in ("offences", "max_peers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")


DEFAULT_PENALTIES = PenaltyConfig()


class Penalties:
    """Offence records and bans by peer ID."""

    def __init__(
        self, config: PenaltyConfig = DEFAULT_PENALTIES, *, clock: Callable[[], float] = trio.current_time
    ) -> None:
        self.config = config
        self._clock = clock
        self._offences: dict[PeerId, deque[float]] = {}  # recent offence times; least recent offender first
        self._bans: dict[PeerId, float] = {}  # peer: when its ban ends

    def charge(self, peer: PeerId) -> bool:
        """Record one offence of `peer`; True if that got it banned (now, not already).

        A banned peer is not charged further: its ban already runs, and extending it on every
        stream it opens would let it keep itself banned forever at our expense.
        """
        cfg = self.config
        if not cfg.enabled or self.ban_left(peer) > 0:
            return False
        now = self._clock()
        times = self._recent(peer, now)
        times.append(now)
        del self._offences[peer]  # re-inserted last, unless banned
        if len(times) < cfg.offences:
            self._offences[peer] = times
            while len(self._offences) > cfg.max_peers:
                del self._offences[next(iter(self._offences))]
            return False
        self._bans[peer] = now + cfg.ban_seconds
        while len(self._bans) > cfg.max_peers:
            del self._bans[min(self._bans, key=self._bans.__getitem__)]
        return True

    def offences(self, peer: PeerId) -> int:
        """The peer's offences within the window, as of now."""
        times = self._offences.get(peer)
        return len(self._recent(peer, self._clock())) if times else 0

    def ban_left(self, peer: PeerId) -> float:
        """Seconds until the peer's ban ends; 0 if it is not banned."""
        until = self._bans.get(peer)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._bans[peer]
            return 0.0
        return left

    def is_banned(self, peer: PeerId) -> bool:
        return self.ban_left(peer) > 0

    def banned(self) -> dict[PeerId, float]:
        """Peers banned now, with the seconds left of each ban."""
        now = self._clock()
        for peer in [p for p, until in self._bans.items() if until <= now]:
            del self._bans[peer]
        return {peer: until - now for peer, until in self._bans.items()}

    def _recent(self, peer: PeerId, now: float) -> deque[float]:
        """The peer's record (created empty if need be) without the offences older than the window."""
        times = self._offences.setdefault(peer, deque(maxlen=self.config.offences))
        while times and times[0] <= now - self.config.window:
            times.popleft()
        return times
