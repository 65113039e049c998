"""What the periodic round protocols share: their schedule and how a round's model goes out.

`RoundClock` is a periodic timer with skip-on-overrun semantics. Round r of a run that starts at
`start` with round `first` ends at ``start + (r - first + 1) * period``. A round that overruns its
end (training, merging or evaluating took longer than a period) is finished late, and the rounds
whose periods went by meanwhile are skipped: running them back to back would give them no time to
receive anything, and would leave the node's round numbers behind its neighbours', which D-PSGD
needs to match. The last round is never skipped, so a run always ends with it.

`send_to_each` sends one message to several peers at once, each send under its own deadline: a
peer that accepts the connection but never reads costs the round at most that deadline, whatever
the number of such peers, and the others get the model as soon as the link allows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from transport.base import PeerId, Transport
from transport.errors import PeerUnreachable

__all__ = ["RoundClock", "send_to_each"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RoundClock:
    """The fixed grid of round ends of one run, in the run's clock (real or virtual)."""

    start: float
    period: float
    first: int = 1

    def end(self, round_: int) -> float:
        """When `round_` ends: the instant its received models are merged."""
        return self.start + (round_ - self.first + 1) * self.period

    def next_round(self, finished: int, last: int, *, now: float) -> int:
        """The round to run after `finished`, at `now`: the next one, unless its period is over.

        If periods went by while `finished` ran late, the next round is the one whose period holds
        `now` (never past `last`); the skipped ones are logged.
        """
        due = self.first + math.floor((now - self.start) / self.period)
        following = max(finished + 1, min(due, last))
        if following > finished + 1:
            log.warning(
                "round %d overran its end by %.2f s: skipping %d missed round(s), on to round %d",
                finished,
                now - self.end(finished),
                following - finished - 1,
                following,
            )
        return following


async def send_to_each(
    transport: Transport, peers: Sequence[PeerId], message: object, *, deadline: float, what: str
) -> frozenset[PeerId]:
    """Send `message` to every peer of `peers` concurrently; the peers that took delivery.

    Each send runs in its own cancel scope expiring at `deadline` (the transport's own deadlines
    may end it sooner); a failed or cancelled send is logged (`what` names the message) and leaves
    the others alone. Returns once every send has succeeded, failed or been cancelled, so the
    caller may then change what the message views.
    """
    delivered: set[PeerId] = set()

    async def send_one(peer: PeerId) -> None:
        with trio.CancelScope(deadline=deadline) as scope:
            try:
                await transport.send(peer, message)
            except PeerUnreachable as exc:
                log.info("could not send %s to %s: %s", what, peer, exc)
                return
            delivered.add(peer)
        if scope.cancelled_caught:
            log.info("gave up sending %s to %s at its deadline", what, peer)

    async with trio.open_nursery() as nursery:
        for peer in peers:
            nursery.start_soon(send_one, peer)
    return frozenset(delivered)
