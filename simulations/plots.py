"""PNG plots of emulated runs: accuracy against rounds, virtual time and traffic; the topology.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so nothing needs a display and
no global backend is switched.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import networkx as nx
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from simulations.report import STATES, node_states, states_by_label, topology_of, variants_of
from simulations.results import EmulationResult, RoundSummary, topology_source
from simulations.scenario import ScenarioResult

STATE_COLOURS = {
    "honest": "tab:blue",
    "byzantine": "tab:red",
    "joined": "tab:green",
    "partitioned": "tab:purple",
    "crashed": "black",
    "left": "tab:orange",
    "absent": "lightgrey",
}
assert set(STATE_COLOURS) == set(STATES)

_MIB = 2**20
# x-axis of each accuracy plot: file name, label, value of a round.
_AXES = (
    ("accuracy_vs_round.png", "round", lambda r: r.round),
    ("accuracy_vs_time.png", "virtual time (s)", lambda r: r.virtual_time),
    ("accuracy_vs_bytes.png", "traffic sent, whole network (MiB)", lambda r: r.bytes_sent / _MIB),
)


def plot_accuracy(
    result: ScenarioResult | EmulationResult, directory: str | Path, *, target: float | None = None
) -> list[Path]:
    """Write accuracy_vs_round.png, accuracy_vs_time.png and accuracy_vs_bytes.png into `directory`.

    One line per variant (mean accuracy of the honest nodes) with its min-max band shaded; `target`
    (default: the scenario's target accuracy) as a dashed line.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if target is None and isinstance(result, ScenarioResult):
        target = result.scenario.target_accuracy
    variants = variants_of(result)
    paths = []
    for filename, label, x_of in _AXES:
        figure = Figure(figsize=(7, 4.5), layout="constrained")
        ax = figure.add_subplot()
        for name, run in variants.items():
            _accuracy_line(ax, name, run.rounds, x_of)
        if target is not None:
            ax.axhline(target, linestyle="--", color="grey", linewidth=1, label=f"target {target:g}")
        if not any(run.rounds for run in variants.values()):
            ax.text(0.5, 0.5, "no evaluated rounds", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize="small")
        paths.append(_save(figure, directory / filename))
    return paths


def _accuracy_line(ax, name: str, rounds: list[RoundSummary], x_of) -> None:
    if not rounds:
        return
    xs = [x_of(r) for r in rounds]
    (line,) = ax.plot(
        xs, [r.mean_accuracy for r in rounds], marker="." if len(rounds) < 60 else None, label=name
    )
    ax.fill_between(
        xs,
        [r.min_accuracy for r in rounds],
        [r.max_accuracy for r in rounds],
        color=line.get_color(),
        alpha=0.2,
    )


def plot_topology(
    graph: nx.Graph,
    states: Mapping[object, str],
    path: str | Path,
    *,
    seed: int = 0,
    max_nodes: int = 300,
    max_edges: int = 5_000,
    title: str | None = None,
) -> Path:
    """Draw `graph` with each node coloured by its state (`states`, keyed by the graph's labels).

    Nodes missing from `states` are "honest". The layout is networkx's spring layout from `seed`.
    Past `max_nodes` nodes a random sample of them (by `seed`) is drawn with the edges among them,
    and past `max_edges` edges a random sample of those, so that big graphs stay fast to draw (the
    legend still counts every node). networkx's layout slows sharply from 500 nodes, hence 300.
    """
    if unknown := sorted({s for s in states.values() if s not in STATE_COLOURS}):
        raise ValueError(f"unknown node states {unknown}; use {list(STATE_COLOURS)}")
    rng = random.Random(seed)
    total_nodes, total_edges = graph.number_of_nodes(), graph.number_of_edges()
    counts = Counter(states.get(node, "honest") for node in graph.nodes)  # of all nodes, sampled or not
    notes = []
    if total_nodes > max_nodes:
        graph = graph.subgraph(rng.sample(list(graph.nodes), max_nodes))
        notes.append(f"random {max_nodes} of {total_nodes} nodes")
    edges = list(graph.edges)
    if len(edges) > max_edges:
        notes.append(f"{max_edges} of {len(edges)} edges")
        edges = rng.sample(edges, max_edges)
    # spring_layout seeds numpy's legacy generator, which takes seeds below 2**32 only; runs take any.
    positions = nx.spring_layout(graph, seed=seed % 2**32) if graph.number_of_nodes() else {}

    figure = Figure(figsize=(7, 7), layout="constrained")
    ax = figure.add_subplot()
    ax.set_axis_off()
    if edges:
        segments = [(positions[u], positions[v]) for u, v in edges]
        ax.add_collection(LineCollection(segments, colors="grey", linewidths=0.5, alpha=0.5, zorder=1))
    size = max(8.0, min(120.0, 6000.0 / max(graph.number_of_nodes(), 1)))
    for state, colour in STATE_COLOURS.items():
        members = [node for node in graph.nodes if states.get(node, "honest") == state]
        if members:
            ax.scatter(
                [positions[n][0] for n in members],
                [positions[n][1] for n in members],
                s=size,
                c=colour,
                edgecolors="white",
                linewidths=0.5,
                label=f"{state} ({counts[state]})",
                zorder=2,
            )
    if graph.number_of_nodes():
        ax.legend(loc="upper right", fontsize="small", framealpha=0.8)
    heading = title or f"{total_nodes} nodes, {total_edges} edges"
    ax.set_title(heading + (f" (showing {', '.join(notes)})" if notes else ""), fontsize="medium")
    ax.autoscale_view()
    return _save(figure, Path(path))


def write_plots(result: ScenarioResult | EmulationResult, directory: str | Path) -> list[Path]:
    """The three accuracy plots, then each variant's topology with node states when the run ended.

    The topology file is topology.png for a single run, topology-VARIANT.png for a scenario (with
    the variant's position, or the next free number, added where two names make the same file name,
    as "a b" and "a/b" do);
    results that carry no graph get no topology picture.
    """
    directory = Path(directory)
    paths = plot_accuracy(result, directory)
    used: set[str] = set()
    for index, (name, run) in enumerate(variants_of(result).items()):
        if run.graph is None:
            continue  # a result built by hand, without its graph: nothing to draw
        graph = topology_of(run)
        stem = "topology" if isinstance(result, EmulationResult) else f"topology-{_safe(name)}"
        filename, number = stem, index + 1
        while filename in used:  # the numbered name may be another variant's too: "a_b-3" before "a/b"
            filename, number = f"{stem}-{number}", number + 1
        used.add(filename)
        source = run.topology or topology_source(run.config)
        title = f"{name}: {source}, {graph.number_of_nodes()} nodes, final states"
        paths.append(
            plot_topology(
                graph,
                states_by_label(graph, node_states(run)),
                directory / f"{filename}.png",
                seed=run.config.seed,
                title=title,
            )
        )
    return paths


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name) or "_"


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=110)
    return path
