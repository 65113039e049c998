"""MoDeST sampling: the per-round hash order, availability selection in virtual time, and settings."""

import hashlib
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.membership import View
from gossip.modest_settings import ModestSettings
from gossip.sampling import DEFAULT_PING_TIMEOUT, active_order, sample_order, select_available

ROOT = Path(__file__).resolve().parents[2]
PEERS = ["alice", "bob", "carol", "dave", "eve"]


def run_virtual(fn, *args):
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


# --- order ---------------------------------------------------------------------------------------


def reference_order(peers, round_):
    """The definition, written out independently: sha256(utf-8 id || round as u64 big-endian)."""
    digest = {p: hashlib.sha256(p.encode("utf-8") + round_.to_bytes(8, "big")).digest() for p in peers}
    return sorted(peers, key=lambda p: (digest[p], p))


# Computed once from the definition above (sha256 prefixes: round 0: eve 305467de, alice 366dcbe7,
# dave 6e4fc794, bob ad4a27cd, carol e9dcca61), so a change of hash, encoding or byte order shows.
EXPECTED = {
    0: ["eve", "alice", "dave", "bob", "carol"],
    1: ["bob", "carol", "dave", "alice", "eve"],
    7: ["alice", "eve", "bob", "dave", "carol"],
}


@pytest.mark.parametrize("round_", sorted(EXPECTED))
def test_order_matches_the_definition_and_fixed_values(round_):
    assert reference_order(PEERS, round_) == EXPECTED[round_]
    assert sample_order(PEERS, round_) == EXPECTED[round_]


def test_order_is_the_same_in_other_processes_whatever_their_hash_seed():
    code = f"from gossip.sampling import sample_order; print(','.join(sample_order({PEERS!r}, 7)))"
    for seed in ("1", "12345"):
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": path}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip().split(",") == EXPECTED[7]


@settings(max_examples=50, deadline=None)
@given(
    peers=st.sets(st.text(min_size=1, max_size=12), min_size=0, max_size=30),
    round_=st.integers(0, 2**64 - 1),
    seed=st.integers(0, 2**32),
)
def test_every_node_gets_the_same_permutation_whatever_its_input_order(peers, round_, seed):
    listed = sorted(peers)
    shuffled = listed[:]
    random.Random(seed).shuffle(shuffled)
    order = sample_order(listed, round_)
    assert sample_order(shuffled, round_) == order
    assert sample_order(iter(shuffled), round_) == order
    assert sorted(order) == listed  # a permutation of the candidates
    assert order == reference_order(listed, round_)


def test_duplicates_collapse():
    assert sample_order(PEERS + PEERS[:2], 0) == EXPECTED[0]


def test_different_rounds_give_different_orders_and_each_peer_leads_about_equally_often():
    peers = [f"peer-{i}" for i in range(20)]
    orders = [tuple(sample_order(peers, r)) for r in range(200)]
    assert len(set(orders)) == len(orders)
    leaders = Counter(sample_order(peers, r)[0] for r in range(2000))
    assert set(leaders) == set(peers)
    assert all(50 <= n <= 150 for n in leaders.values()), leaders  # 100 expected each


@pytest.mark.parametrize("bad", [-1, 2**64, 1.0, True, "3"])
def test_order_refuses_rounds_that_do_not_fit_eight_bytes(bad):
    with pytest.raises(ValueError, match="round"):
        sample_order(PEERS, bad)
    with pytest.raises(ValueError, match="round"):
        sample_order([], bad)


# --- select_available ----------------------------------------------------------------------------


class Pinger:
    """Scripted peers: each answers `answer` after `delay` virtual seconds; absent ones never answer."""

    def __init__(self, script):
        self.script = script
        self.started: list[str] = []
        self.finished: list[str] = []  # completion order, including cancelled pings
        self.answered: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, peer):
        self.started.append(peer)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            delay, answer = self.script.get(peer, (float("inf"), True))
            await trio.sleep(delay)
            if isinstance(answer, Exception):
                raise answer
            self.answered.append(peer)
            return answer
        finally:
            self.in_flight -= 1
            self.finished.append(peer)


def select(order, count, script, **kwargs):
    pinger = Pinger(script)

    async def main():
        start = trio.current_time()
        chosen = await select_available(order, count, pinger, **kwargs)
        assert pinger.in_flight == 0  # nothing still running after it returned
        return chosen, trio.current_time() - start

    chosen, elapsed = run_virtual(main)
    return chosen, elapsed, pinger


ORDER = [f"n{i}" for i in range(10)]


def test_all_available_gives_the_first_count_in_order_position_not_answer_order():
    # Earlier candidates answer later: n0 after 4 s, n1 after 3 s, ...
    script = {p: (4.0 - i, True) for i, p in enumerate(ORDER[:4])}
    chosen, elapsed, pinger = select(ORDER, 4, script)
    assert chosen == ["n0", "n1", "n2", "n3"]
    assert pinger.answered == ["n3", "n2", "n1", "n0"]
    assert sorted(pinger.started) == ORDER[:4]  # no one beyond the sample was pinged
    assert elapsed == pytest.approx(4.0)


def test_unavailable_and_silent_candidates_are_replaced_by_the_next_in_order():
    script = {
        "n0": (2.0, True),
        "n1": (0.5, False),  # says no: replaced at once
        "n2": (9.0, True),  # answers too late: replaced at the timeout
        "n3": (0.1, True),
        "n4": (1.0, True),
        "n5": (0.1, True),
    }
    chosen, elapsed, pinger = select(ORDER, 3, script, timeout=5.0)
    assert chosen == ["n0", "n3", "n4"]
    assert sorted(pinger.started) == ["n0", "n1", "n2", "n3", "n4"]
    assert pinger.max_in_flight <= 3
    assert "n2" in pinger.finished and "n2" not in pinger.answered  # cancelled at the timeout
    assert elapsed == pytest.approx(6.0)  # n2 times out at 5 s, then n4 answers 1 s later


def test_timeout_is_respected_in_virtual_time():
    # Nobody answers: every ping times out; two slots, six candidates: three timeouts in a row.
    chosen, elapsed, pinger = select(ORDER[:6], 2, {}, timeout=DEFAULT_PING_TIMEOUT)
    assert chosen == []
    assert sorted(pinger.started) == ORDER[:6]
    assert pinger.answered == []
    assert elapsed == pytest.approx(3 * DEFAULT_PING_TIMEOUT)


def test_fewer_available_than_count_returns_those_available():
    script = {"n1": (1.0, True), "n4": (2.0, True), "n7": (0.5, True)}
    script.update({p: (0.2, False) for p in ORDER if p not in script})
    chosen, _, pinger = select(ORDER, 5, script)
    assert chosen == ["n1", "n4", "n7"]
    assert sorted(pinger.started) == ORDER


def test_count_zero_pings_nobody_and_count_beyond_the_order_pings_everyone_once():
    chosen, elapsed, pinger = select(ORDER, 0, {})
    assert chosen == [] and pinger.started == [] and elapsed == 0
    script = {p: (1.0, True) for p in ORDER}
    chosen, _, pinger = select(ORDER + ORDER[:3], 50, script)
    assert chosen == ORDER
    assert sorted(pinger.started) == ORDER  # duplicates are pinged once


def test_an_exception_from_the_ping_propagates_and_cancels_the_others():
    script = {"n0": (10.0, True), "n1": (1.0, RuntimeError("boom")), "n2": (10.0, True)}
    pinger = Pinger(script)

    async def main():
        with pytest.raises(RuntimeError, match="boom"):
            await select_available(ORDER, 3, pinger)
        assert pinger.in_flight == 0
        assert trio.current_time() == pytest.approx(1.0)

    run_virtual(main)


@pytest.mark.parametrize(("count", "timeout"), [(-1, 1.0), (1.5, 1.0), (1, 0), (1, -2.0), (1, float("nan"))])
def test_select_refuses_bad_arguments(count, timeout):
    async def main():
        await select_available(ORDER, count, Pinger({}), timeout=timeout)

    with pytest.raises(ValueError, match="count" if timeout == 1.0 else "timeout"):
        run_virtual(main)


@settings(max_examples=100, deadline=None)
@given(
    behaviour=st.lists(
        st.tuples(st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.9, 5.1, 30.0]), st.booleans()),
        min_size=0,
        max_size=12,
    ),
    count=st.integers(0, 14),
)
def test_result_is_the_available_prefix_whatever_the_timing(behaviour, count):
    order = [f"p{i}" for i in range(len(behaviour))]
    script = dict(zip(order, behaviour, strict=True))
    available = [p for p, (delay, ok) in script.items() if ok and delay <= 5.0]
    chosen, elapsed, pinger = select(order, count, script, timeout=5.0)
    assert chosen == available[:count]
    assert pinger.max_in_flight <= count
    # Prefix property: the aggregators (first a of the sample) need only `a` pings' worth of answers.
    for smaller in range(count + 1):
        assert select(order, smaller, script, timeout=5.0)[0] == chosen[:smaller]
    assert elapsed <= 5.0 * max(1, len(order))


# --- settings ------------------------------------------------------------------------------------


def test_settings_defaults_are_the_reference_ones():
    s = ModestSettings()
    assert (s.s, s.a, s.sf, s.ping_timeout, s.ping_interval) == (10, 1, 1.0, 5.0, 1.0)
    assert (s.inactivity_threshold, s.aggregation_timeout, s.min_models) == (50, None, 1)
    assert s.models_needed == 10


@pytest.mark.parametrize(
    ("s", "sf", "needed"), [(10, 0.3, 3), (10, 0.7, 7), (10, 0.75, 8), (8, 0.5, 4), (3, 1e-9, 1), (1, 1.0, 1)]
)
def test_models_needed_is_ceil_of_s_times_sf_without_float_surprises(s, sf, needed):
    assert ModestSettings(s=s, sf=sf).models_needed == needed


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("s", 0),
        ("s", 2.0),
        ("s", True),
        ("a", 0),
        ("a", 11),
        ("sf", 0),
        ("sf", 1.01),
        ("sf", float("nan")),
        ("sf", "1"),
        ("ping_timeout", 0),
        ("ping_timeout", float("inf")),
        ("ping_interval", -1.0),
        ("inactivity_threshold", -1),
        ("inactivity_threshold", 1.5),
        ("aggregation_timeout", 0.0),
        ("aggregation_timeout", float("nan")),
        ("min_models", 0),
        ("min_models", 11),
    ],
)
def test_settings_refuse_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ModestSettings(**{field: value})


def test_settings_report_every_bad_value_at_once():
    with pytest.raises(ValueError, match=r"^a must be .*, got 3; sf must be in \(0, 1\], got 2$"):
        ModestSettings(s=2, a=3, sf=2)


def test_settings_accept_a_stall_proof_configuration():
    s = ModestSettings(s=8, a=2, sf=0.75, aggregation_timeout=30.0, min_models=4, inactivity_threshold=0)
    assert s.models_needed == 6
    with pytest.raises(ValueError, match="min_models"):
        ModestSettings(s=8, sf=0.5, min_models=5)


@settings(max_examples=60, deadline=None)
@given(
    changes=st.lists(
        st.tuples(st.integers(0, 29), st.sampled_from(["active", "leave", "join"]), st.integers(0, 12)),
        max_size=25,
    ),
    round_=st.integers(1, 12),
    threshold=st.integers(0, 6),
)
def test_active_order_equals_the_order_of_the_active_view(changes, round_, threshold):
    view = View.with_members("m3", [f"m{i}" for i in range(25)])
    for peer, action, at in changes:
        name = f"m{peer}"  # m25..m29 are not members: they arrive as differences only
        {"active": view.mark_active, "leave": view.leave, "join": view.join}[action](name, at)
    lazy = list(active_order(view, round_, threshold))
    assert lazy == sample_order(view.active(round_, threshold), round_)


def test_select_available_draws_from_the_order_only_as_far_as_it_needs():
    drawn = []

    def endless():
        i = 0
        while True:
            drawn.append(i)
            yield f"p{i}"
            i += 1

    async def answer(peer):
        return peer not in ("p1", "p2")

    got = trio.run(select_available, endless(), 3, answer)
    assert got == ["p0", "p3", "p4"]
    assert len(drawn) == 5
