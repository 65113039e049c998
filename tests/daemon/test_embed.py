"""Embedding: `NodeThread` and `open_node` run real libp2p nodes in this process, on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import urllib.request
from contextlib import asynccontextmanager

import pytest
import trio
from daemon_helpers import node_config

from p2pfl.daemon import embed, runner
from p2pfl.daemon.checkpoint import CHECKPOINT_FILE, CheckpointError, load_checkpoint, save_checkpoint
from p2pfl.daemon.embed import NodeThread, open_node
from p2pfl.daemon.runner import STATUS_FILE, DataDirInUse, ProtocolEnded
from p2pfl.daemon.task import build_learner
from transport.libp2p import ListenFailed

pytest.importorskip("libp2p")

STATUS_KEYS = {"peer_id", "addrs", "peers", "round", "accuracy", "bytes_in", "bytes_out", "models_rejected"}


@pytest.fixture
def threads():
    started: list[NodeThread] = []

    def start(config) -> NodeThread:
        node = NodeThread(config)
        started.append(node)
        return node.start(timeout=60)

    try:
        yield start
    finally:
        for node in reversed(started):
            node.stop(timeout=30)


def test_two_node_threads_gossip_checkpoint_and_resume(tmp_path, threads):
    first = threads(node_config(tmp_path / "a", index=0, of=2, rounds=6, period=0.25))
    second = threads(
        node_config(tmp_path / "b", index=1, of=2, rounds=6, period=0.25, bootstrap=first.addrs[:1])
    )
    assert second.wait_for_round(6, timeout=60) == 6
    assert first.wait_for_round(6, timeout=60) == 6

    status = first.status()
    assert status.keys() >= STATUS_KEYS
    assert status["peers"] == [second.peer_id]
    assert second.status()["peers"] == [first.peer_id]
    assert status["round"] == 6 and status["state"] in ("running", "done")
    assert status["bytes_in"] > 0 and status["bytes_out"] > 0 and status["models_rejected"] == 0
    assert 0 <= status["accuracy"] <= 1
    assert [r["round"] for r in status["history"]] == [1, 2, 3, 4, 5, 6]

    second.stop()
    checkpoint = load_checkpoint(tmp_path / "b" / CHECKPOINT_FILE)
    assert checkpoint is not None and checkpoint.round == 6

    # Tested every 4th round: the resumed node keeps that schedule, so round 7 is not tested.
    resumed = threads(
        node_config(tmp_path / "b", index=1, of=2, rounds=8, period=0.25, training={"evaluate_every": 4})
    )
    assert resumed.peer_id == second.peer_id  # same data dir, same identity
    assert resumed.status()["started_round"] == 7
    assert resumed.wait_for_round(8, timeout=60) == 8
    history = resumed.status()["history"]
    assert [(r["round"], r["accuracy"] is not None) for r in history] == [(7, False), (8, True)]


def test_open_node_serves_status_and_cleans_up(tmp_path):
    config = node_config(tmp_path, rounds=3, period=0.2)

    def fetch(url):
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()

    async def main():
        with trio.fail_after(60):
            async with open_node(config) as handle:
                await handle.wait_for_round(2)
                info = json.loads((tmp_path / STATUS_FILE).read_text())
                assert info["peer_id"] == handle.peer_id and info["url"] == handle.status_url
                status = json.loads(await trio.to_thread.run_sync(fetch, handle.status_url + "/status"))
                assert status.keys() >= STATUS_KEYS and status["round"] >= 2
                metrics = (await trio.to_thread.run_sync(fetch, handle.status_url + "/metrics")).decode()
                assert "p2pfl_round" in metrics
                await handle.wait_done()
        return handle

    handle = trio.run(main)
    assert handle.round == 3
    assert not (tmp_path / STATUS_FILE).exists()
    checkpoint = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert checkpoint.round == 3 and handle.checkpoint_writes == 3  # the last round's once, not again
    final = handle.learner.state().to_numpy()
    assert all((checkpoint.tensors[name] == array).all() for name, array in final.items())


@pytest.mark.parametrize("ended", [True, False])
def test_a_stop_with_the_last_round_not_checkpointed_writes_the_final_checkpoint(tmp_path, ended):
    """With `every` past the last round no round is checkpointed: the stop writes the model, whether
    the protocol has ended (2 rounds) or still runs (stopped at round 2 of 10)."""
    config = node_config(tmp_path, rounds=2 if ended else 10, period=0.2, checkpoint={"every": 100})

    async def main():
        with trio.fail_after(60):
            async with open_node(config) as handle:
                await handle.wait_for_round(2)
                if ended:
                    await handle.wait_done()
        return handle

    handle = trio.run(main)
    assert handle.done is ended and handle.checkpoint_writes == 1
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE).round == handle.round >= 2


def test_exit_when_done_writes_the_last_rounds_checkpoint_once(tmp_path, monkeypatch):
    """The daemon wrote the last round's checkpoint as a round's, then the same model again at exit."""
    written = []

    def save(path, checkpoint):
        written.append(checkpoint.round)
        save_checkpoint(path, checkpoint)

    monkeypatch.setattr(runner, "save_checkpoint", save)
    trio.run(runner.run_daemon, node_config(tmp_path, rounds=3, period=0.2, exit_when_done=True))
    assert written == [1, 2, 3]
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE).round == 3


def test_a_node_thread_that_cannot_start_raises_why(tmp_path):
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"garbage")
    node = NodeThread(node_config(tmp_path))
    with pytest.raises(CheckpointError, match="unreadable"):
        node.start(timeout=60)
    node.stop()  # the error was reported once, by start()


def test_a_start_error_from_inside_the_nurseries_comes_unwrapped(tmp_path):
    # status.json is written once the transport runs, inside its nurseries and the node's.
    (tmp_path / STATUS_FILE).mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        NodeThread(node_config(tmp_path)).start(timeout=60)


def test_open_node_raises_a_port_in_use_as_itself_and_leaves_no_socket_open(tmp_path):
    async def open_with(config):
        with trio.fail_after(30):
            async with open_node(config):
                pytest.fail("the node started")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status_in_use = node_config(tmp_path / "a", status={"host": "127.0.0.1", "port": port})
        with pytest.raises(OSError, match=f"status server cannot listen on 127.0.0.1:{port}"):
            trio.run(open_with, status_in_use)

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            status_port = probe.getsockname()[1]
        listen_in_use = node_config(
            tmp_path / "b",
            listen=[f"/ip4/127.0.0.1/tcp/{port}"],
            status={"host": "127.0.0.1", "port": status_port},
        )
        with pytest.raises(ListenFailed):
            trio.run(open_with, listen_in_use)
    # The status server was bound before the transport failed to open; its port is free again.
    with socket.socket() as again:
        again.bind(("127.0.0.1", status_port))


def test_modest_nodes_take_discovered_peers_as_participants(tmp_path, threads):
    def protocol():
        return {
            "name": "modest",
            # More rounds than awaited: the aggregator of the last round stops as soon as it adopts
            # its own aggregate, which can cancel sending it to the others (gossip/modest.py).
            "rounds": 10,
            "participants": "discovered",
            "expect_peers": 2,
            "discovery_timeout": 30,
            "s": 3,  # every node trains every round, so every node adopts every aggregate
            "ping_timeout": 2.0,
            "ping_interval": 0.5,
            "round_timeout": 2.0,
        }

    seed = threads(node_config(tmp_path / "a", index=0, of=3, protocol=protocol()))
    others = [
        threads(node_config(tmp_path / n, index=i, of=3, protocol=protocol(), bootstrap=seed.addrs[:1]))
        for i, n in ((1, "b"), (2, "c"))
    ]
    nodes = [seed, *others]
    for node in nodes:
        node.wait_for_round(3, timeout=60)  # MoDeST records a round when it adopts its aggregate
    assert all(len(node.status()["peers"]) == 2 for node in nodes)
    assert all(node.status()["protocol"] == "modest" for node in nodes)


def test_two_nodes_cannot_share_a_data_dir(tmp_path, threads):
    threads(node_config(tmp_path, rounds=50))
    in_use = f"data dir {tmp_path} is in use by another node (pid {os.getpid()})"
    with pytest.raises(DataDirInUse, match=re.escape(in_use)):
        NodeThread(node_config(tmp_path, rounds=50)).start(timeout=60)


def test_nodes_that_send_int8_models_accept_each_others(tmp_path, threads):
    int8 = {"codec": "int8"}
    first = threads(node_config(tmp_path / "a", index=0, of=2, rounds=4, compression=int8))
    second = threads(
        node_config(tmp_path / "b", index=1, of=2, rounds=4, compression=int8, bootstrap=first.addrs[:1])
    )
    for node in (first, second):
        assert node.wait_for_round(4, timeout=60) == 4
    model_bytes = 4 * (64 * 32 + 32 + 32 * 10 + 10)  # the float32 values of the 64-32-10 MLP
    for node in (first, second):
        status = node.status()
        assert status["models_rejected"] == 0 and status["messages_in"] >= 2
        # int8 is about a quarter of float32; plain msgpack would be over model_bytes per message.
        assert status["bytes_out"] < status["messages_out"] * model_bytes / 2, status


def watched_learner(config, *, fail: bool = False):
    """The configured learner, and an event set once it trains; with `fail`, training raises."""
    learner = build_learner(config)
    training = threading.Event()
    train = learner.train

    def watched(*, steps):
        training.set()
        if fail:
            raise ValueError("training failed")
        return train(steps=steps)

    learner.train = watched
    return learner, training


def test_stopping_a_node_thread_ends_a_long_round_of_training(tmp_path):
    config = node_config(tmp_path, rounds=1, training={"local_steps": 10**9})
    learner, training = watched_learner(config)
    node = NodeThread(config, learner=learner)
    try:
        node.start(timeout=60)
        assert training.wait(60)
    finally:
        node.stop(timeout=60)  # a chunk of training is ~50 ms; the whole round would take days
    assert not node.running
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE).round == 0  # the final checkpoint was written


@asynccontextmanager
async def never_ready(config, *, learner=None):
    """`open_node` that never hands the node over: a start that hangs once the node runs."""
    async with open_node(config, learner=learner) as handle:
        await trio.sleep_forever()
        yield handle


@pytest.mark.parametrize("hang", [True, False], ids=["hanging-start", "no-time-to-start"])
def test_a_start_that_times_out_stops_the_node_and_frees_its_data_dir(tmp_path, threads, monkeypatch, hang):
    with monkeypatch.context() as patch:
        if hang:
            patch.setattr(embed, "open_node", never_ready)
        node = NodeThread(node_config(tmp_path))
        timeout = 2 if hang else 0
        with pytest.raises(TimeoutError, match=f"data dir {re.escape(str(tmp_path))} did not start within"):
            node.start(timeout=timeout)
    assert not node.running
    node.stop()  # nothing left to stop
    assert not (tmp_path / STATUS_FILE).exists()
    assert threads(node_config(tmp_path)).running  # not DataDirInUse: the lock was released


def test_stop_is_a_no_op_before_start_and_once_stopped(tmp_path):
    node = NodeThread(node_config(tmp_path, rounds=50))
    node.stop()
    node.stop()
    try:
        assert node.start(timeout=60).running
    finally:
        node.stop()
    node.stop()
    assert not node.running


def test_an_error_in_the_with_block_is_raised_rather_than_the_nodes(tmp_path, caplog):
    config = node_config(tmp_path)
    learner, _ = watched_learner(config, fail=True)
    with (
        pytest.raises(KeyError, match="the application's own error") as raised,
        NodeThread(config, learner=learner) as node,
    ):
        with pytest.raises(RuntimeError, match="the node stopped at round 0"):
            node.wait_for_round(1, timeout=60)
        raise KeyError("the application's own error")
    (note,) = raised.value.__notes__
    assert note.startswith("stopping the node also failed: RuntimeError('the node stopped with an error')")
    (record,) = [r for r in caplog.records if r.name == embed.__name__ and r.levelno == logging.ERROR]
    assert isinstance(record.exc_info[1].__cause__, ValueError)  # what the node died of


def test_a_node_that_fails_to_stop_outside_an_error_raises_as_stop_does(tmp_path):
    config = node_config(tmp_path)
    learner, _ = watched_learner(config, fail=True)
    with (
        pytest.raises(RuntimeError, match="the node stopped with an error") as raised,
        NodeThread(config, learner=learner) as node,
        pytest.raises(RuntimeError, match="the node stopped at round 0"),
    ):
        node.wait_for_round(1, timeout=60)
    assert isinstance(raised.value.__cause__, ValueError)


def test_wait_for_round_on_a_dead_node_names_what_it_died_of(tmp_path):
    """Its cause was the raw nest of trio ExceptionGroups (five deep), where stop() unwraps it;
    the note on a with block's own error now names it too."""
    config = node_config(tmp_path)
    learner, _ = watched_learner(config, fail=True)
    with pytest.raises(KeyError) as raised, NodeThread(config, learner=learner) as node:
        with pytest.raises(RuntimeError, match="the node stopped at round 0") as waited:
            node.wait_for_round(1, timeout=60)
        assert isinstance(waited.value.__cause__, ValueError), repr(waited.value.__cause__)
        raise KeyError("the application's own error")
    (note,) = raised.value.__notes__
    assert note.endswith("caused by ValueError('training failed')")


def test_waiting_for_a_round_past_the_last_one_raises_once_the_protocol_ends(tmp_path):
    """A node that has run its last round keeps serving, so nothing woke a waiter for a later round:
    NodeThread.wait_for_round(5) of a 3-round node blocked until its timeout (forever without
    one), and so did `await handle.wait_for_round(5)`."""
    with NodeThread(node_config(tmp_path / "thread", rounds=3, period=0.1)) as node:
        with pytest.raises(ProtocolEnded, match="ended at round 3, before round 5"):
            node.wait_for_round(5, timeout=60)
        assert node.running and node.wait_for_round(3, timeout=1) == 3

    async def main():
        async with open_node(node_config(tmp_path / "trio", rounds=3, period=0.1)) as handle:
            with trio.fail_after(60), pytest.raises(ProtocolEnded, match="ended at round 3"):
                await handle.wait_for_round(5)
            with trio.fail_after(1):
                assert await handle.wait_for_round(3) == 3

    trio.run(main)
