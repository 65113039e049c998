"""`ThreadCompute`: training in a worker thread that a cancelled round stops after about one step."""

from __future__ import annotations

import threading
import time

import pytest
import torch
import trio
import trio.testing

from p2pfl import Learner, ThreadCompute, VirtualCompute
from p2pfl.datasets import load_digits
from p2pfl.models import mlp


def cancel_after(steps_before_cancel, *, step, compute, steps):
    """Run `steps` steps of `step()` through `compute`; cancel the round from the worker thread once
    `steps_before_cancel` steps ran. Returns how many steps ran, and whether `run` was cancelled."""
    ran = 0

    async def main():
        with trio.CancelScope() as scope:

            def train(n):
                nonlocal ran
                for _ in range(n):
                    step()
                    ran += 1
                    if ran == steps_before_cancel:
                        trio.from_thread.run_sync(scope.cancel)

            await compute.run(train, steps=steps)
        return scope.cancelled_caught

    cancelled = trio.run(main)
    return ran, cancelled


def test_a_cancelled_round_stops_after_the_step_in_progress():
    # Steps that take as long as a chunk run one per thread call, however loaded the machine is:
    # a slower step only makes chunks smaller.
    compute = ThreadCompute(chunk_seconds=0.01)
    ran, cancelled = cancel_after(3, step=lambda: time.sleep(0.01), compute=compute, steps=10**9)
    assert cancelled and ran == 3


def test_a_cancelled_learner_keeps_the_steps_it_took():
    train, _ = load_digits(seed=0)

    def learner():
        return Learner(mlp((64, 8, 10), seed=0), train, seed=0)

    cancelled = learner()
    ran, was_cancelled = cancel_after(
        4, step=lambda: cancelled.train(steps=1), compute=ThreadCompute(chunk_seconds=0), steps=10**9
    )
    assert was_cancelled and ran == 4
    reference = learner()
    reference.train(steps=4)
    for got, want in zip(cancelled.model.parameters(), reference.model.parameters(), strict=True):
        assert torch.equal(got, want)


def test_fast_steps_run_in_few_thread_calls():
    calls, ran = [], 0
    main_thread = threading.get_ident()

    def train(n):
        nonlocal ran
        assert threading.get_ident() != main_thread
        calls.append(n)
        ran += n

    trio.run(lambda: ThreadCompute().run(train, steps=100_000))
    assert ran == 100_000 and calls[0] == 1
    assert len(calls) <= 100  # steps of ~nothing: a few chunks, not a thread hop per step


def test_chunk_seconds_must_not_be_negative():
    with pytest.raises(ValueError, match="chunk_seconds"):
        ThreadCompute(chunk_seconds=-1)


def test_virtual_compute_trains_in_one_call_and_charges_the_steps():
    calls = []

    async def main():
        start = trio.current_time()
        await VirtualCompute(0.5).run(calls.append, steps=4)
        return trio.current_time() - start

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == pytest.approx(2.0)
    assert calls == [4]
