import pytest
import trio
import trio.testing

from gossip import timers


def run(main):
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_sleepers_wake_at_their_deadlines_in_deadline_order():
    woke = []

    async def sleeper(name, deadline):
        await timers.sleep_until(deadline)
        woke.append((name, trio.current_time()))

    async def main():
        async with trio.open_nursery() as nursery:
            for name, deadline in [("late", 5.0), ("a", 2.0), ("b", 2.0), ("early", 1.0)]:
                nursery.start_soon(sleeper, name, deadline)
                await trio.testing.wait_all_tasks_blocked()  # park in this order

    run(main)
    # trio runs the tasks woken together in either order, so "a" and "b" may swap.
    assert sorted(woke, key=lambda w: w[1]) == woke
    assert sorted(woke) == [("a", 2.0), ("b", 2.0), ("early", 1.0), ("late", 5.0)]


def test_a_new_earlier_deadline_is_not_held_up_by_the_later_one_the_timer_waits_for():
    woke = {}

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _record(woke, "far", 100.0))
            await trio.sleep(1.0)
            nursery.start_soon(lambda: _record(woke, "near", 3.0))

    run(main)
    assert woke == {"near": 3.0, "far": 100.0}


async def _record(woke, name, deadline):
    await timers.sleep_until(deadline)
    woke[name] = trio.current_time()


def test_a_cancelled_sleeper_stops_at_once_and_the_others_still_wake_on_time():
    woke = {}

    async def main():
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(2.0) as scope:
                nursery.start_soon(lambda: _record(woke, "kept", 5.0))
                await timers.sleep(10.0)
            assert scope.cancelled_caught and trio.current_time() == 2.0

    run(main)
    assert woke == {"kept": 5.0}


def test_sleeping_zero_or_into_the_past_is_still_a_checkpoint():
    async def main():
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await timers.sleep(0)
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await timers.sleep_until(trio.current_time() - 1)
        with pytest.raises(ValueError, match="seconds"):
            await timers.sleep(-1)

    run(main)


def test_runs_do_not_share_timers():
    async def main():
        await timers.sleep(1.0)
        return trio.current_time()

    assert run(main) == 1.0
    assert run(main) == 1.0
