"""Offence records: bans after N offences within the window, expiry, and bounded memory (a fake clock)."""

from __future__ import annotations

import pytest

from transport.penalties import Penalties, PenaltyConfig


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def penalties(**config) -> tuple[Penalties, Clock]:
    clock = Clock()
    return Penalties(PenaltyConfig(**config), clock=clock), clock


def test_a_peer_is_banned_at_its_nth_offence_within_the_window():
    book, clock = penalties(offences=3, window=10, ban_seconds=60)
    assert not book.charge("bad")
    clock.now += 4
    assert not book.charge("bad")
    clock.now += 4
    assert book.charge("bad")  # three offences within 10 s
    assert book.is_banned("bad") and book.ban_left("bad") == 60
    assert not book.is_banned("good") and book.banned() == {"bad": 60}
    clock.now += 45
    assert book.banned() == {"bad": 15}


def test_offences_older_than_the_window_are_forgotten():
    book, clock = penalties(offences=3, window=10)
    for _ in range(50):
        assert not book.charge("flaky")
        clock.now += 6  # never three within 10 s
    assert book.offences("flaky") == 1 and book.banned() == {}
    clock.now += 10
    assert book.offences("flaky") == 0


def test_a_ban_expires_and_the_peer_starts_again_with_a_clean_record():
    book, clock = penalties(offences=2, ban_seconds=5)
    book.charge("p")
    assert book.charge("p")
    clock.now += 5
    assert not book.is_banned("p") and book.banned() == {}
    assert not book.charge("p")  # one offence after the ban: not enough again
    assert book.charge("p")


def test_a_banned_peer_is_not_charged_and_its_ban_not_extended():
    book, clock = penalties(offences=1, ban_seconds=10)
    assert book.charge("p")
    clock.now += 8
    assert not book.charge("p")
    assert book.ban_left("p") == pytest.approx(2)


def test_disabled_penalties_never_ban():
    book, _ = penalties(enabled=False, offences=1)
    assert not any(book.charge("p") for _ in range(10))
    assert book.banned() == {}


def test_memory_is_bounded_by_max_peers():
    book, clock = penalties(offences=2, ban_seconds=10, max_peers=2)
    for peer in ("a", "b", "c"):
        book.charge(peer)
    assert book.offences("a") == 0 and book.offences("b") == book.offences("c") == 1
    for peer in ("x", "y", "z"):  # three bans: the one ending first is lifted
        book.charge(peer)
        book.charge(peer)
        clock.now += 1
    assert set(book.banned()) == {"y", "z"}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"offences": 0}, "offences"),
        ({"window": float("inf")}, "window"),
        ({"ban_seconds": -1}, "ban_seconds"),
        ({"max_peers": 0}, "max_peers"),
    ],
)
def test_config_refuses_bad_values(change, error):
    with pytest.raises(ValueError, match=error):
        PenaltyConfig(**change)
