"""MoDeST decentralized sampling: a per-round order over candidates, and the available prefix of it.

Every node computes the same **order** for round r from the same candidates: peers sorted by
``sha256(peer_id_utf8 || r as 8-byte big-endian unsigned)``, ties (which need a sha256 collision)
broken by peer id. Python's `hash()` is salted per process and is never used.

**Sample(r)** is the first s candidates of that order that answer a ping (`select_available`).
Because `select_available` returns the first `count` available candidates *in order position*, its
result for a smaller count is a prefix of its result for a larger one (given the same answers), so
the aggregators for models of round r -- the first a available nodes of Sample(r+1) -- are simply
``await select_available(sample_order(active, r + 1), a, ...)``.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator

import trio

from gossip.membership import MemberList, Status, View

__all__ = ["DEFAULT_PING_TIMEOUT", "active_order", "order_key", "sample_order", "select_available"]

DEFAULT_PING_TIMEOUT = 5.0  # seconds, as in the MoDeST reference code

_MAX_ROUND = 2**64 - 1


def order_key(peer: str, round: int) -> bytes:
    """The sort key of `peer` in `round`: ``sha256(peer.encode("utf-8") + round.to_bytes(8, "big"))``."""
    if isinstance(round, bool) or not isinstance(round, int) or not 0 <= round <= _MAX_ROUND:
        raise ValueError(f"round must be an int in [0, 2**64), got {round!r}")
    return hashlib.sha256(peer.encode("utf-8") + round.to_bytes(8, "big")).digest()


def sample_order(candidates: Iterable[str], round: int) -> list[str]:
    """The distinct `candidates` sorted by `order_key` for `round` (then by peer id).

    The result depends only on the set of candidates and the round, not on their input order or on
    the process, so every node with the same view computes the same order.
    """
    order_key("", round)  # validate round even when there are no candidates
    return list(_order(tuple(sorted(set(candidates))), round))


@functools.lru_cache(maxsize=64)
def _order(candidates: tuple[str, ...], round: int) -> tuple[str, ...]:
    """Cached: nodes with the same view compute the same order, thousands of times in an emulation."""
    return tuple(sorted(candidates, key=lambda peer: (order_key(peer, round), peer)))


def active_order(view: View, round: int, inactivity_threshold: int) -> Iterator[str]:
    """`sample_order(view.active(round, inactivity_threshold), round)`, lazily and without O(N) work.

    The view's member list is ordered once per round for every view that shares it (cached); the
    few records that differ from it are ordered apart and merged in as the order is consumed, so
    taking the first s of 100,000 candidates costs about s steps, not a sort.
    """
    oldest = round - inactivity_threshold
    overrides = dict(view.overrides())  # a snapshot: the view may change while pings are out
    own = view.own_id
    active = {p for p, r in overrides.items() if r.status is Status.JOIN and r.last_active >= oldest}
    active.add(own)
    apart = sorted((order_key(peer, round), peer) for peer in active)
    base = view.base
    if base is None or not base.record.last_active >= oldest:
        return (peer for _, peer in apart)
    skip = overrides.keys() | {own}
    members = ((key, peer) for key, peer in _member_order(base, round) if peer not in skip)
    return (peer for _, peer in heapq.merge(members, apart))


@functools.lru_cache(maxsize=4)
def _member_order(members: MemberList, round: int) -> list[tuple[bytes, str]]:
    return sorted((order_key(peer, round), peer) for peer in members.peers)


async def select_available(
    order: Iterable[str],
    count: int,
    is_available: Callable[[str], Awaitable[bool]],
    *,
    timeout: float = DEFAULT_PING_TIMEOUT,
) -> list[str]:
    """The first `count` candidates of `order` that answer, in order position (not answer order).

    Pings run concurrently: the first `count` candidates are pinged at once, and each one that
    answers False (or does not answer within `timeout` seconds, measured on trio's clock from the
    start of its ping) is replaced by the next candidate in order, so at most `count` pings are in
    flight. It returns once every started ping has finished; at that point the ones that answered
    are exactly the first `count` available candidates (or all available ones, if fewer). Duplicate
    candidates count once. No task is left running when it returns.

    `is_available(peer)` should return True if the peer answers; it is cancelled at the timeout.
    Re-pinging within the timeout (MoDeST re-pings every second) is its business. Exceptions it
    raises are not taken as "unavailable": they propagate (after the other pings are cancelled), so
    a ping built on a transport should catch its own network errors and return False.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    if not (isinstance(timeout, int | float) and timeout > 0) or math.isnan(timeout):
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    source = _distinct(order)
    candidates: list[str] = []  # drawn from `order` as needed: it may be long and lazy
    answered: list[bool] = []

    def draw() -> int | None:
        peer = next(source, None)
        if peer is None:
            return None
        candidates.append(peer)
        answered.append(False)
        return len(candidates) - 1

    failure: list[Exception] = []

    async def ping(index: int, nursery: trio.Nursery) -> None:
        ok = False
        try:
            with trio.move_on_after(timeout):
                ok = bool(await is_available(candidates[index]))
        except Exception as exc:  # re-raised bare below, not wrapped in the nursery's ExceptionGroup
            failure.append(exc)
            nursery.cancel_scope.cancel()
            return
        answered[index] = ok
        if not ok and (following := draw()) is not None:
            nursery.start_soon(ping, following, nursery)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            if (index := draw()) is None:
                break
            nursery.start_soon(ping, index, nursery)
    if failure:
        raise failure[0]
    return [peer for peer, ok in zip(candidates, answered, strict=True) if ok]


def _distinct(peers: Iterable[str]) -> Iterator[str]:
    seen: set[str] = set()
    for peer in peers:
        if peer not in seen:
            seen.add(peer)
            yield peer
