"""What the periodic round protocols share: their schedule and how a round's model goes out.

`RoundClock` is a periodic timer with skip-on-overrun semantics. Round r of a run that starts at
`start` with round `first` ends at ``start + (r - first + 1) * period``. A round that overruns its
end (training, merging or evaluating took longer than a period) is finished late, and the rounds
whose periods went by meanwhile are skipped: running them back to back would give them no time to
receive anything, and would leave the node's round numbers behind its neighbours', which D-PSGD
needs to match. The last round is never skipped, so a run always ends with it.

`send_to_each` sends one message to several peers at once under a deadline: a peer that accepts
the connection but never reads costs the round at most that deadline, whatever the number of such
peers, and the others get the model as soon as the link allows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from transport.base import PeerId, Transport

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
) -> None:
    """Send `message` to `peers` at once (`Transport.send_each`), giving up on any still pending at
    `deadline`; `what` names the message in the log.

    A message ready only after its deadline is not sent at all: its receivers have moved on, and
    whether a transport would get part of it out first is no part of the protocol. Returns once
    every send has ended, so the caller may then change what the message views.
    """
    if trio.current_time() >= deadline:
        log.info("%s not sent: it was ready only after its deadline", what)
        return
    if not transport.send_may_block:  # no time passes in sends that never block: no deadline to set
        await transport.send_each(peers, message)
        return
    with trio.move_on_at(deadline) as scope:
        await transport.send_each(peers, message)
    if scope.cancelled_caught:
        log.info("gave up sending %s at its deadline to the peers still pending", what)
