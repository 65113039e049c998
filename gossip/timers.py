"""`sleep_until` and `sleep` for protocols that many tasks run at once: one timer, no cancel scope each.

`trio.sleep_until` is a cancel scope whose deadline expires: the sleeper is woken by a `Cancelled`
exception raised into it and caught again, which is most of what a protocol round costs when an
emulation runs 10,000 nodes that each sleep twice a round. Here a sleeper parks itself in one shared
timer heap per `trio.run` and a single system task, asleep until the earliest deadline, reschedules
every sleeper that is due: one expiring scope per distinct deadline instead of one per sleeper.

The semantics are trio's: both are checkpoints, a cancelled sleeper raises `Cancelled` at once, and
time is the run's clock (real or virtual). Sleepers due at the same moment are rescheduled together
(trio then runs them in an order of its choosing, as it does for `trio.sleep_until`).
"""

from __future__ import annotations

import heapq
import math
from itertools import count

import trio
from trio.lowlevel import Abort, RunVar, Task

__all__ = ["sleep", "sleep_until"]


class _Timers:
    """The heap of parked tasks of one run, and the system task that wakes them."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Task]] = []
        self._order = count()
        self._abandoned: set[int] = set()  # entries of sleepers cancelled before their deadline
        self._scope: trio.CancelScope | None = None  # the timer task's current sleep
        trio.lowlevel.spawn_system_task(self._run, name="gossip.timers")

    def park(self, deadline: float) -> int:
        entry = next(self._order)
        heapq.heappush(self._heap, (deadline, entry, trio.lowlevel.current_task()))
        if self._scope is not None and deadline < self._scope.deadline:
            self._scope.deadline = deadline
        return entry

    def abandon(self, entry: int) -> None:
        self._abandoned.add(entry)

    async def _run(self) -> None:
        heap, abandoned = self._heap, self._abandoned
        while True:
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as self._scope:
                await trio.sleep_forever()
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, entry, task = heapq.heappop(heap)
                if entry in abandoned:
                    abandoned.discard(entry)
                else:
                    trio.lowlevel.reschedule(task)


_TIMERS: RunVar[_Timers] = RunVar("gossip.timers")


async def sleep_until(deadline: float) -> None:
    """Like `trio.sleep_until`: return once the run's clock reaches `deadline`."""
    if deadline <= trio.current_time():
        await trio.lowlevel.checkpoint()
        return
    try:
        timers = _TIMERS.get()
    except LookupError:
        timers = _Timers()
        _TIMERS.set(timers)
    entry = timers.park(deadline)

    def abort(_: object) -> Abort:
        timers.abandon(entry)
        return Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)


async def sleep(seconds: float) -> None:
    """Like `trio.sleep`: return after `seconds` (>= 0) on the run's clock."""
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    await sleep_until(trio.current_time() + seconds)
