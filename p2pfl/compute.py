"""Where a node's heavy work runs, and what it costs in time.

A daemon trains in a worker thread so its trio loop keeps serving the network meanwhile. The
emulator runs the work inline and charges a modeled duration on the virtual clock instead, so that
"training takes 2 s" costs nothing real and is the same on every machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import trio

from gossip import timers


class Compute(Protocol):
    async def run(self, train: Callable[[int], object], *, steps: int) -> None:
        """Run `steps` training steps: `train(n)` runs the next `n` of them.

        A compute may call `train` once or in chunks that add up to `steps`, so `train` must carry
        on where its previous call stopped (as `Learner.train` does: its batches carry on).
        """


class ThreadCompute:
    """Real time: the steps run in a worker thread, in chunks of about `chunk_seconds`.

    Trio cannot interrupt a thread, so cancelling a round (a daemon on SIGTERM, `NodeThread.stop`)
    waits for the thread call in progress. One call for a whole round would make a node with many
    local steps unstoppable for that long; one call per step would cost a thread hop (~60 µs) per
    step, a fifth of a small model's step. Chunks of about `chunk_seconds` (at least one step)
    bound the wait to about `max(chunk_seconds, one step)` and keep the hops negligible. Chunks are
    sized from the time per step the previous chunk took, carried over from round to round.

    Cancelled, `run` raises `trio.Cancelled` after the chunk in progress and the model keeps the
    steps done so far: every step is whole, so it is the model of a round with fewer local steps.
    """

    def __init__(self, *, chunk_seconds: float = 0.05) -> None:
        if chunk_seconds < 0:
            raise ValueError(f"chunk_seconds must be >= 0, got {chunk_seconds}")
        self.chunk_seconds = chunk_seconds
        self._seconds_per_step: float | None = None  # unknown until a first step ran

    async def run(self, train: Callable[[int], object], *, steps: int) -> None:
        left = steps
        while left > 0:
            chunk = min(left, self._chunk())
            elapsed = await trio.to_thread.run_sync(_timed, train, chunk)
            self._seconds_per_step = elapsed / chunk
            left -= chunk

    def _chunk(self) -> int:
        """Steps in the next chunk: as many as take about `chunk_seconds`, one while unmeasured."""
        if self._seconds_per_step is None:
            return 1
        return max(1, int(self.chunk_seconds / max(self._seconds_per_step, 1e-9)))


def _timed(train: Callable[[int], object], steps: int) -> float:
    start = time.perf_counter()
    train(steps)
    return time.perf_counter() - start


class VirtualCompute:
    """Modeled time: the steps run inline, in one call, then `seconds_per_step * steps` pass on trio's
    clock."""

    def __init__(self, seconds_per_step: float) -> None:
        if seconds_per_step < 0:
            raise ValueError(f"seconds_per_step must be >= 0, got {seconds_per_step}")
        self.seconds_per_step = seconds_per_step

    async def run(self, train: Callable[[int], object], *, steps: int) -> None:
        train(steps)
        await timers.sleep(self.seconds_per_step * steps)
