"""When an emulated run is over: judged every `period` of virtual time from the run's state.

One rule for a run in one process (its monitor task) and for a sharded one (the coordinator, at
barriers on the same instants), so both end for the same reasons.
"""

from __future__ import annotations


class RunEnd:
    """Over when no node runs and none is due to join, when an event-driven protocol (which records
    rounds as aggregates come, not on a clock) reached the last round, or when no round was recorded
    for `stall_timeout` virtual seconds (then `stalled`)."""

    def __init__(self, *, period: float, stall_timeout: float, rounds: int, event_driven: bool) -> None:
        self.period = period
        self.stall_timeout = stall_timeout
        self.rounds = rounds
        self.event_driven = event_driven
        self.next_check = period  # checks are due at every multiple of `period`
        self.stalled = False
        self._progress = 0
        self._changed_at = 0.0

    def over(self, now: float, *, progress: int, running: int, joins_pending: bool) -> bool:
        """Whether the run is over at `now`; False before `next_check` (the state is not judged then)."""
        if now < self.next_check:
            return False
        while self.next_check <= now:
            self.next_check += self.period
        if running == 0 and not joins_pending:
            return True
        if self.event_driven and progress >= self.rounds:
            return True
        if progress > self._progress:
            self._progress, self._changed_at = progress, now
        elif now - self._changed_at > self.stall_timeout:
            self.stalled = True
            return True
        return False
