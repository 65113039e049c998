"""Topologies by name, built with networkx from a seed. Nodes are labelled 0..n-1."""

from __future__ import annotations

from collections.abc import Callable

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


BUILDERS: dict[str, Callable[..., nx.Graph]] = {
    "ring": _ring,
    "random_regular": _random_regular,
    "erdos_renyi": _erdos_renyi,
    "small_world": _small_world,
    "complete": _complete,
}


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
