"""Topologies by name, built with networkx from a seed, or read from a graph file.

Built graphs are labelled 0..n-1. A file graph (`load_topology`) keeps its own labels; the emulator
maps them, in `node_order`, onto its nodes, and takes per-edge attributes (latency, bandwidth, loss) from it.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import networkx as nx

from p2pfl.errors import ConfigError


class Topology(ABC):
    """A topology family with its parameters (a frozen dataclass per family).

    Parameter values are checked against the node count by `check`, which builds nothing, so a
    scenario file is refused when it is loaded rather than when its run starts.
    """

    def check(self, n: int) -> None:  # noqa: B027 - a family without parameters has nothing to check
        """Raise `ConfigError` naming the parameter if no graph of this kind has `n` nodes."""

    @abstractmethod
    def build(self, n: int, seed: int) -> nx.Graph:
        """The graph on nodes 0..n-1; call `check` first."""


@dataclass(frozen=True)
class Ring(Topology):
    def build(self, n: int, seed: int) -> nx.Graph:
        return nx.cycle_graph(n)


@dataclass(frozen=True)
class Complete(Topology):
    def build(self, n: int, seed: int) -> nx.Graph:
        return nx.complete_graph(n)


@dataclass(frozen=True)
class RandomRegular(Topology):
    degree: int = 4

    def check(self, n: int) -> None:
        _integer("degree", self.degree)
        if not 0 <= self.degree < n or (n * self.degree) % 2:
            raise ConfigError(
                f"topology.degree: no {self.degree}-regular graph on {n} nodes "
                "(need 0 <= degree < n, n*degree even)"
            )

    def build(self, n: int, seed: int) -> nx.Graph:
        return nx.random_regular_graph(self.degree, n, seed=seed)


@dataclass(frozen=True)
class ErdosRenyi(Topology):
    p: float = 0.1

    def check(self, n: int) -> None:
        _probability("p", self.p)

    def build(self, n: int, seed: int) -> nx.Graph:
        return nx.gnp_random_graph(n, self.p, seed=seed)


@dataclass(frozen=True)
class SmallWorld(Topology):
    """Watts-Strogatz: a ring lattice of `k` neighbours per node, each edge rewired with probability `p`."""

    k: int = 4
    p: float = 0.1

    def check(self, n: int) -> None:
        _integer("k", self.k)
        if not 2 <= self.k < n:
            raise ConfigError(f"topology.k must be in [2, n) = [2, {n}), got {self.k}")
        _probability("p", self.p)

    def build(self, n: int, seed: int) -> nx.Graph:
        return nx.connected_watts_strogatz_graph(n, self.k, self.p, seed=seed)


@dataclass(frozen=True)
class Grid(Topology):
    """A 2-D grid, `rows` x n/rows (default: the squarest that divides n)."""

    rows: int | None = None
    periodic: ClassVar[bool] = False

    def check(self, n: int) -> None:
        if self.rows is not None:
            _integer("rows", self.rows)
            if self.rows < 1 or n % self.rows:
                raise ConfigError(f"topology.rows: {self.rows} rows do not divide {n} nodes")

    def build(self, n: int, seed: int) -> nx.Graph:
        rows = self.rows or _squarest_divisor(n)
        return nx.convert_node_labels_to_integers(nx.grid_2d_graph(rows, n // rows, periodic=self.periodic))


@dataclass(frozen=True)
class Torus(Grid):
    """A 2-D grid with wrap-around."""

    periodic: ClassVar[bool] = True


@dataclass(frozen=True)
class BarabasiAlbert(Topology):
    """Preferential attachment: each new node links to `m` existing ones."""

    m: int = 2

    def check(self, n: int) -> None:
        _integer("m", self.m)
        if not 1 <= self.m < n:
            raise ConfigError(f"topology.m must be in [1, n) = [1, {n}), got {self.m}")

    def build(self, n: int, seed: int) -> nx.Graph:
        return nx.barabasi_albert_graph(n, self.m, seed=seed)


def _integer(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"topology.{name} must be an integer, got {value!r}")


def _probability(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"topology.{name} must be a probability in [0, 1], got {value!r}")


def _squarest_divisor(n: int) -> int:
    return max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)


BUILDERS: dict[str, type[Topology]] = {
    "ring": Ring,
    "random_regular": RandomRegular,
    "erdos_renyi": ErdosRenyi,
    "small_world": SmallWorld,
    "watts_strogatz": SmallWorld,
    "complete": Complete,
    "torus": Torus,
    "grid": Grid,
    "barabasi_albert": BarabasiAlbert,
}

_READERS: dict[str, Callable[[Path], nx.Graph]] = {
    ".graphml": nx.read_graphml,
    ".gml": nx.read_gml,
    ".edgelist": lambda path: nx.read_edgelist(path, data=True),
    ".edges": lambda path: nx.read_edgelist(path, data=True),
    ".txt": lambda path: nx.read_edgelist(path, data=True),
}


_INTEGER = re.compile(r"-?[0-9]+")


def node_order(graph: nx.Graph) -> list[Any]:
    """`graph`'s labels in the order of node indices: numbers by value, then other labels as text.

    GraphML and edge lists store labels as text, so sorting them as text would put "10" before
    "2" and give node index 2 (in churn events, CSVs, Byzantine picks) to the node labelled "10".
    """

    def key(label: Any) -> tuple[int, int, str]:
        text = str(label)
        if _INTEGER.fullmatch(text):  # ASCII digits only: "²" is a digit to str.isdigit, not to int
            return (0, int(text), "")
        return (1, 0, text)

    return sorted(graph.nodes, key=key)


def load_topology(path: str | Path) -> nx.Graph:
    """Read a graph file networkx understands (GraphML, GML, edge list), chosen by its suffix.

    Directed graphs become undirected (links here are two-way). `ConfigError` names the file and
    what is wrong with it.
    """
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(f"topology file {path}: unknown suffix; use one of {sorted(_READERS)}")
    try:
        graph = reader(path)
    except (OSError, nx.NetworkXError, ValueError, TypeError, SyntaxError) as exc:
        raise ConfigError(f"topology file {path}: {exc}") from exc
    graph = nx.Graph(graph)
    graph.remove_edges_from(nx.selfloop_edges(graph))
    if graph.number_of_nodes() < 2:
        raise ConfigError(f"topology file {path}: needs at least 2 nodes, has {graph.number_of_nodes()}")
    return graph


def topology(name: str, **params: float) -> Topology:
    """Topology `name` with `params` (its own: degree, p, k, ...); `ConfigError` names a bad one."""
    if name not in BUILDERS:
        raise ConfigError(f"topology: unknown name {name!r}; choose one of {sorted(BUILDERS)}")
    family = BUILDERS[name]
    accepted = [f.name for f in fields(family)]
    if unknown := sorted(set(params) - set(accepted)):
        raise ConfigError(
            f"topology_params: {unknown} not accepted by topology {name!r}; it accepts {accepted or 'none'}"
        )
    return family(**params)


def build_topology(name: str, n: int, *, seed: int, **params: float) -> nx.Graph:
    """Build topology `name` on `n` nodes; `params` are the family's own (degree, p, k, ...)."""
    spec = topology(name, **params)
    check_size(spec, n)
    return spec.build(n, seed)


def check_size(spec: Topology, n: int) -> None:
    """Whether `spec` has a graph on `n` nodes; `ConfigError` names the parameter that rules it out."""
    if n < 2:
        raise ConfigError(f"nodes must be >= 2, got {n}")
    spec.check(n)
