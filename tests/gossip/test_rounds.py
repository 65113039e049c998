"""Round schedules and sends under a frozen peer: one that accepts connections but never reads.

All in virtual time (trio's MockClock), so the instants asserted are exact and cost no wall time.
"""

import logging

import numpy as np
import pytest
import trio
import trio.testing
from scalar_learning import ScalarLearning
from wrapped_transport import Wrapped

from gossip.dpsgd import DPSGD
from gossip.gossip_learning import GossipLearning
from gossip.rounds import RoundClock, send_to_each
from transport.base import Received
from transport.errors import PeerUnreachable
from transport.memory import open_memory_network
from transport.messages import ModelPayload, ModelUpdate

STALL = 10.0  # what a write to a peer that never reads takes to fail on the libp2p transport


class StallsTowards(Wrapped):
    """A transport whose sends to `frozen` peers fail only after `STALL` s, as libp2p's do."""

    def __init__(self, inner, frozen: set[str]) -> None:
        super().__init__(inner)
        self.frozen = frozen

    async def send(self, peer, message) -> None:
        if peer in self.frozen:
            await trio.sleep(STALL)
            raise PeerUnreachable(f"{peer}: write timed out after {STALL} s")
        await self.inner.send(peer, message)


class SlowOnce(ScalarLearning):
    """Training takes `seconds` in round `round_` (counted by trainings), 0.1 s otherwise."""

    def __init__(self, *, round_: int, seconds: float) -> None:
        super().__init__(0.0)
        self.slow_round, self.seconds = round_, seconds

    async def train(self) -> None:
        await super().train()
        if self.trained == self.slow_round:
            await trio.sleep(self.seconds - 0.1)


def virtual(main):
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_send_to_each_delivers_to_the_others_at_once_and_gives_up_on_a_frozen_peer(caplog):
    arrivals = {}

    async def main():
        async with open_memory_network(latency=0.01) as net:
            sender = net.add_peer("a")
            others = {peer: net.add_peer(peer) for peer in ("b", "c", "d")}
            for peer in others:
                net.connect("a", peer)

            async def note_arrival(peer):
                async for event in others[peer].events:
                    if isinstance(event, Received):
                        arrivals[peer] = trio.current_time()

            async with trio.open_nursery() as nursery:
                for peer in ("c", "d"):
                    nursery.start_soon(note_arrival, peer)
                start = trio.current_time()
                update = ModelUpdate(round=1, model=ModelPayload({"x": np.zeros(1)}, weight=1.0))
                await send_to_each(
                    StallsTowards(sender, {"b"}), ["b", "c", "d"], update, deadline=start + 1.0, what="hello"
                )
                returned = trio.current_time() - start
                nursery.cancel_scope.cancel()
        return returned

    with caplog.at_level(logging.INFO):
        returned = virtual(main)
    assert returned == pytest.approx(1.0)  # the deadline, not the frozen peer's 10 s
    assert arrivals == {"c": pytest.approx(0.01), "d": pytest.approx(0.01)}  # not queued behind b
    gave_up = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gave up sending")]
    assert gave_up == [
        "gave up sending ModelUpdate to b",
        "gave up sending hello at its deadline to the peers still pending",
    ]


def test_dpsgd_with_a_frozen_neighbour_keeps_its_rounds_and_still_reaches_the_others():
    learnings = {peer: ScalarLearning(float(i), peer) for i, peer in enumerate(("hub", "b", "c"))}

    async def main():
        async with open_memory_network(latency=0.01) as net:
            transports = {peer: net.add_peer(peer) for peer in ("a", "hub", "b", "c")}
            for peer in ("a", "b", "c"):  # "a" sorts first: it would be sent to first
                net.connect("hub", peer)
            async with trio.open_nursery() as nursery:
                hub = StallsTowards(transports["hub"], {"a"})
                nursery.start_soon(DPSGD(rounds=4).run, hub, learnings["hub"])
                for peer in ("b", "c"):
                    nursery.start_soon(DPSGD(rounds=4).run, transports[peer], learnings[peer])

    virtual(main)
    # The hub's rounds end on the period, not 10 s apart, and none is skipped...
    assert learnings["hub"].finished == [(r, pytest.approx(float(r))) for r in (1, 2, 3, 4)]
    # ...and b and c get its model within every round, not after the frozen peer's stall.
    for peer in ("b", "c"):
        assert learnings[peer].merged_senders == [["hub"]] * 4
    assert learnings["hub"].merged_senders == [["b", "c"]] * 4


def test_an_overrun_round_skips_the_missed_periods_instead_of_running_them_back_to_back(caplog):
    learning = SlowOnce(round_=2, seconds=3.5)  # round 2 ends at 4.5 instead of 2.0

    async def main():
        async with open_memory_network() as net:
            await GossipLearning(rounds=8, period=1.0).run(net.add_peer("a"), learning)

    with caplog.at_level(logging.WARNING, logger="gossip.rounds"):
        virtual(main)
    assert learning.finished == [
        (1, pytest.approx(1.0)),
        (2, pytest.approx(4.5)),  # late, once
        (5, pytest.approx(5.0)),  # rounds 3 and 4 are skipped: round 5's period holds 4.5
        (6, pytest.approx(6.0)),
        (7, pytest.approx(7.0)),
        (8, pytest.approx(8.0)),
    ]
    assert learning.trained == 6
    assert "skipping 2 missed round(s), on to round 5" in caplog.text


def test_the_last_round_is_never_skipped():
    learning = SlowOnce(round_=6, seconds=3.5)  # round 6 ends at 8.5, in round 9's period

    async def main():
        async with open_memory_network() as net:
            await GossipLearning(rounds=8, period=1.0).run(net.add_peer("a"), learning)

    virtual(main)
    assert [r for r, _ in learning.finished] == [1, 2, 3, 4, 5, 6, 8]


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (3.0, 3),  # on time: the next round
        (3.99, 3),  # late by less than a period: the next round, with what is left of its period
        (4.0, 4),  # a whole period late: its round is skipped
        (7.5, 7),
        (50.0, 9),  # never past the last round
    ],
)
def test_round_clock_next_round(now, expected):
    clock = RoundClock(start=1.0, period=1.0, first=1)  # round 2 ends at 3.0
    assert clock.end(2) == 3.0
    assert clock.next_round(2, 9, now=now) == expected
