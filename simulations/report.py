"""Reporting on emulated runs: CSV tables, node states for pictures, and a progress bar.

`write_csv` turns an `EmulationResult` (one run) or a `ScenarioResult` (several variants) into two
tables a spreadsheet or pandas reads directly:

- rounds.csv: one row per variant and evaluated round (the fields of `RoundSummary`);
- nodes.csv: one row per variant and node (the fields of `NodeSummary`, plus `state`).

A single run is reported as the variant "default", as a scenario file without variants would be.
The plots live in `simulations.plots`, so that reading CSVs never imports matplotlib.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, runtime_checkable

import networkx as nx

from simulations.results import EmulationResult, NodeSummary, RoundSummary
from simulations.topology import node_order

if TYPE_CHECKING:
    from types import TracebackType

    from simulations.scenario import ScenarioResult

DEFAULT_VARIANT = "default"

# What a node was when the run ended, for nodes.csv and the topology picture. A churn state wins
# over "byzantine" (a crashed attacker no longer attacks), which wins over "joined". "partitioned"
# marks the side a partition named, while that partition was still in force at the end; crashing,
# leaving or never joining wins over it.
STATES = ("honest", "byzantine", "joined", "partitioned", "crashed", "left", "absent")

ROUND_COLUMNS = ("variant", *(f.name for f in fields(RoundSummary)))
_NODE_FIRST = ("peer", "byzantine", "state")
_NODE_LISTS = ("accuracy_trace",)  # per-round lists go to node_rounds.csv, one row per entry
NODE_COLUMNS = (
    "variant",
    *_NODE_FIRST,
    *(f.name for f in fields(NodeSummary) if f.name not in _NODE_FIRST + _NODE_LISTS),
)
NODE_ROUND_COLUMNS = ("variant", "peer", "round", "accuracy")


def variants_of(result: EmulationResult | ScenarioResult) -> dict[str, EmulationResult]:
    """A scenario's results by variant name, or a single run as the variant "default"."""
    if isinstance(result, EmulationResult):
        return {DEFAULT_VARIANT: result}
    return dict(result.results)


def write_csv(result: EmulationResult | ScenarioResult, directory: str | Path) -> list[Path]:
    """Write rounds.csv and nodes.csv into `directory` (created if needed); return their paths.

    Runs with per-node traces (`EmulationConfig.record_nodes`) also get node_rounds.csv. Empty
    cells stand for None (a node that never evaluated has no final accuracy).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rounds_path, nodes_path = directory / "rounds.csv", directory / "nodes.csv"
    variants = variants_of(result)
    with rounds_path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=ROUND_COLUMNS)
        writer.writeheader()
        for name, run in variants.items():
            for summary in run.rounds:
                writer.writerow({"variant": name, **asdict(summary)})
    with nodes_path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=NODE_COLUMNS)
        writer.writeheader()
        for name, run in variants.items():
            states = node_states(run)
            for index, summary in enumerate(run.nodes):
                row = {k: v for k, v in asdict(summary).items() if k not in _NODE_LISTS}
                writer.writerow({"variant": name, **row, "state": states[index]})
    paths = [rounds_path, nodes_path]
    traces = [(name, n) for name, run in variants.items() for n in run.nodes if n.accuracy_trace]
    if traces:
        paths.append(directory / "node_rounds.csv")
        with paths[-1].open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(NODE_ROUND_COLUMNS)
            for name, node in traces:
                writer.writerows((name, node.peer, r, accuracy) for r, accuracy in node.accuracy_trace)
    return paths


def node_states(result: EmulationResult) -> dict[int, str]:
    """Each node's state (one of `STATES`) when the run ended, by node index (the graph's order).

    Churn events count if the run got to their round (`rounds_reached`); a joiner whose round never
    came is "absent".
    """
    states = {i: "byzantine" if node.byzantine else "honest" for i, node in enumerate(result.nodes)}
    cut_off: tuple[int, ...] = ()  # the named side of the partition in force, if any
    for event in result.churn:
        applied = event.round <= result.rounds_reached
        if event.action in ("partition", "heal"):
            if applied:  # a partition replaces the one before; heal names no nodes
                cut_off = event.nodes
            continue
        for index in event.nodes:
            if event.action == "join":
                if not applied:
                    states[index] = "absent"
                elif states[index] == "honest":
                    states[index] = "joined"
            elif applied:
                states[index] = {"crash": "crashed", "leave": "left"}[event.action]
    for index in cut_off:
        if states[index] in ("honest", "byzantine", "joined"):
            states[index] = "partitioned"
    return states


def topology_of(result: EmulationResult) -> nx.Graph:
    """The graph a run started on, labelled by node index."""
    if result.graph is None:
        raise ValueError("this result carries no graph")
    return result.graph


@runtime_checkable
class ProgressReporter(Protocol):
    """Told of the run's progress: the newest round any node finished, out of `total`."""

    def update(self, round: int, total: int) -> None: ...


class ProgressBar:
    """A tqdm progress bar over rounds (or another `unit`), as a context manager implementing
    `ProgressReporter`.

    `enabled=None` shows it only when `file` (default stderr) is a terminal; True forces it, False
    turns it off (then `update` does nothing). Rounds only move it forwards.
    """

    def __init__(
        self,
        description: str = "rounds",
        *,
        enabled: bool | None = None,
        file: IO[str] | None = None,
        unit: str = "round",
    ):
        self.description = description
        self.unit = unit
        self.file = file if file is not None else sys.stderr
        self.enabled = _is_terminal(self.file) if enabled is None else enabled
        self._bar = None
        self._closed = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def update(self, round: int, total: int) -> None:
        if not self.enabled or self._closed:
            return
        if self._bar is None:
            from tqdm import tqdm  # imported on first use: most runs (tests, CI) show no bar

            self._bar = tqdm(total=total, desc=self.description, unit=self.unit, file=self.file, leave=True)
        if self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()
        if round > self._bar.n:
            self._bar.update(round - self._bar.n)

    @property
    def position(self) -> int:
        """The last round shown (0 before any, or when disabled)."""
        return 0 if self._bar is None else int(self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._closed = True


def _is_terminal(file: IO[str]) -> bool:
    isatty = getattr(file, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed file
        return False


def states_by_label(graph: nx.Graph, states: Mapping[int, str]) -> dict[object, str]:
    """Index-keyed `states` re-keyed by `graph`'s own labels (in the emulator's `node_order`)."""
    return {label: states.get(index, "honest") for index, label in enumerate(node_order(graph))}
