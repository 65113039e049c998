"""Membership views: records, wire entries, merge laws, activity, and convergence of gossiped views."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.membership import MemberList, PeerRecord, Status, View, ViewEntry, merge_records
from gossip.modest import MembershipUpdate
from transport import codec

# --- records and wire entries --------------------------------------------------------------------


def test_entry_round_trips_a_record():
    record = PeerRecord(12, 3, Status.LEAVE)
    entry = ViewEntry.from_record("p1", record)
    assert entry == ViewEntry("p1", 12, 3, 1)
    assert type(entry.status) is int
    assert entry.to_record() == record
    assert entry.to_record().status is Status.LEAVE


def test_view_entries_can_travel_inside_a_message():
    """The codec accepts `list[ViewEntry]` as a field annotation and brings the entries back."""
    entries = [ViewEntry("a", 1, 2, 0), ViewEntry("b", 0, 1, 1)]
    update = codec.decode(codec.encode(MembershipUpdate(entries, reply=True, base=b"")))
    assert isinstance(update, MembershipUpdate)
    assert update.view == entries
    assert all(type(entry) is ViewEntry for entry in update.view)


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (ViewEntry("p", -1, 0, 0), "last_active"),
        (ViewEntry("p", 0, -3, 0), "membership_index"),
        (ViewEntry("p", 0, 0, 2), "status"),
        (ViewEntry("p", 0, 0, -1), "status"),
        (ViewEntry("p", 0, 0, True), "status"),
        (ViewEntry("p", True, 0, 0), "last_active"),
        (ViewEntry("", 0, 0, 0), "peer"),
    ],
)
def test_bad_entries_raise_value_error_naming_the_field(entry, field):
    with pytest.raises(ValueError, match=rf"ViewEntry\.{field}"):
        entry.to_record()


def test_unknown_status_error_says_which_are_known():
    with pytest.raises(ValueError, match=r"unknown status 7.*0 \(JOIN\), 1 \(LEAVE\)"):
        ViewEntry("p", 0, 0, 7).to_record()


def test_records_validate_and_coerce_their_status():
    assert PeerRecord(0, 0, 1).status is Status.LEAVE
    with pytest.raises(ValueError, match=r"PeerRecord\.last_active"):
        PeerRecord(-1, 0, Status.JOIN)
    with pytest.raises(ValueError, match=r"PeerRecord\.status"):
        PeerRecord(0, 0, 9)


def test_merge_of_a_bad_message_changes_nothing():
    view = View("me")
    view.join("a", 1)
    before = view.entries()
    with pytest.raises(ValueError, match=r"ViewEntry\.status"):
        view.merge([ViewEntry("b", 5, 1, 0), ViewEntry("c", 5, 1, 9)])
    assert view.entries() == before
    # A caller that wants the good entries validates them one by one.
    good = []
    for entry in [ViewEntry("b", 5, 1, 0), ViewEntry("c", 5, 1, 9)]:
        try:
            entry.to_record()
        except ValueError:
            continue
        good.append(entry)
    assert view.merge(good) == ["b"]


# --- merge laws ----------------------------------------------------------------------------------

records = st.builds(PeerRecord, st.integers(0, 6), st.integers(0, 4), st.sampled_from(Status))
PEER_IDS = ["a", "b", "c", "d"]
entry_lists = st.lists(
    st.builds(
        ViewEntry,
        st.sampled_from(PEER_IDS),
        st.integers(0, 6),
        st.integers(0, 4),
        st.sampled_from([0, 1]),
    ),
    max_size=8,
)


@given(records, records, records)
def test_record_merge_is_a_semilattice_join(x, y, z):
    assert merge_records(x, y) == merge_records(y, x)
    assert merge_records(merge_records(x, y), z) == merge_records(x, merge_records(y, z))
    assert merge_records(x, x) == x
    m = merge_records(x, y)
    assert m.last_active == max(x.last_active, y.last_active)
    assert m.membership_index == max(x.membership_index, y.membership_index)


def test_higher_index_wins_the_status_and_leave_wins_a_tie():
    join_new = PeerRecord(3, 2, Status.JOIN)
    leave_old = PeerRecord(9, 1, Status.LEAVE)
    assert merge_records(join_new, leave_old) == PeerRecord(9, 2, Status.JOIN)
    assert merge_records(PeerRecord(4, 2, Status.JOIN), PeerRecord(1, 2, Status.LEAVE)) == PeerRecord(
        4, 2, Status.LEAVE
    )


def merged(own_id, *entry_lists_):
    view = View(own_id)
    for entries in entry_lists_:
        view.merge(entries)
    return view.entries()


@settings(max_examples=200)
@given(st.lists(entry_lists, min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_merging_views_in_any_order_and_grouping_gives_the_same_view(lists, rnd):
    reference = merged("me", *lists)
    shuffled = lists[:]
    rnd.shuffle(shuffled)
    assert merged("me", *shuffled) == reference
    # Grouping: merge some lists into one view first, then merge that view into another.
    cut = rnd.randrange(len(lists) + 1)
    left, right = View("x"), View("y")
    for entries in lists[:cut]:
        left.merge(entries)
    for entries in lists[cut:]:
        right.merge(entries)
    right.merge(left)
    assert right.entries() == reference
    # Idempotence: merging everything again changes nothing.
    again = View("me", reference)
    for entries in lists:
        assert again.merge(entries) == []
    assert again.entries() == reference


@given(entry_lists)
def test_entries_are_sorted_by_peer_and_one_per_peer(entries):
    view = View("me", entries)
    peers = [e.peer for e in view.entries()]
    assert peers == sorted(set(e.peer for e in entries))
    assert len(view) == len(peers)
    assert all(p in view for p in peers)
    assert list(view) == peers


# --- local updates and activity ------------------------------------------------------------------


def test_join_and_leave_bump_the_index_only_on_a_change():
    view = View("me")
    assert view.join("a", 3) == PeerRecord(3, 1, Status.JOIN)
    assert view.join("a", 5) == PeerRecord(5, 1, Status.JOIN)  # repeated join: idempotent
    assert view.leave("a", 6) == PeerRecord(6, 2, Status.LEAVE)
    assert view.leave("a", 2) == PeerRecord(6, 2, Status.LEAVE)  # never lowers last_active
    assert view.join("a", 7) == PeerRecord(7, 3, Status.JOIN)
    assert view.leave("b", 0) == PeerRecord(0, 1, Status.LEAVE)  # unknown peer leaving


def test_mark_active_only_raises_last_active_and_keeps_status():
    view = View("me")
    assert view.mark_active("a", 4) == PeerRecord(4, 0, Status.JOIN)  # implicit record
    assert view.mark_active("a", 2) == PeerRecord(4, 0, Status.JOIN)
    view.leave("a", 4)
    assert view.mark_active("a", 8) == PeerRecord(8, 1, Status.LEAVE)
    assert view.join("a", 8).membership_index == 2  # explicit join beats the implicit record


@pytest.mark.parametrize("bad", [-1, 1.0, None])
def test_local_updates_refuse_bad_rounds(bad):
    view = View("me")
    for update in (view.join, view.leave, view.mark_active):
        with pytest.raises(ValueError, match="round"):
            update("a", bad)
    with pytest.raises(ValueError, match="round"):
        view.active(bad, 5)
    with pytest.raises(ValueError, match="inactivity_threshold"):
        view.active(5, -1)
    with pytest.raises(ValueError, match="peer"):
        view.join("", 1)
    with pytest.raises(ValueError, match="own_id"):
        View("")


def test_active_drops_leavers_and_peers_silent_beyond_the_threshold_and_always_keeps_self():
    view = View("me")
    for peer in ("a", "b", "c"):
        view.join(peer, 0)
    assert view.active(0, 5) == ["a", "b", "c", "me"]  # self always active, even unrecorded
    view.leave("b", 1)
    assert view.active(1, 5) == ["a", "c", "me"]
    # "c" crashes after round 2; "a" keeps being heard from.
    view.mark_active("c", 2)
    for round_ in range(1, 20):
        view.mark_active("a", round_)
        expected = ["a", "c", "me"] if round_ <= 2 + 5 else ["a", "me"]
        assert view.active(round_, 5) == expected, round_
    # Back after a crash: heard from again, it is a candidate again.
    view.mark_active("c", 19)
    assert view.active(19, 5) == ["a", "c", "me"]
    assert view.active(19, 0) == ["a", "c", "me"]
    view.leave("me", 19)
    assert "me" in view.active(19, 0)


def test_own_status_is_reasserted_when_others_say_otherwise():
    # A restarted node: others remember it left (index 2), its fresh view says index 1 JOIN.
    view = View("me")
    view.join("me", 10)
    assert view.merge([ViewEntry("me", 8, 2, int(Status.LEAVE))]) == ["me"]
    assert view.record("me") == PeerRecord(10, 3, Status.JOIN)
    # Which then wins everywhere it spreads.
    other = View("x", [ViewEntry("me", 8, 2, int(Status.LEAVE))])
    other.merge(view)
    assert other.record("me") == PeerRecord(10, 3, Status.JOIN)
    # And after leaving, a stale JOIN with a higher index does not resurrect it.
    view.leave("me", 11)
    assert view.record("me") == PeerRecord(11, 4, Status.LEAVE)
    view.merge([ViewEntry("me", 11, 5, int(Status.JOIN))])
    assert view.record("me") == PeerRecord(11, 6, Status.LEAVE)
    # A node that never said anything about itself takes what it hears.
    quiet = View("q", [ViewEntry("q", 3, 1, int(Status.LEAVE))])
    assert quiet.record("q") == PeerRecord(3, 1, Status.LEAVE)


# --- convergence of gossiped views ---------------------------------------------------------------


def gossip_until_converged(views, rng, max_exchanges=10_000):
    """Random pairwise push-pull merges until every view is equal; returns exchanges used."""
    for exchange in range(max_exchanges):
        if all(v.entries() == views[0].entries() for v in views):
            return exchange
        a, b = rng.sample(views, 2)
        a.merge(b.entries())
        b.merge(a.entries())
    raise AssertionError("views did not converge")


@pytest.mark.parametrize("seed", range(5))
def test_views_converge_after_joins_leaves_and_crashes(seed):
    rng = random.Random(seed)
    n = 12
    ids = [f"node-{i}" for i in range(n)]
    views = {peer: View(peer) for peer in ids}
    # Everyone joins, each telling only a couple of others (join is applied lazily).
    for round_, peer in enumerate(ids):
        views[peer].join(peer, round_)
        for other in rng.sample([p for p in ids if p != peer], 2):
            views[other].merge(views[peer].entries())
    for peer in ids:
        views[peer].mark_active(peer, 15)
    gossip_until_converged(list(views.values()), rng)
    assert all(len(v) == n for v in views.values())

    # Two nodes leave (announced at once to a neighbour), the rest keep being active, one crashes.
    leavers, crashed = ids[:2], ids[2]
    for peer in leavers:
        views[peer].leave(peer, 20)
        views[ids[5]].merge(views[peer].entries())
    alive = [p for p in ids if p not in leavers and p != crashed]
    for peer in alive:
        views[peer].mark_active(peer, 40)
    remaining = [views[p] for p in alive]
    gossip_until_converged(remaining, rng)

    final = remaining[0]
    assert [final.record(p).status for p in leavers] == [Status.LEAVE] * 2
    threshold = 10
    for view in remaining:
        assert view.active(40, threshold) == sorted(alive)  # leavers out; crashed one silent since 15
        assert view.active(20, threshold) == sorted([*alive, crashed])


def test_with_members_equals_joining_each_member():
    peers = [f"p{i}" for i in range(20)]
    one_by_one = View("p3")
    for peer in peers:
        one_by_one.join(peer, 2)
    at_once = View.with_members("p3", peers, round=2)
    assert at_once.records() == one_by_one.records()
    at_once.join("p3", 2)
    one_by_one.join("p3", 2)
    assert at_once.records() == one_by_one.records()
    with pytest.raises(ValueError, match="peer"):
        View.with_members("p3", ["ok", ""])


# --- views on a shared member list ----------------------------------------------------------------


def test_a_view_on_a_member_list_stores_and_sends_only_what_differs():
    members = MemberList.of([f"p{i}" for i in range(1000)], round=0)
    view = View.with_members("p1", members)
    assert len(view) == 1000 and view.delta() == [] and view.base_digest == members.digest
    view.join("p1", 0)  # what the member list says already: nothing to store
    view.mark_active("p7", 3)
    view.leave("p9", 4)
    view.mark_active("newcomer", 2)
    assert [e.peer for e in view.delta()] == ["newcomer", "p7", "p9"]
    assert len(view) == 1001
    # A view made from the same list merges the differences and ends equal to the whole view.
    other = View.with_members("p2", members)
    other.merge(view.delta())
    reference = View("p2", view.entries())
    assert other.records() == reference.records()


def test_member_list_digests_differ_with_members_and_round():
    assert MemberList.of(["a", "b"]).digest == MemberList.of(["b", "a"]).digest
    assert MemberList.of(["a", "b"]).digest != MemberList.of(["a", "b", "c"]).digest
    assert MemberList.of(["a", "b"]).digest != MemberList.of(["a", "b"], round=1).digest
    assert View("a").base_digest == b""
