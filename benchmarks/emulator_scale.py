"""How far the emulator scales: wall time, peak memory and node-rounds/s against a plain trio loop.

Three kinds of case, each run in its own subprocess so that its peak RSS is its own:

* ``baseline``: N coroutines in one plain trio loop (real clock, no transport, no codec), each with
  a tiny torch MLP (the synthetic task's 16-32-10), doing one SGD step per round and exchanging its
  flat parameter vector with its neighbours on a random 4-regular graph over trio memory channels,
  then averaging. The floor of what "N torch models in one Python process" costs.
* ``dpsgd``: the emulator running D-PSGD on a random 4-regular graph with the synthetic task, one
  local step per round, evaluated only after the last round; ``dpsgd xK`` the same run in K shards
  (``--dpsgd-shards``; processes kept in step, simulations/shards.py), whose build happens in the
  shards and so counts in ``run``, as does starting them, and whose RSS is all its processes'.
* ``modest``: the emulator running MoDeST (s=10 by default) with the synthetic task; only the first
  30 nodes of order(1) check whether they train round 1 (``--modest-start-depth``; 0 makes every
  node check, which costs N x s pings at the start).

Times: ``wall`` is the whole case (task, graph, nodes, run); ``build`` is the emulator's node
construction (learners, models, protocol objects) inside it, measured by wrapping `Emulation._build`;
``run`` is wall minus graph and build, and ``cpu`` the process's CPU time in that part (below
``run`` when the machine is busy: a fairer comparison between runs on a shared machine).
node-rounds/s is nodes x rounds / run seconds (for MoDeST, where only the s sampled nodes work a
round, also rounds per minute). The ratio column compares with the baseline's node-rounds/s
measured just before, so machine load mostly cancels. ``--repeats N`` runs all cases N times in
turn and ends with the medians.

    PYTHONPATH=. python benchmarks/emulator_scale.py --quick
    PYTHONPATH=. python benchmarks/emulator_scale.py --baseline-nodes 10000 --baseline-rounds 20 \
        --dpsgd-nodes 10000 --dpsgd-rounds 20 --modest-nodes --repeats 3
    PYTHONPATH=. python benchmarks/emulator_scale.py --dpsgd-nodes 1000 10000 --modest-nodes 1000 10000 100000
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def _peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- cases, each run in a fresh process --------------------------------------------------------------


def case_baseline(nodes: int, rounds: int, seed: int) -> dict:
    import networkx as nx
    import torch
    import trio

    from p2pfl.models import mlp

    torch.set_num_threads(1)
    started = time.perf_counter()
    graph = nx.random_regular_graph(4, nodes, seed=seed)
    neighbours = [sorted(graph.neighbors(i)) for i in range(nodes)]
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(nodes, 32, 16, generator=generator)
    targets = torch.randint(0, 10, (nodes, 32), generator=generator)
    models = [mlp((16, 32, 10), seed=0) for _ in range(nodes)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.2) for m in models]
    build_s = time.perf_counter() - started

    async def node(i: int, inbox, outboxes) -> None:
        model, optimizer = models[i], optimizers[i]
        pending: dict[int, list[torch.Tensor]] = {}
        for round_ in range(rounds):
            batch = (round_ * 16) % 32
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(
                model(inputs[i, batch : batch + 16]), targets[i, batch : batch + 16]
            )
            loss.backward()
            optimizer.step()
            flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
            for out in outboxes:
                out.send_nowait((round_, flat))
            got = pending.pop(round_, [])
            while len(got) < len(outboxes):
                r, vector = await inbox.receive()
                (got if r == round_ else pending.setdefault(r, [])).append(vector)
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(torch.stack([flat, *got]).mean(0), model.parameters())
            await trio.lowlevel.checkpoint()

    async def main() -> None:
        channels = [trio.open_memory_channel(float("inf")) for _ in range(nodes)]
        async with trio.open_nursery() as nursery:
            for i in range(nodes):
                outboxes = [channels[j][0] for j in neighbours[i]]
                nursery.start_soon(node, i, channels[i][1], outboxes)

    run_started, cpu_started = time.perf_counter(), time.process_time()
    trio.run(main)
    run_s, run_cpu_s = time.perf_counter() - run_started, time.process_time() - cpu_started
    return {
        "build_s": build_s,
        "run_s": run_s,
        "run_cpu_s": run_cpu_s,
        "wall_s": time.perf_counter() - started,
    }


def _emulate(config_kwargs: dict) -> dict:
    from simulations.config import EmulationConfig, make_task
    from simulations.emulation import Emulation
    from simulations.emulator import run_emulation
    from simulations.run_setup import graph_for

    timings: dict[str, float] = {}
    original_build = Emulation._build

    def timed_build(self, network):
        t0, cpu0 = time.perf_counter(), time.process_time()
        original_build(self, network)
        timings["build_s"] = time.perf_counter() - t0
        timings["build_cpu_s"] = time.process_time() - cpu0

    Emulation._build = timed_build
    started = time.perf_counter()
    config = EmulationConfig(**config_kwargs)
    task = make_task(config)
    graph = graph_for(config, 0)
    graph_s = time.perf_counter() - started
    cpu_started = time.process_time()
    result = run_emulation(config, task=task, graph=graph)
    wall_s = time.perf_counter() - started
    run_cpu_s = time.process_time() - cpu_started - timings.get("build_cpu_s", 0.0)
    last = result.rounds[-1] if result.rounds else None
    return {
        "graph_s": graph_s,
        "build_s": timings.get("build_s", 0.0),
        "run_s": wall_s - graph_s - timings.get("build_s", 0.0),
        "run_cpu_s": run_cpu_s,
        "wall_s": wall_s,
        "stalled": result.stalled,
        "summary_rows": len(result.rounds),
        "accuracy": None if last is None else last.mean_accuracy,
        "messages": result.messages_sent,
        "bytes": result.bytes_sent,
        "shards": result.config.shards,
        "shards_rss_mib": result.peak_rss_mib if result.config.shards > 1 else 0.0,
    }


def _synthetic(protocol: str, nodes: int, rounds: int, seed: int, **extra: object) -> dict:
    """`protocol` on a random 4-regular graph with the synthetic task, one step per round."""
    return _emulate(
        dict(
            nodes=nodes,
            topology="random_regular",
            topology_params={"degree": 4},
            task="synthetic",
            protocol=protocol,
            local_steps=1,
            rounds=rounds,
            evaluate_every=rounds,
            seed=seed,
            **extra,
        )
    )


def case_dpsgd(nodes: int, rounds: int, seed: int, shards: int = 1) -> dict:
    return _synthetic("dpsgd", nodes, rounds, seed, shards=shards)


def case_modest(nodes: int, rounds: int, seed: int, s: int = 10, start_depth: int | None = None) -> dict:
    return _synthetic("modest", nodes, rounds, seed, protocol_params={"s": s, "start_depth": start_depth})


CASES = {"baseline": case_baseline, "dpsgd": case_dpsgd, "modest": case_modest}


def _run_case(kind: str, nodes: int, rounds: int, seed: int, extra: dict, profile: str | None) -> dict:
    """Run one case in a fresh interpreter and return its measurements."""
    command = [
        sys.executable,
        __file__,
        "--case",
        json.dumps({"kind": kind, "nodes": nodes, "rounds": rounds, "seed": seed, **extra}),
    ]
    if profile:
        command += ["--profile", profile]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.stderr.write(done.stderr)
        return {"kind": kind, "nodes": nodes, "rounds": rounds, "error": done.returncode}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(spec: dict, profile: str | None) -> None:
    kind, nodes, rounds, seed = spec.pop("kind"), spec.pop("nodes"), spec.pop("rounds"), spec.pop("seed")
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        result = profiler.runcall(CASES[kind], nodes, rounds, seed, **spec)
        profiler.dump_stats(profile)
    else:
        result = CASES[kind](nodes, rounds, seed, **spec)
    # A sharded run's own figure covers all its processes (this one included).
    peak_rss_mib = result.pop("shards_rss_mib", 0.0) or _peak_rss_mib()
    result.update(kind=kind, nodes=nodes, rounds=rounds, peak_rss_mib=peak_rss_mib)
    print(json.dumps(result))


def _name(r: dict) -> str:
    """The case's kind, with its shard count when there are several."""
    return r["kind"] if r.get("shards", 1) == 1 else f"{r['kind']} x{r['shards']}"


def _rate(r: dict) -> float:
    return r["nodes"] * r["rounds"] / r["run_s"]


def _table(results: list[dict], *, header: bool = True) -> str:
    head = (
        f"{'case':<9}{'nodes':>8}{'rounds':>7}{'wall s':>9}{'build s':>9}{'run s':>9}{'cpu s':>9}"
        f"{'RSS MiB':>9}{'node-rnd/s':>12}{'x base':>8}{'rnd/min':>9}"
    )
    lines = [head, "-" * len(head)] if header else []
    for r in results:
        name = _name(r)
        if "error" in r:
            lines.append(f"{name:<9}{r['nodes']:>8}{r['rounds']:>7}  failed (exit {r['error']})")
            continue
        ratio = f"{r['x_base']:8.3f}" if r.get("x_base") else f"{'':>8}"
        per_min = f"{60 * r['rounds'] / r['wall_s']:9.1f}" if r["kind"] == "modest" else f"{'':>9}"
        note = "" if not r.get("stalled") else "  STALLED"
        lines.append(
            f"{name:<9}{r['nodes']:>8}{r['rounds']:>7}{r['wall_s']:9.1f}{r['build_s']:9.1f}"
            f"{r['run_s']:9.1f}{r['run_cpu_s']:9.1f}{r['peak_rss_mib']:9.0f}{_rate(r):12.0f}{ratio}{per_min}{note}"
        )
    return "\n".join(lines)


def _medians(results: list[dict]) -> list[dict]:
    """Per case, the run with the median run time (the faster middle one of an even count), its
    ratio replaced by the median of the ratios (the mean of the middle two of an even count)."""
    cases: dict[tuple[str, int], list[dict]] = {}
    for r in results:
        if "error" not in r:
            cases.setdefault((_name(r), r["nodes"]), []).append(r)
    medians = []
    for runs in cases.values():
        middle = dict(sorted(runs, key=lambda r: r["run_s"])[(len(runs) - 1) // 2])
        ratios = [r["x_base"] for r in runs if r.get("x_base")]
        middle["x_base"] = statistics.median(ratios) if ratios else None
        medians.append(middle)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline-nodes", type=int, default=1000)
    parser.add_argument("--baseline-rounds", type=int, default=10)
    parser.add_argument("--dpsgd-nodes", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--dpsgd-rounds", type=int, default=5)
    parser.add_argument(
        "--dpsgd-shards",
        type=int,
        nargs="*",
        default=[1, 2],
        help="run each D-PSGD case with each of these shard counts (processes, one core each)",
    )
    parser.add_argument("--modest-nodes", type=int, nargs="*", default=[1000, 10000, 100000])
    parser.add_argument("--modest-rounds", type=int, default=5)
    parser.add_argument("--modest-s", type=int, default=10)
    parser.add_argument(
        "--modest-start-depth",
        type=int,
        default=30,
        help="ModestSettings.start_depth (0: None, every node pings the head of order(1) at the start)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small sizes: 1,000-node cases, 3 rounds")
    parser.add_argument(
        "--repeats", type=int, default=1, help="run every case this many times, in turn, and report medians"
    )
    parser.add_argument("--json", type=Path, help="also write the raw measurements here")
    parser.add_argument(
        "--profile", help="cProfile every case into this prefix (PREFIX-KIND-NODES.prof); slows runs"
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        _child(json.loads(args.case), args.profile)
        return
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.quick:
        args.baseline_nodes, args.baseline_rounds = 1000, 5
        args.dpsgd_nodes, args.dpsgd_rounds = [1000], 3
        args.modest_nodes, args.modest_rounds = [1000], 3

    def profile_path(kind: str, nodes: int) -> str | None:  # a sharded case profiles its coordinator
        return f"{args.profile}-{kind}-{nodes}.prof" if args.profile else None

    cases = [("baseline", args.baseline_nodes, args.baseline_rounds, {})] if args.baseline_nodes else []
    cases += [
        ("dpsgd", nodes, args.dpsgd_rounds, {} if shards == 1 else {"shards": shards})
        for nodes in args.dpsgd_nodes
        for shards in args.dpsgd_shards
    ]
    extra = {"s": args.modest_s, "start_depth": args.modest_start_depth or None}
    cases += [("modest", nodes, args.modest_rounds, extra) for nodes in args.modest_nodes]
    results = []
    print(_table([]), flush=True)
    for _ in range(args.repeats):  # each repeat measures the baseline again: its ratios share the load
        baseline_rate = None
        for kind, nodes, rounds, case_extra in cases:
            r = _run_case(kind, nodes, rounds, args.seed, case_extra, profile_path(kind, nodes))
            if "error" not in r:
                if kind == "baseline":
                    baseline_rate = _rate(r)
                elif kind == "dpsgd" and baseline_rate:
                    r["x_base"] = _rate(r) / baseline_rate
            results.append(r)
            print(_table([r], header=False), flush=True)
    print()
    if args.repeats > 1:
        print(
            f"medians of {args.repeats} runs (the run with the median run time, the faster middle one"
            " of an even count; x base: the median of the ratios)"
        )
    print(_table(_medians(results)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
