"""The user docs against the code: every node.toml they show validates, every `p2pfl` command line they
show names options the command has (and scenario files that exist), and every metric they name is
rendered. Cheap checks, no node and no emulation is run."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest

from p2pfl.cli import main
from p2pfl.daemon.config import parse_config
from p2pfl.daemon.metrics import render_metrics

ROOT = Path(__file__).resolve().parents[1]
README, DAEMON = ROOT / "README.md", ROOT / "docs" / "daemon.md"
# The docs elide peer IDs as `12D3KooW...`; a real one stands in for it.
PEER_ID = "12D3KooWDc59HuWjVTdsLL7gAJDHimbTUQQx16rF3hZVTo2UJiXY"


def blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def test_every_node_toml_in_the_daemon_doc_validates():
    found = blocks(DAEMON, "toml")
    assert len(found) >= 2  # the reference file and the MoDeST [protocol]
    for text in found:
        data = tomllib.loads(text.replace("12D3KooW...", PEER_ID))
        data.setdefault("data_dir", "node")  # a fragment: only a section of a file
        parse_config(data, source=text.splitlines()[0])


def command_lines() -> list[str]:
    """Every `p2pfl ...` command of the two docs: in bash blocks, and in inline code."""
    lines = []
    for path in (README, DAEMON):
        for block in blocks(path, "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                lines.append(line.split("#", 1)[0])
        lines.extend(re.findall(r"`((?:\.venv/bin/)?p2pfl [^`]*)`", path.read_text()))
    return [line.strip() for line in lines if re.match(r"\s*(\.venv/bin/)?p2pfl ", line)]


@pytest.mark.parametrize("line", command_lines())
def test_every_p2pfl_command_line_in_the_docs_names_existing_options(line):
    words = shlex.split(line.replace("[", "").replace("]", ""))[1:]
    command: click.Command = main
    with click.Context(main) as ctx:
        while isinstance(command, click.Group) and words and not words[0].startswith("-"):
            sub = command.get_command(ctx, words.pop(0))
            assert sub is not None, line
            command = sub
    assert not isinstance(command, click.Group), f"{line}: no command, only the group"
    options = {"--help", *(name for param in command.params for name in (*param.opts, *param.secondary_opts))}
    for word in words:
        if word.startswith("--"):
            assert word in options, f"{line}: {word} is not an option of this command"
        elif word.endswith(".toml") and word.startswith("scenarios/"):
            assert (ROOT / word).is_file(), f"{line}: no {word}"


def test_the_command_lines_are_found():
    lines = command_lines()
    assert any(line.startswith(".venv/bin/p2pfl sim run --nodes 32") for line in lines)
    assert any("scenarios/scale_modest_100k.toml" in line for line in lines)
    assert any(line.startswith("p2pfl status --url") for line in lines)


def test_every_metric_the_daemon_doc_names_is_rendered():
    status = {
        "peer_id": PEER_ID,
        "state": "running",
        "libp2p": {"peers_banned": 1, "rejected_by_reason": {"timeout": 1}},
        "checkpoint": {"round": 1, "writes": 1, "failures": 0, "skipped": 0},
    }
    rendered = set(re.findall(r"^(p2pfl_\w+?)(?:\{| )", render_metrics(status).decode(), flags=re.M))
    named = set(re.findall(r"`(p2pfl_\w+)", DAEMON.read_text())) - {"p2pfl_libp2p_"}  # _<counter>_total
    assert len(named) > 15 and named <= rendered, named - rendered
