"""Scenario files: a TOML description of one or more emulation variants to run and compare.

```toml
name = "vca"
description = "..."
target_accuracy = 0.8          # optional: report rounds and bytes to reach it

[base]                         # EmulationConfig fields shared by every variant
nodes = 32
protocol = "dpsgd"

[[variants]]                   # each: a name plus the fields it changes
name = "plain"
aggregation = "fedavg"
```

Every field is validated (pydantic, against `EmulationConfig` itself, so there is one schema), and
errors name the file, the variant and the field.
"""

from __future__ import annotations

import multiprocessing
import tomllib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config

from p2pfl.errors import ConfigError
from simulations.churn import ChurnEvent
from simulations.config import EmulationConfig, check_topology_size, make_task
from simulations.emulator import check_run, run_emulation
from simulations.field_types import check_types
from simulations.results import EmulationResult
from simulations.task import Task


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class _ScenarioFile:
    name: str
    description: str = ""
    target_accuracy: float | None = None
    base: dict[str, Any] = field(default_factory=dict)
    variants: list[dict[str, Any]] = field(default_factory=list)


# Unknown fields in a variant are errors too, not silently ignored.
_CONFIG = TypeAdapter(with_config(ConfigDict(extra="forbid"))(EmulationConfig))
_FILE = TypeAdapter(_ScenarioFile)


@dataclass(frozen=True)
class Variant:
    name: str
    config: EmulationConfig


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    target_accuracy: float | None
    variants: tuple[Variant, ...]


def load_scenario(path: str | Path, *, seed: int | None = None, shards: int | None = None) -> Scenario:
    """Read and validate a scenario file; `seed` and `shards` override every variant's."""
    spec, path = _read(path)
    loaded, problems = _variants(spec, path, _overrides(seed=seed, shards=shards))
    _raise_all(problems)
    return _scenario(spec, loaded)


def check_scenario(
    path: str | Path, *, seed: int | None = None, shards: int | None = None
) -> tuple[Scenario, dict[str, Task]]:
    """`load_scenario` and `check_variants` at once, for a file that may hold several mistakes.

    Variants whose fields are valid get the run checks even when others' fields are not, so one
    `ConfigError` lists every mistake of every variant (a line each, naming the file) in the order
    of the file. Otherwise returns the scenario with each variant's task.
    """
    spec, path = _read(path)
    loaded, problems = _variants(spec, path, _overrides(seed=seed, shards=shards))
    tasks, late = _run_checks(loaded)
    _raise_all(sorted([*problems, *((index, f"{path}: {message}") for index, message in late)]))
    return _scenario(spec, loaded), tasks


def _read(path: str | Path) -> tuple[_ScenarioFile, Path]:
    """The file's top level, validated; errors in it (TOML syntax, an unknown key) come at once."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        check_types(_ScenarioFile, document)
        spec = _FILE.validate_python(document)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if spec.target_accuracy is not None and not 0 <= spec.target_accuracy <= 1:
        raise ConfigError(f"{path}: target_accuracy must be in [0, 1], got {spec.target_accuracy}")
    return spec, path


# (index of the variant in the file, what is wrong with it)
_Problem = tuple[int, str]


def _overrides(**fields: int | None) -> dict[str, int]:
    """The fields given (not None), to replace in every variant."""
    return {name: value for name, value in fields.items() if value is not None}


def _variants(
    spec: _ScenarioFile, path: Path, overrides: dict[str, int]
) -> tuple[list[tuple[int, Variant]], list[_Problem]]:
    """The variants whose fields are valid, each with its index in the file, and the others' problems."""
    raw_variants = spec.variants or [{"name": "default"}]
    variants, names, problems = [], set(), []
    for index, raw in enumerate(raw_variants):
        fields = dict(raw)
        name = fields.pop("name", None)
        where = f"{path}: variants[{index}]"
        if not isinstance(name, str) or not name:
            problems.append((index, f"{where}.name: every variant needs a non-empty string name"))
            continue
        if name in names:
            problems.append((index, f"{where}.name: duplicate variant name {name!r}"))
            continue
        names.add(name)
        merged = {**spec.base, **fields, **overrides}
        if isinstance(merged.get("topology_file"), str):  # relative to the scenario, not the shell
            merged["topology_file"] = str(path.parent / merged["topology_file"])
        try:
            _check_types(merged)
            config = _CONFIG.validate_python(merged)
            check_topology_size(config)
        except ValidationError as exc:
            problems.append((index, f"{where} ({name}): {_describe(exc)}"))
        except ConfigError as exc:
            problems.append((index, f"{where} ({name}): {exc}"))
        else:
            variants.append((index, Variant(name, config)))
    return variants, problems


def _scenario(spec: _ScenarioFile, loaded: list[tuple[int, Variant]]) -> Scenario:
    variants = tuple(variant for _, variant in loaded)
    return Scenario(spec.name, spec.description, spec.target_accuracy, variants)


@dataclass(frozen=True)
class ScenarioResult:
    scenario: Scenario
    results: dict[str, EmulationResult]

    def to_json(self) -> dict:
        target = self.scenario.target_accuracy
        variants = {}
        for name, result in self.results.items():
            summary = result.to_json()
            if target is not None:
                reached = result.first_round_reaching(target)
                summary["rounds_to_target"] = reached.round if reached else None
                summary["bytes_to_target"] = reached.bytes_sent if reached else None
            variants[name] = summary
        return {
            "scenario": self.scenario.name,
            "description": self.scenario.description,
            "target_accuracy": target,
            "variants": variants,
        }


def check_variants(scenario: Scenario) -> dict[str, Task]:
    """`check_run` for every variant, so that the last one's mistake is found before the first runs.

    Returns each variant's task, made for the check, for its run to use: making one can take
    seconds (digits_transfer pre-trains its extractor).
    """
    tasks, problems = _run_checks(list(enumerate(scenario.variants)))
    _raise_all(problems)
    return tasks


def _run_checks(variants: list[tuple[int, Variant]]) -> tuple[dict[str, Task], list[_Problem]]:
    """Each variant's task, made and given `check_run`, and the problems of those that fail it."""
    tasks, problems = {}, []
    for index, variant in variants:
        try:
            tasks[variant.name] = make_task(variant.config)
            check_run(variant.config, task=tasks[variant.name])
        except ConfigError as exc:
            problems.append((index, f"variants[{index}] ({variant.name}): {exc}"))
    return tasks, problems


def run_scenario(scenario: Scenario, *, jobs: int = 1) -> ScenarioResult:
    """Run every variant, once all have passed `check_variants`: in order, or up to `jobs` at once
    (`run_in_processes`). The results are the same either way, and keep the variants' order."""
    tasks = check_variants(scenario)
    if jobs == 1:
        results = {v.name: run_emulation(v.config, task=tasks[v.name]) for v in scenario.variants}
    else:
        finished = dict(run_in_processes(scenario.variants, jobs=jobs))
        results = {v.name: finished[v.name] for v in scenario.variants}
    return ScenarioResult(scenario, results)


def run_in_processes(variants: Sequence[Variant], *, jobs: int) -> Iterator[tuple[str, EmulationResult]]:
    """Run `variants`, up to `jobs` at once, each in a process of its own; yield (name, result) as
    each run ends.

    A run keeps one core busy (its nodes share one trio loop), so a scenario of many variants goes
    about `jobs` times faster on as many cores, each run as deterministic as alone. The processes
    start fresh (spawn: no fork of a process whose torch threads already run) and make their own
    tasks; each holds one run's memory. The first variant that fails raises its error here, and the
    runs not yet started are cancelled. As always with spawned processes, a script that calls this
    must do so under `if __name__ == "__main__":`.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(variants)), mp_context=context) as pool:
        runs = {pool.submit(run_emulation, variant.config): variant.name for variant in variants}
        try:
            for run in as_completed(runs):
                yield runs[run], run.result()
        except BaseException:  # an error, or the caller stopped early: start nothing more
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _raise_all(problems: list[_Problem]) -> None:
    """One `ConfigError` for every variant that is wrong, a line each, so that a file with several
    mistakes is fixed in one go rather than one run at a time."""
    if problems:
        raise ConfigError("\n".join(message for _, message in problems))


def _check_types(fields: dict[str, Any]) -> None:
    """Values of the wrong type, before pydantic converts them (see `check_types`)."""
    check_types(EmulationConfig, fields)
    churn = fields.get("churn")
    for index, event in enumerate(churn if isinstance(churn, list) else []):
        if isinstance(event, dict):
            try:
                check_types(ChurnEvent, event)
            except ConfigError as exc:
                raise ConfigError(f"churn.{index}: {exc}") from None


def _describe(error: ValidationError) -> str:
    """pydantic's errors as 'field.path: message; ...'."""
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)
