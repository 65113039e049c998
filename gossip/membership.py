"""Membership views for MoDeST: who a node knows, when each peer was last active, and who left.

Each node keeps a `View`: for every known peer a `PeerRecord` (last active round, membership index,
JOIN or LEAVE). Views travel with model messages as lists of `ViewEntry` and are merged on arrival.

Merging is per peer and takes, independently,

* the highest ``last_active``, and
* the highest ``(membership_index, status)`` pair, with ``LEAVE > JOIN``: the higher membership
  index wins the status, and on an equal index **LEAVE wins the tie**.

Both are maxima, so merging is commutative, associative and idempotent: nodes that exchange entries
in any order and any grouping end with the same view. LEAVE wins ties because two different status
claims with the same index can only come from concurrent writers (e.g. a peer that leaves while
someone else records it as joined), and it is safer not to sample a peer that may be gone than to
wait on it. The peer itself is the authority on its own status (see below) and can always win back
a JOIN by bumping its index.

**Own record.** A node only ever *raises* its own membership index. If a merge brings in a record
about the node itself whose ``(index, status)`` beats the local one with the opposite status -- a
stale LEAVE from before a restart, or a JOIN recorded by others after the node left -- the view
re-asserts what the node last said about itself with ``index + 1``, so the correction spreads with
the node's next message. `join(own_id)` / `leave(own_id)` set what the node says about itself.

**Wire.** `ViewEntry` is the wire form (plain ints, so it can be a field of a message, e.g.
``view: list[ViewEntry]``). It is not a top-level message by itself. Entries from the network are
untrusted: `ViewEntry.to_record` and `View.merge` raise `ValueError` naming the bad field (negative
round or index, unknown status, empty peer id), and `View.merge` checks every entry before it applies
any, so a bad message changes nothing.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType

__all__ = ["MemberList", "PeerRecord", "Status", "View", "ViewEntry", "merge_records"]


class Status(IntEnum):
    """A peer's membership status. The numeric order matters: on equal index, the larger wins."""

    JOIN = 0
    LEAVE = 1


def _check_count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where} must be a non-negative int, got {value!r}")
    return value


def _check_status(value: object, where: str) -> Status:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be an int status code, got {value!r}")
    try:
        return Status(value)
    except ValueError:
        known = ", ".join(f"{s.value} ({s.name})" for s in Status)
        raise ValueError(f"{where}: unknown status {value!r}; known: {known}") from None


def _check_peer(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where} must be a non-empty str, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """What a node knows about one peer. Fields are validated on construction (`ValueError`)."""

    last_active: int
    membership_index: int
    status: Status

    def __post_init__(self) -> None:
        _check_count(self.last_active, "PeerRecord.last_active")
        _check_count(self.membership_index, "PeerRecord.membership_index")
        object.__setattr__(self, "status", _check_status(self.status, "PeerRecord.status"))


def merge_records(a: PeerRecord, b: PeerRecord) -> PeerRecord:
    """The least upper bound of two records of the same peer (commutative, associative, idempotent).

    Highest ``last_active``; highest ``(membership_index, status)`` with LEAVE beating JOIN on a tie.
    """
    status_of = max((a.membership_index, a.status), (b.membership_index, b.status))
    last_active = max(a.last_active, b.last_active)
    if last_active == a.last_active and status_of == (a.membership_index, a.status):
        return a
    if last_active == b.last_active and status_of == (b.membership_index, b.status):
        return b
    return PeerRecord(last_active, status_of[0], status_of[1])


@dataclass(frozen=True, slots=True)
class ViewEntry:
    """Wire form of one peer's record: plain ints, so the codec can carry it inside a message.

    Fields: ``peer`` (peer id), ``last_active`` (round), ``membership_index``, ``status``
    (`Status` value: 0 JOIN, 1 LEAVE). Not validated on construction, since decoded entries are
    untrusted; `to_record` validates.
    """

    peer: str
    last_active: int
    membership_index: int
    status: int

    @classmethod
    def from_record(cls, peer: str, record: PeerRecord) -> ViewEntry:
        return cls(peer, record.last_active, record.membership_index, int(record.status))

    def to_record(self) -> PeerRecord:
        """Validate and convert; `ValueError` names the bad field (the caller drops the entry)."""
        _check_peer(self.peer, "ViewEntry.peer")
        return PeerRecord(
            _check_count(self.last_active, "ViewEntry.last_active"),
            _check_count(self.membership_index, "ViewEntry.membership_index"),
            _check_status(self.status, "ViewEntry.status"),
        )


@dataclass(frozen=True, eq=False)
class MemberList:
    """The members every node of a deployment starts from, each joined at `round`; shared, immutable.

    A `View` built on it stores only what differs from it, so 100,000 emulated nodes share one list
    instead of holding 100,000 copies, and a view travels as its differences (`View.delta`) plus the
    list's `digest`: a receiver with the same digest has the rest already.
    """

    peers: frozenset[str]
    round: int = 0

    @classmethod
    def of(cls, peers: Iterable[str], *, round: int = 0) -> MemberList:
        return cls(frozenset(_check_peer(p, "peer") for p in peers), _check_count(round, "round"))

    def __contains__(self, peer: object) -> bool:
        return peer in self.peers

    def __len__(self) -> int:
        return len(self.peers)

    @functools.cached_property
    def record(self) -> PeerRecord:
        """Every member's record: what `View.join(member, round)` gives on an empty view."""
        return PeerRecord(self.round, 1, Status.JOIN)

    @functools.cached_property
    def digest(self) -> bytes:
        h = hashlib.sha256(self.round.to_bytes(8, "big"))
        for peer in sorted(self.peers):
            h.update(peer.encode("utf-8") + b"\0")
        return h.digest()[:16]


class View:
    """One node's membership view: peer id -> `PeerRecord`. Not thread-safe (one trio task owns it).

    A peer absent from the view is treated as if it had the record ``(0, 0, JOIN)`` when a local
    update touches it, so the first `join` gives index 1 and the first `leave` index 1 LEAVE.
    A view made `with_members` holds a shared `MemberList` plus the records that differ from it.
    """

    __slots__ = ("_base", "_own_id", "_own_status", "_records")

    def __init__(self, own_id: str, entries: Iterable[ViewEntry] = ()) -> None:
        self._own_id = _check_peer(own_id, "View.own_id")
        self._base: MemberList | None = None
        self._records: dict[str, PeerRecord] = {}  # those that differ from the base, if any
        # What this node last said about itself (None until join/leave of own_id).
        self._own_status: Status | None = None
        self.merge(entries)

    @classmethod
    def with_members(cls, own_id: str, peers: MemberList | Iterable[str], *, round: int = 0) -> View:
        """A view in which every one of `peers` joined at `round` (a `MemberList` brings its own
        round): what `join` gives each, without a copy per node of the shared list."""
        view = cls(own_id)
        view._base = peers if isinstance(peers, MemberList) else MemberList.of(peers, round=round)
        return view

    @property
    def own_id(self) -> str:
        return self._own_id

    @property
    def base(self) -> MemberList | None:
        return self._base

    @property
    def base_digest(self) -> bytes:
        """The digest of the member list this view was made with; empty when it has none."""
        return self._base.digest if self._base is not None else b""

    def overrides(self) -> Mapping[str, PeerRecord]:
        """The records that differ from the member list (all of them without one); read-only, live."""
        return MappingProxyType(self._records)

    def record(self, peer: str) -> PeerRecord | None:
        record = self._records.get(peer)
        if record is None and self._base is not None and peer in self._base.peers:
            return self._base.record
        return record

    def records(self) -> dict[str, PeerRecord]:
        """A copy of all records, by peer id."""
        base = dict.fromkeys(self._base.peers, self._base.record) if self._base is not None else {}
        return base | self._records

    def __len__(self) -> int:
        if self._base is None:
            return len(self._records)
        return len(self._base) + sum(1 for peer in self._records if peer not in self._base.peers)

    def __contains__(self, peer: object) -> bool:
        return peer in self._records or (self._base is not None and peer in self._base.peers)

    def __iter__(self) -> Iterator[str]:
        """Known peer ids, sorted."""
        return iter(sorted(self.records()))

    def __repr__(self) -> str:
        return f"View(own_id={self._own_id!r}, {len(self)} peers)"

    def _put(self, peer: str, record: PeerRecord) -> None:
        base = self._base
        if base is not None and record == base.record and peer in base.peers:
            self._records.pop(peer, None)
        else:
            self._records[peer] = record

    # --- local updates ----------------------------------------------------------------------------

    def _set_status(self, peer: str, round: int, status: Status) -> PeerRecord:
        _check_peer(peer, "peer")
        _check_count(round, "round")
        known = self.record(peer)
        old = known or PeerRecord(0, 0, Status.JOIN)
        index = old.membership_index
        if known is None or old.status is not status:
            index += 1  # only a change of status needs a new index; repeating one is idempotent
        new = PeerRecord(max(old.last_active, round), index, status)
        self._put(peer, new)
        if peer == self._own_id:
            self._own_status = status
        return new

    def join(self, peer: str, round: int) -> PeerRecord:
        """Record that `peer` joined (or is active again) at `round`; bumps its index on a change."""
        return self._set_status(peer, round, Status.JOIN)

    def leave(self, peer: str, round: int) -> PeerRecord:
        """Record that `peer` left at `round`; bumps its index on a change."""
        return self._set_status(peer, round, Status.LEAVE)

    def mark_active(self, peer: str, round: int) -> PeerRecord:
        """Raise `peer`'s last active round to `round` (never lowers it); status is unchanged.

        An unknown peer gets the implicit record ``(round, 0, JOIN)``: hearing from it is evidence it
        is a member, and any explicit join or leave (index >= 1) overrides it.
        """
        _check_peer(peer, "peer")
        _check_count(round, "round")
        old = self.record(peer)
        if old is None:
            new = PeerRecord(round, 0, Status.JOIN)
        elif round > old.last_active:
            new = PeerRecord(round, old.membership_index, old.status)
        else:
            return old
        self._put(peer, new)
        return new

    # --- merging ----------------------------------------------------------------------------------

    def merge(self, other: View | Iterable[ViewEntry]) -> list[str]:
        """Merge another view or wire entries into this one; returns the peers whose record changed.

        Entries are all validated first: one bad entry raises `ValueError` (naming the field) and
        leaves the view unchanged. To keep the good entries of a bad message instead, validate each
        with `ViewEntry.to_record` and merge the survivors.
        """
        if isinstance(other, View):
            incoming = list(other.records().items())
        else:
            incoming = [(entry.peer, entry.to_record()) for entry in other]
        changed: set[str] = set()
        for peer, record in incoming:
            old = self.record(peer)
            new = record if old is None else merge_records(old, record)
            if new != old:
                self._put(peer, new)
                changed.add(peer)
        if self._own_id in changed:
            self._reassert_own_status()
        return sorted(changed)

    def _reassert_own_status(self) -> None:
        own = self.record(self._own_id)
        assert own is not None
        if self._own_status is not None and own.status is not self._own_status:
            self._put(self._own_id, PeerRecord(own.last_active, own.membership_index + 1, self._own_status))

    # --- queries ----------------------------------------------------------------------------------

    def active(self, round: int, inactivity_threshold: int) -> list[str]:
        """Candidates for sampling at `round`, sorted by peer id.

        A peer is active when it has not left and ``last_active >= round - inactivity_threshold``;
        a crashed peer drops out once it has not been heard of for more than the threshold. This
        node itself is always included, whatever its record says.
        """
        _check_count(round, "round")
        _check_count(inactivity_threshold, "inactivity_threshold")
        oldest = round - inactivity_threshold
        result = {
            peer
            for peer, record in self.records().items()
            if record.status is Status.JOIN and record.last_active >= oldest
        }
        result.add(self._own_id)
        return sorted(result)

    def entries(self) -> list[ViewEntry]:
        """The whole view in wire form, sorted by peer id."""
        return _wire(self.records())

    def delta(self) -> list[ViewEntry]:
        """The records that differ from the member list, in wire form: with `base_digest`, all a
        receiver made with the same list needs (merging a member's base record changes nothing)."""
        return _wire(self._records)


def _wire(records: Mapping[str, PeerRecord]) -> list[ViewEntry]:
    return [ViewEntry.from_record(peer, records[peer]) for peer in sorted(records)]
