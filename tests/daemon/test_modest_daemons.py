"""Acceptance: six `p2pfl node run` MoDeST daemons on 127.0.0.1 learn digits, and survive two crashes.

`p2pfl keygen` gives each node its identity first, so every node is configured with the same explicit
list of six participants (peer IDs; the addresses come from discovery, node 0 being the only bootstrap
peer). MoDeST samples s=3 trainers per round and a=1 aggregator; the timeouts (ping 2 s, aggregation
3 s, round 4 s) keep a crashed trainer or aggregator from stalling a round. Once the nodes that
recorded the latest round report >= 0.85 test accuracy, two daemons are killed with SIGKILL (no
goodbye, no final checkpoint): rounds must go on among the four survivors, every survivor must
record new rounds, and the latest round's aggregate must still be at >= 0.85.

Only the nodes of Sample(r+1) record round r (they adopt its aggregate and evaluate it), so a
node's `round` in its status lags while it is not sampled: the test reads the latest round as the
maximum over the nodes and its accuracy from the nodes that recorded it.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from daemon_helpers import P2PFL, Daemon, node_settings, stop_daemons, toml_dumps

from p2pfl.cli import main

pytestmark = pytest.mark.multiprocess

NODES = 6
KILLED = 2
TARGET_ACCURACY = 0.85
MODEST = {
    "name": "modest",
    "rounds": 100_000,  # more than the test reaches: the run ends when the test stops the daemons
    "s": 3,
    "a": 1,
    "ping_timeout": 2.0,
    "ping_interval": 0.5,
    "aggregation_timeout": 3.0,
    "round_timeout": 4.0,
}


def keygen(data_dirs: list[Path]) -> list[str]:
    """`p2pfl keygen` for each data dir (in this process: six interpreters would cost seconds each)."""
    peer_ids = []
    for data_dir in data_dirs:
        result = CliRunner().invoke(main, ["keygen", "--data-dir", str(data_dir)])
        assert result.exit_code == 0, result.output
        (peer_id,) = re.findall(r"^peer id: (\S+)$", result.output, re.MULTILINE)
        peer_ids.append(peer_id)
    return peer_ids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def latest(statuses: dict[int, dict]) -> tuple[int, list[float | None]]:
    """The newest round any node recorded, and the accuracies of the nodes that recorded it."""
    newest = max(s["round"] for s in statuses.values())
    return newest, [s["accuracy"] for s in statuses.values() if s["round"] == newest]


def poll(daemons: list[Daemon]) -> dict[int, dict]:
    statuses = {}
    for daemon in daemons:
        assert daemon.proc.poll() is None, f"node {daemon.index} exited:\n{daemon.tail()}"
        statuses[daemon.index] = daemon.status()
    return statuses


def summary(statuses: dict[int, dict]) -> dict[int, tuple]:
    return {i: (s["round"], s["accuracy"], len(s["peers"])) for i, s in statuses.items()}


@pytest.fixture
def daemons(spawn_daemons):
    return spawn_daemons(NODES)


def test_six_modest_daemons_learn_digits_and_survive_two_kills(daemons):
    begin = time.monotonic()
    peer_ids = keygen([d.data_dir for d in daemons])
    assert len(set(peer_ids)) == NODES
    keys_made = time.monotonic() - begin

    # Node 0 listens on a port chosen here, so its bootstrap address is known before it runs and all
    # six daemons start at once (each spends seconds importing torch).
    port = free_port()
    bootstrap = [f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_ids[0]}"]
    for daemon in daemons:
        settings = node_settings(
            daemon.data_dir,
            index=daemon.index,
            of=NODES,
            bootstrap=bootstrap if daemon.index else [],
            protocol={**MODEST, "participants": peer_ids},
        )
        if daemon.index == 0:
            settings["listen"] = [f"/ip4/127.0.0.1/tcp/{port}"]
        daemon.config.write_text(toml_dumps(settings))
        daemon.start()
    deadline = time.monotonic() + 120
    for daemon in daemons:
        assert daemon.info(deadline=deadline)["peer_id"] == peer_ids[daemon.index]
    running = time.monotonic() - begin

    # Learning: the latest round's aggregate at the target, and everyone connected to everyone
    # (node 0 is the only bootstrap peer: the rest came from discovery).
    statuses: dict[int, dict] = {}
    deadline = time.monotonic() + 75
    while time.monotonic() < deadline:
        statuses = poll(daemons)
        newest, accuracies = latest(statuses)
        if all(len(s["peers"]) == NODES - 1 for s in statuses.values()) and all(
            (a or 0) >= TARGET_ACCURACY for a in accuracies
        ):
            break
        time.sleep(0.5)
    newest, accuracies = latest(statuses)
    learned = time.monotonic() - begin
    assert all(len(s["peers"]) == NODES - 1 for s in statuses.values()), summary(statuses)
    assert all((a or 0) >= TARGET_ACCURACY for a in accuracies), summary(statuses)
    assert all(s["models_rejected"] == 0 for s in statuses.values()), summary(statuses)
    print(f"\nkeys after {keys_made:.1f} s, all {NODES} daemons up after {running:.1f} s")
    print(f"round {newest} at {accuracies} after {learned:.1f} s; (round, acc, peers): {summary(statuses)}")

    # Crash two daemons: the two that recorded the latest rounds, so likely members of the current
    # sample, one of them possibly the next aggregator.
    ranked = sorted(daemons, key=lambda d: statuses[d.index]["round"], reverse=True)
    victims = ranked[:KILLED]
    for daemon in victims:
        daemon.proc.send_signal(signal.SIGKILL)
    for daemon in victims:
        daemon.proc.wait(timeout=10)
        assert daemon.proc.returncode == -signal.SIGKILL
    killed_at = time.monotonic()
    survivors = [d for d in daemons if d not in victims]
    at_kill = poll(survivors)
    kill_round = max(newest, *(s["round"] for s in at_kill.values()))
    print(f"killed nodes {[d.index for d in victims]} at round {kill_round} after {killed_at - begin:.1f} s")

    # Rounds go on among the survivors: each records new rounds, and the newest one (a few rounds
    # past the crash, so formed without the dead) is at the target again.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = poll(survivors)
        newest, accuracies = latest(statuses)
        if (
            newest >= kill_round + 5
            and all(statuses[i]["round"] > at_kill[i]["round"] for i in statuses)
            and all((a or 0) >= TARGET_ACCURACY for a in accuracies)
        ):
            break
        time.sleep(0.5)
    newest, accuracies = latest(statuses)
    recovered = time.monotonic() - killed_at
    progress = {i: (at_kill[i]["round"], s["round"]) for i, s in statuses.items()}
    assert newest >= kill_round + 5, (kill_round, summary(statuses))
    assert all(after > before for before, after in progress.values()), progress
    assert all((a or 0) >= TARGET_ACCURACY for a in accuracies), summary(statuses)
    print(f"{recovered:.1f} s after the kill: round {newest} at {accuracies}; rounds by survivor {progress}")

    # `p2pfl status --json` agrees, on a node that recorded the newest round.
    recorder = next(d for d in survivors if statuses[d.index]["round"] == newest)
    out = subprocess.run(
        [*P2PFL, "status", "--data-dir", str(recorder.data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    document = json.loads(out)
    assert document["peer_id"] == peer_ids[recorder.index]
    assert document["protocol"] == "modest" and document["state"] == "running"
    recorded = {entry["round"]: entry["accuracy"] for entry in document["history"]}
    assert document["round"] >= newest and recorded[newest] >= TARGET_ACCURACY, document["history"]
    assert not set(document["peers"]) & {peer_ids[d.index] for d in victims}, document["peers"]

    took = stop_daemons(survivors)
    assert len(took) == len(survivors), [d.tail() for d in survivors]
    assert all(d.proc.returncode == 0 for d in survivors), [d.tail() for d in survivors]
    print(f"whole test {time.monotonic() - begin:.1f} s")
