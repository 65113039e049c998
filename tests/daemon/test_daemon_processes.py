"""Acceptance: four `p2pfl node run` daemons on 127.0.0.1 learn digits together.

Node 0 is the only bootstrap peer; the others find each other by discovery. Each trains gossip
learning on its own shard until every node reaches 0.85 test accuracy; `p2pfl status --json` shows
each node its three peers; SIGTERM stops each daemon within 5 s; a restarted daemon resumes from its
checkpoint. Ports are all dynamic (tcp/0, status port 0): the test reads them from status.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from daemon_helpers import P2PFL, Daemon, node_settings, stop_daemons, toml_dumps

from p2pfl.daemon.checkpoint import CHECKPOINT_FILE, load_checkpoint

pytestmark = pytest.mark.multiprocess

NODES = 4
TARGET_ACCURACY = 0.85
STOP_WITHIN = 5.0


def write_config(daemon: Daemon, bootstrap: list[str]) -> None:
    settings = node_settings(
        daemon.data_dir, index=daemon.index, of=NODES, rounds=1000, period=0.5, bootstrap=bootstrap
    )
    daemon.config.write_text(toml_dumps(settings))


@pytest.fixture
def daemons(spawn_daemons):
    return spawn_daemons(NODES)


def test_four_daemons_learn_digits_report_peers_stop_and_resume(daemons):
    begin = time.monotonic()
    seed, *others = daemons
    write_config(seed, bootstrap=[])
    seed.start()
    bootstrap = seed.info(deadline=begin + 60)["addrs"][:1]
    for daemon in others:
        write_config(daemon, bootstrap=bootstrap)
        daemon.start()
    deadline = time.monotonic() + 60
    peer_ids = {daemon.index: daemon.info(deadline=deadline)["peer_id"] for daemon in daemons}
    running = time.monotonic() - begin

    # Every node connected to the three others, and every node at the target accuracy.
    statuses: dict[int, dict] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = {daemon.index: daemon.status() for daemon in daemons}
        if all(
            len(s["peers"]) == NODES - 1 and (s["accuracy"] or 0) >= TARGET_ACCURACY
            for s in statuses.values()
        ):
            break
        time.sleep(0.5)
    summary = {i: (s["round"], s["accuracy"], len(s["peers"])) for i, s in statuses.items()}
    learned = time.monotonic() - begin
    assert all(len(s["peers"]) == NODES - 1 for s in statuses.values()), summary
    assert all(s["accuracy"] >= TARGET_ACCURACY for s in statuses.values()), summary
    print(f"\nall {NODES} daemons up after {running:.1f} s; each at >= {TARGET_ACCURACY} with 3 peers")
    print(f"after {learned:.1f} s; (round, accuracy, peers) by node: {summary}")

    # `p2pfl status --json` on each.
    commands = [
        subprocess.Popen(
            [*P2PFL, "status", "--data-dir", str(d.data_dir), "--json"], stdout=subprocess.PIPE, text=True
        )
        for d in daemons
    ]
    for daemon, command in zip(daemons, commands, strict=True):
        out, _ = command.communicate(timeout=60)
        assert command.returncode == 0, out
        document = json.loads(out)
        assert document["peer_id"] == peer_ids[daemon.index]
        assert set(document["peers"]) == {p for i, p in peer_ids.items() if i != daemon.index}
        assert document["bytes_in"] > 0 and document["bytes_out"] > 0
        assert document["models_rejected"] == 0

    took = stop_daemons(daemons)
    print(f"status CLI done after {time.monotonic() - begin:.1f} s")
    print(f"stopped after SIGTERM in {', '.join(f'{t:.2f}' for t in took.values())} s")
    assert len(took) == NODES and max(took.values()) < STOP_WITHIN, took
    assert all(d.proc.returncode == 0 for d in daemons), [d.tail() for d in daemons]
    assert not any((d.data_dir / "status.json").exists() for d in daemons)

    # A restarted daemon resumes from its checkpoint: same identity, first round after the saved one.
    restarted = daemons[1]
    saved = load_checkpoint(restarted.data_dir / CHECKPOINT_FILE)
    assert saved is not None and saved.round > 1
    restarted.start()
    info = restarted.info(deadline=time.monotonic() + 40)
    assert info["peer_id"] == peer_ids[1]
    deadline = time.monotonic() + 20
    status = restarted.status()
    while not status["history"] and time.monotonic() < deadline:
        time.sleep(0.2)
        status = restarted.status()
    assert status["started_round"] == saved.round + 1 > 1
    assert status["history"][0]["round"] == saved.round + 1, status["history"]
    took = stop_daemons([restarted])
    assert took.get(1, 99) < STOP_WITHIN, restarted.tail()
    print(f"restarted node resumed at round {saved.round + 1}; whole test {time.monotonic() - begin:.1f} s")
    assert os.path.exists(restarted.data_dir / CHECKPOINT_FILE)
