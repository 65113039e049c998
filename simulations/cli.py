"""`p2pfl sim`: emulate many nodes on one machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from p2pfl import strict_json
from p2pfl.errors import ConfigError
from simulations.config import PROTOCOLS, EmulationConfig, check_topology_size, make_task
from simulations.emulator import check_run, run_emulation
from simulations.report import ProgressBar, write_csv
from simulations.results import EmulationResult
from simulations.scenario import ScenarioResult, check_scenario, run_in_processes
from simulations.task import Task
from simulations.topology import BUILDERS, ErdosRenyi, RandomRegular, SmallWorld

_DEFAULTS = EmulationConfig()


@click.group()
def sim() -> None:
    """Emulate a network of nodes in virtual time."""


_SCENARIO_COMPATIBLE = {"scenario", "seed", "json_path", "csv_dir", "plots_dir", "progress", "jobs", "shards"}


@sim.command()
@click.argument("scenario", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--nodes", default=_DEFAULTS.nodes, show_default=True, help="Number of nodes.")
@click.option(
    "--topology", type=click.Choice(sorted(BUILDERS)), default=_DEFAULTS.topology, show_default=True
)
@click.option(
    "--degree",
    default=4,
    show_default=True,
    help="Degree for random_regular, k for small_world (watts_strogatz).",
)
@click.option(
    "--p", "edge_p", default=0.1, show_default=True, help="Edge/rewire probability where it applies."
)
@click.option("--rounds", default=_DEFAULTS.rounds, show_default=True)
@click.option(
    "--protocol",
    type=click.Choice(PROTOCOLS),
    default=_DEFAULTS.protocol,
    show_default=True,
    help="gossip learning, D-PSGD, MoDeST or the FL baseline, with their default settings.",
)
@click.option(
    "--aggregation",
    default=_DEFAULTS.aggregation,
    show_default=True,
    help="A rule by name (fedavg, median, trimmed_mean, krum, vca, ...) with its default settings.",
)
@click.option(
    "--partition", type=click.Choice(["iid", "dirichlet"]), default=_DEFAULTS.partition, show_default=True
)
@click.option("--alpha", default=_DEFAULTS.alpha, show_default=True, help="Dirichlet concentration.")
@click.option("--local-steps", default=_DEFAULTS.local_steps, show_default=True)
@click.option(
    "--period",
    default=_DEFAULTS.period,
    show_default=True,
    help="Virtual seconds per round; must exceed training (local steps x seconds per step) plus latency.",
)
@click.option("--seed", default=_DEFAULTS.seed, show_default=True)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the summary here."
)
@click.option(
    "--csv",
    "csv_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write rounds.csv and nodes.csv into this folder.",
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write PNG plots (accuracy vs round, virtual time and bytes; topology) into this folder.",
)
@click.option(
    "--progress/--no-progress", default=None, help="Show a progress bar [default: on a terminal only]."
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="With a scenario file: run up to this many variants at once, each in a process of its own "
    "(one core each; same results).",
)
@click.option(
    "--shards",
    type=click.IntRange(min=1),
    default=None,
    help="Run each emulation's nodes in this many processes kept in step (one core each; results "
    "differ from other shard counts only where events share an instant) [default: 1, or the file's].",
)
@click.pass_context
def run(
    ctx: click.Context,
    scenario: Path | None,
    nodes: int,
    topology: str,
    degree: int,
    edge_p: float,
    rounds: int,
    protocol: str,
    aggregation: str,
    partition: str,
    alpha: float,
    local_steps: int,
    period: float,
    seed: int,
    json_path: Path | None,
    csv_dir: Path | None,
    plots_dir: Path | None,
    progress: bool | None,
    jobs: int,
    shards: int | None,
) -> None:
    """Run SCENARIO (a TOML file), or an emulation on digits set up by the options.

    With no arguments: gossip learning on 16 nodes of a random 4-regular graph. With a scenario
    file, only --seed, --json, --csv, --plots, --progress, --jobs and --shards may be given as well.
    """
    if scenario is not None:
        given = {
            name
            for name in ctx.params
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        }
        if extra := sorted(given - _SCENARIO_COMPATIBLE):
            raise click.UsageError(f"options {extra} cannot be combined with a scenario file")
        _run_scenario(
            scenario,
            seed=seed if "seed" in given else None,
            outputs=(json_path, csv_dir, plots_dir),
            progress=progress,
            jobs=jobs,
            shards=shards,
        )
        return
    if jobs != 1:
        raise click.UsageError("--jobs runs the variants of a scenario file at once: give one")
    params = {  # by builder, so that a builder's other names (watts_strogatz) take them too
        RandomRegular: {"degree": degree},
        ErdosRenyi: {"p": edge_p},
        SmallWorld: {"k": degree, "p": edge_p},
    }.get(BUILDERS[topology], {})
    try:
        config = EmulationConfig(
            nodes=nodes,
            topology=topology,
            topology_params=params,
            rounds=rounds,
            protocol=protocol,
            aggregation=aggregation,
            partition=partition,
            alpha=alpha,
            local_steps=local_steps,
            period=period,
            seed=seed,
            shards=shards or 1,
        )
        check_topology_size(config)
        task = make_task(config)
        check_run(config, task=task)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    _prepare_outputs(json_path, csv_dir, plots_dir)
    result = _emulate(config, task, ProgressBar(enabled=progress))
    click.echo(format_table(result))
    _write_outputs(result, json_path, csv_dir, plots_dir)


_VARIANTS_LISTED = 6  # `check` names a file's variants up to this many


@sim.command()
@click.argument(
    "scenarios", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--seed", type=int, help="Check with this seed in every variant, as `run --seed` would run.")
@click.option("--shards", type=click.IntRange(min=1), help="Check with this many shards, as `run --shards`.")
def check(scenarios: tuple[Path, ...], seed: int | None, shards: int | None) -> None:
    """Check SCENARIOS (TOML files) without running them.

    Every field of every variant is validated, and so is what only a run's setup would refuse (a
    churn plan that stops a node twice, a data split with an empty part, a link too slow for a
    round). Prints a line per valid file and every mistake in the others; exits 1 if any file is
    invalid.
    """
    invalid = 0
    for path in scenarios:
        _importable_beside(path)
        try:
            scenario, _ = check_scenario(path, seed=seed, shards=shards)
        except ConfigError as exc:
            invalid += 1
            click.echo(str(exc), err=True)
            continue
        names = [variant.name for variant in scenario.variants]
        listed = ", ".join(names) if len(names) <= _VARIANTS_LISTED else f"{', '.join(names[:3])}, ..."
        click.echo(f"{path}: ok, {len(names)} variant(s): {listed}")
    if invalid:
        click.echo(f"{invalid} of {len(scenarios)} scenario file(s) invalid", err=True)
        raise click.exceptions.Exit(1)


def _importable_beside(scenario: Path) -> None:
    """Let a scenario name rules, attacks and tasks (`module:attribute`) from modules beside it, as
    `python script.py` imports what lies beside the script: the file's folder goes on the path."""
    folder = str(scenario.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)


def _emulate(config: EmulationConfig, task: Task, bar: ProgressBar) -> EmulationResult:
    with bar:
        return run_emulation(config, task=task, progress=bar)


def _prepare_outputs(json_path: Path | None, csv_dir: Path | None, plots_dir: Path | None) -> None:
    """Create the output folders once the settings are known to be valid and before the run, so
    that a path that cannot be written fails now, not after a long run whose results it would lose."""
    for option, folder in (
        ("--json", json_path and json_path.parent),
        ("--csv", csv_dir),
        ("--plots", plots_dir),
    ):
        if folder is None:
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise click.BadParameter(
                f"cannot create {folder}: {exc.strerror or exc}", param_hint=option
            ) from exc
        if not os.access(folder, os.W_OK):
            raise click.BadParameter(f"{folder} is not writable", param_hint=option)


def _write_outputs(
    result: EmulationResult | ScenarioResult,
    json_path: Path | None,
    csv_dir: Path | None,
    plots_dir: Path | None,
) -> None:
    """Write every output asked for. One that fails (a file in the way, a full disk: what
    `_prepare_outputs` cannot see) does not stop the others, which hold the same run's results;
    the failures are then reported as one error naming the option and the file."""
    failed = []
    for option, target, write in (
        ("--json", json_path, _write_json),
        ("--csv", csv_dir, _write_tables),
        ("--plots", plots_dir, _write_plots),
    ):
        if target is None:
            continue
        try:
            click.echo(write(result, target))
        except OSError as exc:
            failed.append(f"{option}: cannot write {exc.filename or target}: {exc.strerror or exc}")
    if failed:
        raise click.ClickException("; ".join(failed))


def _write_json(result: EmulationResult | ScenarioResult, path: Path) -> str:
    path.write_text(strict_json.dumps(result.to_json(), indent=2))
    return f"summary written to {path}"


def _write_tables(result: EmulationResult | ScenarioResult, folder: Path) -> str:
    return f"tables written: {', '.join(str(p) for p in write_csv(result, folder))}"


def _write_plots(result: EmulationResult | ScenarioResult, folder: Path) -> str:
    from simulations.plots import write_plots  # matplotlib is imported only when plotting

    return f"plots written: {', '.join(str(p) for p in write_plots(result, folder))}"


def _run_scenario(
    path: Path,
    *,
    seed: int | None,
    outputs: tuple[Path | None, Path | None, Path | None],
    progress: bool | None,
    jobs: int,
    shards: int | None,
) -> None:
    _importable_beside(path)
    try:
        scenario, tasks = check_scenario(path, seed=seed, shards=shards)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    _prepare_outputs(*outputs)
    click.echo(f"scenario {scenario.name}: {len(scenario.variants)} variant(s)")
    variants = scenario.variants
    if jobs == 1:
        results = {
            v.name: _emulate(v.config, tasks[v.name], ProgressBar(v.name, enabled=progress)) for v in variants
        }
    else:
        results = {}
        with ProgressBar("variants", enabled=progress, unit="variant") as bar:
            for name, variant_result in run_in_processes(variants, jobs=jobs):
                results[name] = variant_result
                bar.update(len(results), len(variants))
    result = ScenarioResult(scenario, {v.name: results[v.name] for v in variants})
    for name, variant_result in result.results.items():
        click.echo(f"\n== {name}")
        click.echo(format_table(variant_result))
    click.echo("\n" + format_comparison(result))
    _write_outputs(result, *outputs)


def format_comparison(result: ScenarioResult) -> str:
    """One line per variant: final accuracy, traffic, and how fast it reached the target."""
    target = result.scenario.target_accuracy
    header = f"{'variant':<24} {'final acc':>9} {'MiB sent':>9} {'wall s':>7}"
    lines = [header if target is None else f"{header}  rounds/MiB to {target}"]
    for name, summary in result.to_json()["variants"].items():
        reached = ""
        if target is not None and summary["rounds_to_target"] is not None:
            reached = f"{summary['rounds_to_target']} / {summary['bytes_to_target'] / 2**20:.2f}"
        elif target is not None:
            reached = "not reached"
        final = "n/a" if summary["final_mean_accuracy"] is None else f"{summary['final_mean_accuracy']:.4f}"
        lines.append(
            f"{name:<24} {final:>9} {summary['bytes_sent'] / 2**20:>9.2f} "
            f"{summary['wall_s']:>7.1f}  {reached}".rstrip()
        )
    return "\n".join(lines)


def format_table(result: EmulationResult) -> str:
    """Per-round accuracy and traffic, then the totals."""
    lines = [f"{'round':>5}  {'mean acc':>8}  {'min':>6}  {'max':>6}  {'MiB sent':>9}  {'virtual s':>9}"]
    for r in result.rounds:
        lines.append(
            f"{r.round:>5}  {r.mean_accuracy:>8.4f}  {r.min_accuracy:>6.3f}  {r.max_accuracy:>6.3f}  "
            f"{r.bytes_sent / 2**20:>9.2f}  {r.virtual_time:>9.2f}"
        )
    final = "n/a" if result.final_mean_accuracy is None else f"{result.final_mean_accuracy:.4f}"
    lines.append(
        f"final mean accuracy {final} after {result.rounds[-1].round if result.rounds else 0} rounds, "
        f"{result.bytes_sent / 2**20:.2f} MiB sent\n"
        f"wall {result.wall_s:.1f} s, peak RSS {result.peak_rss_mib:.0f} MiB, "
        f"{result.node_rounds_per_s:.0f} node-rounds/s, {result.rounds_per_minute:.1f} rounds/min"
        + _ended_early(result)
    )
    return "\n".join(lines)


def _ended_early(result: EmulationResult) -> str:
    """Why a run stopped before its last round, if it did."""
    if result.stalled:
        return f" (STALLED at round {result.rounds_reached}: no round finished for stall_timeout)"
    if result.rounds_reached < result.config.rounds:
        return f" (ended at round {result.rounds_reached}: no node was running any more)"
    return ""
