"""Churn schedules: which nodes crash, leave or join, and when.

A schedule is written in rounds ("80% of nodes crash at round 10") because that is how people reason
about learning; the emulator applies an event once the run's progress (the newest round any node
has finished) reaches its round. Which nodes an event hits is decided up front from the seed, so a
run is deterministic and the JSON summary can say exactly who did what.

- crash: the host goes silent (messages to and from it vanish, nobody is told);
- leave: the node stops gracefully (a protocol that can, such as MoDeST, tells peers it leaves);
- join: the node is absent at the start and starts at the event's round;
- partition: the network splits in two, the event's nodes on one side and everyone else on the
  other (messages across vanish); heal: it joins again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from p2pfl.errors import ConfigError
from simulations.field_types import check_types

Action = Literal["crash", "leave", "join", "partition", "heal"]
_ACTIONS = ("crash", "leave", "join", "partition", "heal")


@dataclass(frozen=True)
class ChurnEvent:
    """`fraction` of the nodes (rounded down), plus the explicit `nodes` (indices), do `action` at `round`.

    For crash, leave and partition the fraction is of the nodes running at that point; for join, of
    all nodes; heal takes no nodes.
    """

    round: int
    action: Action
    fraction: float = 0.0
    nodes: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_types(ChurnEvent, vars(self))
        if self.action not in _ACTIONS:
            raise ConfigError(f"churn.action must be one of {', '.join(_ACTIONS)}, got {self.action!r}")
        if self.action == "heal" and (self.fraction or self.nodes):
            raise ConfigError("churn: heal takes no fraction or nodes")
        if self.round < (1 if self.action == "join" else 0):
            raise ConfigError(f"churn.round must be >= {1 if self.action == 'join' else 0}, got {self.round}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ConfigError(f"churn.fraction must be in [0, 1], got {self.fraction}")
        if repeated := sorted({n for n in self.nodes if self.nodes.count(n) > 1}):
            raise ConfigError(f"churn at round {self.round}: nodes {repeated} are listed more than once")


@dataclass(frozen=True)
class PlannedEvent:
    round: int
    action: Action
    nodes: tuple[int, ...]


def plan_churn(
    events: tuple[ChurnEvent, ...] | list[ChurnEvent], nodes: int, *, seed: int, protected: frozenset[int]
) -> tuple[frozenset[int], list[PlannedEvent]]:
    """Resolve `events` to node indices: (nodes absent at the start, events in the order they apply).

    `protected` nodes (e.g. the FL server) are never picked by a fraction and may not be named.
    `ConfigError` names an event that names an unknown, protected or unavailable node.
    """
    rng = np.random.default_rng(seed)
    for event in events:
        if bad := [n for n in event.nodes if not 0 <= n < nodes or n in protected]:
            raise ConfigError(f"churn at round {event.round}: nodes {bad} are out of range or protected")
    ordered = sorted(events, key=lambda e: (e.round, e.action != "join"))
    # Joiners first: they are absent from the start, so crash and leave must not pick them early.
    absent: set[int] = set()
    picks: dict[int, tuple[int, ...]] = {}
    for index, event in enumerate(ordered):
        if event.action == "join":
            pool = sorted(set(range(nodes)) - absent - protected - set(event.nodes))
            chosen = _choose(rng, pool, math.floor(event.fraction * nodes)) + list(event.nodes)
            if clash := sorted(absent & set(event.nodes)):
                raise ConfigError(f"churn at round {event.round}: nodes {clash} already join earlier")
            absent.update(chosen)
            picks[index] = tuple(sorted(chosen))
    running = set(range(nodes)) - absent
    if not running:
        raise ConfigError("churn: the joins leave no node to start the run")
    planned = []
    for index, event in enumerate(ordered):
        if event.action == "join":
            running.update(picks[index])
        elif event.action == "heal":
            picks[index] = ()
        elif event.action == "partition":
            pool = sorted(running - set(event.nodes))
            count = math.floor(event.fraction * len(running))
            picks[index] = tuple(sorted(_choose(rng, pool, min(count, len(pool))) + list(event.nodes)))
            # Named nodes that are not running (stopped, or yet to join) may be named, but do not
            # count: a side of crashed nodes only would cut nobody off.
            named = len(running.intersection(picks[index]))
            if not 0 < named < len(running):
                raise ConfigError(
                    f"churn at round {event.round}: a partition needs running nodes on both sides, "
                    f"got {named} of {len(running)} on the named side"
                )
        else:
            if gone := sorted(set(event.nodes) - running):
                raise ConfigError(f"churn at round {event.round}: nodes {gone} are not running then")
            pool = sorted(running - protected - set(event.nodes))
            count = math.floor(event.fraction * len(running))
            picks[index] = tuple(sorted(_choose(rng, pool, min(count, len(pool))) + list(event.nodes)))
            running.difference_update(picks[index])
        planned.append(PlannedEvent(event.round, event.action, picks[index]))
    return frozenset(absent), planned


def _choose(rng: np.random.Generator, pool: list[int], count: int) -> list[int]:
    return [int(n) for n in rng.choice(pool, size=count, replace=False)] if count else []
