"""Topologies by name, built with networkx from a seed, or read from a graph file.

Built graphs are labelled 0..n-1. A file graph (`load_topology`) keeps its own labels; the emulator
maps them, sorted, onto its nodes, and takes per-edge attributes (latency, bandwidth, loss) from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import networkx as nx

from p2pfl.errors import ConfigError


def _ring(n: int, seed: int) -> nx.Graph:
    return nx.cycle_graph(n)


def _random_regular(n: int, seed: int, *, degree: int = 4) -> nx.Graph:
    if degree >= n or (n * degree) % 2:
        raise ConfigError(
            f"topology.degree: no {degree}-regular graph on {n} nodes (need degree < n, n*degree even)"
        )
    return nx.random_regular_graph(degree, n, seed=seed)


def _erdos_renyi(n: int, seed: int, *, p: float = 0.1) -> nx.Graph:
    if not 0 <= p <= 1:
        raise ConfigError(f"topology.p must be in [0, 1], got {p}")
    return nx.gnp_random_graph(n, p, seed=seed)


def _small_world(n: int, seed: int, *, k: int = 4, p: float = 0.1) -> nx.Graph:
    if not 2 <= k < n:
        raise ConfigError(f"topology.k must be in [2, n), got {k}")
    return nx.connected_watts_strogatz_graph(n, k, p, seed=seed)


def _complete(n: int, seed: int) -> nx.Graph:
    return nx.complete_graph(n)


def _torus(n: int, seed: int, *, rows: int | None = None) -> nx.Graph:
    """A 2-D grid with wrap-around, `rows` x n/rows (default: the squarest that divides n)."""
    rows = rows or _squarest_divisor(n)
    if rows < 1 or n % rows:
        raise ConfigError(f"topology.rows: {rows} rows do not divide {n} nodes")
    return nx.convert_node_labels_to_integers(nx.grid_2d_graph(rows, n // rows, periodic=True))


def _grid(n: int, seed: int, *, rows: int | None = None) -> nx.Graph:
    rows = rows or _squarest_divisor(n)
    if rows < 1 or n % rows:
        raise ConfigError(f"topology.rows: {rows} rows do not divide {n} nodes")
    return nx.convert_node_labels_to_integers(nx.grid_2d_graph(rows, n // rows))


def _squarest_divisor(n: int) -> int:
    return max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)


def _barabasi_albert(n: int, seed: int, *, m: int = 2) -> nx.Graph:
    if not 1 <= m < n:
        raise ConfigError(f"topology.m must be in [1, n), got {m}")
    return nx.barabasi_albert_graph(n, m, seed=seed)


BUILDERS: dict[str, Callable[..., nx.Graph]] = {
    "ring": _ring,
    "random_regular": _random_regular,
    "erdos_renyi": _erdos_renyi,
    "small_world": _small_world,
    "watts_strogatz": _small_world,
    "complete": _complete,
    "torus": _torus,
    "grid": _grid,
    "barabasi_albert": _barabasi_albert,
}

_READERS: dict[str, Callable[[Path], nx.Graph]] = {
    ".graphml": nx.read_graphml,
    ".gml": nx.read_gml,
    ".edgelist": lambda path: nx.read_edgelist(path, data=True),
    ".edges": lambda path: nx.read_edgelist(path, data=True),
    ".txt": lambda path: nx.read_edgelist(path, data=True),
}


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


def build_topology(name: str, n: int, *, seed: int, **params: float) -> nx.Graph:
    """Build topology `name` on `n` nodes; `params` are the builder's own (degree, p, k)."""
    if name not in BUILDERS:
        raise ConfigError(f"topology: unknown name {name!r}; choose one of {sorted(BUILDERS)}")
    if n < 2:
        raise ConfigError(f"nodes must be >= 2, got {n}")
    try:
        return BUILDERS[name](n, seed, **params)
    except TypeError as exc:
        raise ConfigError(f"topology {name!r}: bad parameters {sorted(params)}: {exc}") from exc
