"""Where a node's heavy work runs, and what it costs in time.

A daemon trains in a worker thread so its trio loop keeps serving the network meanwhile. The
emulator runs the work inline and charges a modeled duration on the virtual clock instead, so that
"training takes 2 s" costs nothing real and is the same on every machine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import trio

from gossip import timers

T = TypeVar("T")


class Compute(Protocol):
    async def run(self, work: Callable[[], T], *, steps: int) -> T:
        """Run `work`, which performs `steps` training steps (0 for bookkeeping)."""


class ThreadCompute:
    """Real time: the work runs in a worker thread."""

    async def run(self, work: Callable[[], T], *, steps: int) -> T:
        return await trio.to_thread.run_sync(work)


class VirtualCompute:
    """Modeled time: the work runs inline, then `seconds_per_step * steps` pass on trio's clock."""

    def __init__(self, seconds_per_step: float) -> None:
        if seconds_per_step < 0:
            raise ValueError(f"seconds_per_step must be >= 0, got {seconds_per_step}")
        self.seconds_per_step = seconds_per_step

    async def run(self, work: Callable[[], T], *, steps: int) -> T:
        result = work()
        await timers.sleep(self.seconds_per_step * steps)
        return result
