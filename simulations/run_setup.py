"""What a run is made of, drawn from its config: the topology, the data split, the nodes' speeds and
links, the Byzantine nodes, the churn plan, the learner pool and the rule for when it ends.

Each random choice has a seed of its own (`simulations.seeds.Purpose`). `check_run` makes these
before a run to find what is wrong in a config; every process of the run makes them again.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import numpy as np

from p2pfl.attacks import choose_byzantine
from p2pfl.datasets import dirichlet_split, iid_split, labels_of
from p2pfl.errors import ConfigError
from simulations.churn import PlannedEvent, plan_churn
from simulations.config import EVENT_DRIVEN, EmulationConfig
from simulations.learner_pool import LearnerPool, poolable
from simulations.seeds import Purpose, derive_seed
from simulations.stopping import RunEnd
from simulations.task import Task
from simulations.topology import build_topology, load_topology
from simulations.transfer_task import TransferTask
from transport.links import LinkParams


def graph_for(config: EmulationConfig, round: int) -> nx.Graph:
    """The topology for rounds from `round` on (0: the start)."""
    if config.topology_file is not None:
        return load_topology(config.topology_file)
    seed = derive_seed(config.seed, Purpose.TOPOLOGY, *((round,) if round else ()))
    return build_topology(config.topology, config.nodes, seed=seed, **config.topology_params)


def data_split(task: Task, config: EmulationConfig) -> list[np.ndarray]:
    seed = derive_seed(config.seed, Purpose.SPLIT)
    if config.partition == "iid":
        return iid_split(len(task.train), config.nodes, seed=seed)
    return dirichlet_split(labels_of(task.train), config.nodes, alpha=config.alpha, seed=seed)


def churn_plan(config: EmulationConfig) -> tuple[frozenset[int], list[PlannedEvent]]:
    return plan_churn(
        config.churn, config.nodes, seed=derive_seed(config.seed, Purpose.CHURN), protected=config.protected
    )


def byzantine_nodes(config: EmulationConfig) -> frozenset[int]:
    """The Byzantine nodes' indices, a `byzantine_fraction` of the nodes that are not protected."""
    if config.attack is None:
        return frozenset()
    candidates = [i for i in range(config.nodes) if i not in config.protected]
    picked = choose_byzantine(
        len(candidates), config.byzantine_fraction, seed=derive_seed(config.seed, Purpose.BYZANTINE)
    )
    return frozenset(candidates[i] for i in picked)


def node_speeds(config: EmulationConfig, attributes: list[dict[str, Any]]) -> list[float]:
    """Each node's compute speed: its graph attribute "speed", else a seeded log-normal draw."""
    rng = np.random.default_rng(derive_seed(config.seed, Purpose.SPEED))
    drawn = rng.lognormal(0.0, config.speed_sigma, size=len(attributes)) if config.speed_sigma else None
    speeds = []
    for i, attrs in enumerate(attributes):
        speed = _number(
            attrs.get("speed", drawn[i] if drawn is not None else 1.0), f"topology node {i}: speed"
        )
        if not speed > 0:
            raise ConfigError(f"topology node {i}: speed must be > 0, got {speed}")
        speeds.append(speed)
    return speeds


def graph_links(graph: nx.Graph, peer_of: dict[Any, str]) -> list[tuple[str, str, dict[str, float]]]:
    """Each edge as (peer, peer, link parameters from its attributes), checked before the run."""
    links = []
    for u, v, attributes in graph.edges(data=True):
        where = f"topology edge ({u}, {v})"
        params = {
            k: _number(attributes[k], f"{where}: {k}")
            for k in ("latency", "bandwidth", "loss")
            if k in attributes
        }
        try:
            LinkParams(**{"latency": 0.0, **params})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        links.append((peer_of[u], peer_of[v], params))
    return links


def _number(value: Any, what: str) -> float:
    """A graph attribute as a float; `ConfigError` naming `what` if it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None


def learner_pool(config: EmulationConfig, task: Task) -> LearnerPool | None:
    """The pool that trains every node's model in batches, when the config asks for it and the task's
    model allows it (see simulations/learner_pool.py)."""
    if not config.batched_training or isinstance(task, TransferTask):
        return None
    if not poolable(task.make_model(seed=0)):
        return None
    return LearnerPool(task.make_model, lr=config.lr, batch_size=config.batch_size, test_data=task.test)


def run_end(config: EmulationConfig) -> RunEnd:
    return RunEnd(
        period=config.period,
        stall_timeout=config.stall_timeout,
        rounds=config.rounds,
        event_driven=config.protocol in EVENT_DRIVEN,
    )
