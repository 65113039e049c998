"""The node daemon: a libp2p transport, a `Node`, checkpoints and the status server, as one unit.

`open_node(config)` is the composition, for any trio program; `run_daemon(config)` is what
`p2pfl node run` runs: `open_node` plus signal handling and logging. On SIGINT or SIGTERM the
daemon stops within a few seconds, in this order: cancel the node (the protocol and any training
step end), write a final checkpoint, stop the status server, close the transport (connections and
services, capped at 5 s by the transport itself). A second signal during that stop ends the process
at once (exit code `EXIT_FORCED`).

Files in the data dir: ``identity.key`` (the node's libp2p key, hence its peer ID), ``checkpoint.npz``
(model and round, see `p2pfl.daemon.checkpoint`) and, while the daemon runs, ``status.json`` (pid,
peer ID, listen addresses and the status URL; `p2pfl status --data-dir` reads it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import fields, is_dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

import torch
import trio

from gossip.gossip_learning import GossipLearning
from gossip.modest import Modest
from gossip.protocol import RoundProtocol
from p2pfl.aggregation.registry import build_aggregator
from p2pfl.compute import ThreadCompute
from p2pfl.daemon.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    CheckpointError,
    DivergedModel,
    load_checkpoint,
    quarantine,
    save_checkpoint,
)
from p2pfl.daemon.config import GossipProtocolConfig, ModestProtocolConfig, NodeConfig
from p2pfl.daemon.status import StatusServer, StatusUnavailable
from p2pfl.daemon.task import build_learner
from p2pfl.errors import IncompatibleModel, P2PFLError
from p2pfl.learner import Learner
from p2pfl.node import Node, RoundRecord, round_due
from transport.libp2p import Libp2pTransport, open_libp2p_transport

__all__ = [
    "EXIT_FORCED",
    "STATUS_FILE",
    "DataDirInUse",
    "NodeHandle",
    "ProtocolEnded",
    "open_node",
    "run_daemon",
]

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
LOCK_FILE = "lock"
# `p2pfl node run`'s exit code when a second SIGINT/SIGTERM cut its clean stop short (0: a clean
# stop, 1: an error, 2: a bad command line or config).
EXIT_FORCED = 3


class DataDirInUse(P2PFLError):
    """Another node (process or thread) runs with this data dir: its identity and checkpoints."""


class ProtocolEnded(P2PFLError):
    """A round was awaited that the node will not reach: its protocol has run its last round."""


_HISTORY_IN_STATUS = 20  # rounds listed in /status


def _version() -> str:
    try:
        return version("p2pfl-mesh")
    except PackageNotFoundError:
        return "unknown"


class NodeHandle:
    """A running daemon node: its parts, a status document, and waiting for rounds.

    Methods and attributes belong to the trio thread that runs `open_node`; from other threads use
    `NodeThread` (or `trio.from_thread`). `node` is None until the protocol is built (MoDeST with
    ``participants = "discovered"`` waits for peers first).
    """

    def __init__(
        self, config: NodeConfig, transport: Libp2pTransport, learner: Learner, restored: Checkpoint | None
    ) -> None:
        self.config = config
        self.transport = transport
        self.learner = learner
        self.node: Node | None = None
        self.state = "starting"
        self.status_url: str | None = None
        self.resumed_round = restored.round if restored else 0
        self.started_round = self.resumed_round + 1
        self.checkpoint_path = Path(config.data_dir) / CHECKPOINT_FILE
        self.checkpoint_round: int | None = restored.round if restored else None
        self.checkpoint_writes = 0
        self.checkpoint_failures = 0
        self.checkpoint_skipped = 0  # diverged models not written
        self._diverged_round: int | None = None  # the last round whose model was not written for that
        self.checkpoint_error: str | None = None
        self._last_finished = self.resumed_round  # the round before the one `round_finished` reports
        self._restored_info = dict(restored.info) if restored else {}
        self._started_at = time.monotonic()
        self._round_changed = trio.Event()
        self._done = trio.Event()
        self._listeners: list[Callable[[RoundRecord], None]] = []
        self._pending: Checkpoint | None = None
        self._wake_writer = trio.Event()

    # --- queries -------------------------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        return self.transport.peer_id

    @property
    def addrs(self) -> list[str]:
        return self.transport.addrs

    @property
    def round(self) -> int:
        """The last round completed, counting rounds done before a restart."""
        history = self.node.history if self.node else []
        return history[-1].round if history else self.resumed_round

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _wake_round_waiters(self) -> None:
        """Wake every `wait_for_round` to look at the round (and whether the protocol is done) again."""
        event, self._round_changed = self._round_changed, trio.Event()
        event.set()

    async def wait_for_round(self, round: int) -> int:
        """Return the current round once it is >= `round`; `ProtocolEnded` if the protocol ran its
        last round short of it (rounds < `round`, or a MoDeST node left at rounds - 1)."""
        while self.round < round:
            if self.done:
                raise ProtocolEnded(f"the protocol ended at round {self.round}, before round {round}")
            await self._round_changed.wait()
        return self.round

    async def wait_done(self) -> None:
        """Return when the protocol has run its last round."""
        await self._done.wait()

    def add_round_listener(self, listener: Callable[[RoundRecord], None]) -> None:
        """Call `listener(record)` on the trio thread after every round (must not block)."""
        self._listeners.append(listener)

    def status(self) -> dict[str, Any]:
        """The status document that /status serves (JSON-ready)."""
        transport, node = self.transport, self.node
        history = node.history if node else []
        evaluated = [r for r in history if r.accuracy is not None]
        accuracy = evaluated[-1].accuracy if evaluated else self._restored_info.get("accuracy")
        loss = evaluated[-1].loss if evaluated else self._restored_info.get("loss")
        stats = transport.stats
        return {
            "peer_id": transport.peer_id,
            "addrs": transport.addrs,
            "peers": sorted(transport.peers()),
            "state": self.state,
            "protocol": self.config.protocol.name,
            "rounds": self.config.protocol.rounds,
            "round": self.round,
            "started_round": self.started_round,
            "accuracy": accuracy,
            "loss": loss,
            "bytes_in": stats.bytes_received,
            "bytes_out": stats.bytes_sent,
            "messages_in": stats.messages_received,
            "messages_out": stats.messages_sent,
            "messages_rejected": stats.messages_rejected,
            "models_rejected": node.models_rejected if node else 0,
            "reputation": dict(node.aggregator.peer_scores()) if node else {},
            "libp2p": _plain(getattr(transport, "libp2p_stats", None)),
            "banned_peers": {peer: round(left, 1) for peer, left in sorted(transport.banned_peers().items())},
            "checkpoint": {
                "enabled": self.config.checkpoint.enabled,
                "path": str(self.checkpoint_path),
                "round": self.checkpoint_round,
                "writes": self.checkpoint_writes,
                "failures": self.checkpoint_failures,
                "skipped": self.checkpoint_skipped,
                "last_error": self.checkpoint_error,
            },
            "history": [
                {"round": r.round, "accuracy": r.accuracy, "loss": r.loss}
                for r in history[-_HISTORY_IN_STATUS:]
            ],
            "status_url": self.status_url,
            "data_dir": str(self.config.data_dir),
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "version": _version(),
        }

    # --- the node's life -----------------------------------------------------------------------------

    async def _run(self) -> None:
        protocol = await self._build_protocol()
        config = self.config
        self.node = Node(
            self.transport,
            self.learner,
            protocol=protocol,
            aggregator=build_aggregator(config.aggregation.name, **config.aggregation.params),
            local_steps=config.local_steps,
            evaluate_every=config.training.evaluate_every,
            compute=ThreadCompute(),
            observer=self,
            resumed_round=self.resumed_round,
        )
        self.state = "running"
        log.info("protocol started", extra={"protocol": config.protocol.name, "round": self.started_round})
        await self.node.run()
        self.state = "done"
        self._done.set()
        self._wake_round_waiters()  # for a round that will not come: `wait_for_round` raises
        log.info("protocol finished", extra={"round": self.round})
        # Still connected and serving status, but nobody reads the transport any more: drop what
        # arrives rather than let it fill the inbox (and refuse peers as busy).
        async for _ in self.transport.events:
            pass

    async def _build_protocol(self) -> RoundProtocol:
        protocol, transport = self.config.protocol, self.transport
        if isinstance(protocol, GossipProtocolConfig):
            return GossipLearning(
                rounds=protocol.rounds,
                period=protocol.period,
                fanout=protocol.fanout,
                seed=self.config.protocol_seed,
                start_round=self.started_round,
            )
        assert isinstance(protocol, ModestProtocolConfig)
        if protocol.participants == "discovered":
            with trio.move_on_after(protocol.discovery_timeout):
                while protocol.expect_peers == 0 or len(transport.peers()) < protocol.expect_peers:
                    await trio.sleep(0.1)
            participants = {*transport.peers(), transport.peer_id}
        else:
            participants = set()
            for item in protocol.participants:
                if item.startswith("/"):
                    (peer,) = transport.add_peer_addrs([item])
                    participants.add(peer)
                else:
                    participants.add(item)
        log.info("modest participants", extra={"participants": sorted(participants)})
        # A restarted MoDeST node needs no start round: it adopts the current round from the next
        # aggregate it receives. Its model comes from the checkpoint like any node's.
        return Modest(
            rounds=protocol.rounds,
            participants=tuple(sorted(participants)),
            settings=protocol.settings(),
            join_fanout=protocol.join_fanout,
            leave_on_stop=protocol.leave_on_stop,
        )

    def round_finished(self, node: Node, record: RoundRecord) -> None:
        """`RoundObserver`: log the round, queue a checkpoint, wake whoever waits for rounds."""
        log.info(
            "round finished",
            extra={
                "round": record.round,
                "accuracy": record.accuracy,
                "loss": record.loss,
                "peers": len(self.transport.peers()),
                "bytes_out": record.bytes_sent,
                "bytes_in": record.bytes_received,
            },
        )
        checkpoint = self.config.checkpoint
        previous, self._last_finished = self._last_finished, record.round
        if checkpoint.enabled and round_due(record.round, previous, checkpoint.every):
            self._pending = self._snapshot(record.round)
            self._wake_writer.set()
        self._wake_round_waiters()
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:
                log.exception("round listener failed")

    # --- checkpoints ---------------------------------------------------------------------------------

    def _snapshot(self, round: int) -> Checkpoint:
        """The model as it is now (a host copy, so training can go on while it is written)."""
        history = self.node.history if self.node else []
        evaluated = [r for r in history if r.accuracy is not None]
        info = {"peer_id": self.peer_id}
        if evaluated:
            info.update(accuracy=evaluated[-1].accuracy, loss=evaluated[-1].loss)
        elif "accuracy" in self._restored_info:
            info.update(accuracy=self._restored_info["accuracy"], loss=self._restored_info.get("loss"))
        return Checkpoint(
            round=round,
            tensors=self.learner.state().to_numpy(),
            protocol=self.config.protocol.name,
            protocol_state={"round": round},
            info=info,
        )

    def _stop_checkpoint_due(self) -> bool:
        """Whether stopping must write a checkpoint: not once the protocol has ended with its last
        round's checkpoint written, or refused as diverged, since nothing changes the model after
        the last round (a stop after `exit_when_done` or `wait_done` wrote that model a second time,
        or refused it again and counted it twice)."""
        return not (self.done and self.round in (self.checkpoint_round, self._diverged_round))

    async def _write_checkpoints(self) -> None:
        """Write queued checkpoints in a worker thread; only the newest queued one is written."""
        while True:
            await self._wake_writer.wait()
            self._wake_writer = trio.Event()
            checkpoint, self._pending = self._pending, None
            if checkpoint is not None:
                await self._save(checkpoint)

    async def _save(self, checkpoint: Checkpoint) -> None:
        """Write `checkpoint`; a diverged model is skipped (a warning: the model, not the disk, is at
        fault, and the last good checkpoint stays) and a failed write counted as such (an error)."""
        try:
            await trio.to_thread.run_sync(save_checkpoint, self.checkpoint_path, checkpoint)
        except DivergedModel as exc:
            self.checkpoint_skipped += 1
            self._diverged_round = checkpoint.round
            self.checkpoint_error = f"{exc}"
            log.warning(
                "diverged checkpoint not saved; keeping the last good one",
                extra={"round": checkpoint.round, "kept_round": self.checkpoint_round, "error": str(exc)},
            )
        except OSError as exc:
            self.checkpoint_failures += 1
            self.checkpoint_error = f"{exc}"
            log.error("checkpoint failed", extra={"round": checkpoint.round, "error": str(exc)})
        else:
            self.checkpoint_writes += 1
            self.checkpoint_round = checkpoint.round
            log.debug("checkpoint written", extra={"round": checkpoint.round})


def _plain(stats: object) -> dict[str, Any]:
    """A stats dataclass as JSON-ready data (Counters become dicts)."""
    if stats is None or not is_dataclass(stats):
        return {}
    out: dict[str, Any] = {}
    for f in fields(stats):
        value = getattr(stats, f.name)
        out[f.name] = dict(value) if isinstance(value, dict) else value
    return out


def _restore(config: NodeConfig, learner: Learner) -> Checkpoint | None:
    """Load the checkpoint into `learner`; what happens to a bad one is `checkpoint.on_corrupt`."""
    if not config.checkpoint.enabled:
        return None
    path = Path(config.data_dir) / CHECKPOINT_FILE
    try:
        checkpoint = load_checkpoint(path)
        if checkpoint is None:
            log.info("no checkpoint; starting at round 1", extra={"path": str(path)})
            return None
        try:
            learner.load(learner.state().from_numpy(checkpoint.tensors))
        except IncompatibleModel as exc:
            raise CheckpointError(f"checkpoint {path} does not fit the configured model: {exc}") from exc
    except CheckpointError as exc:
        if config.checkpoint.on_corrupt == "refuse":
            raise CheckpointError(
                f'{exc}. Move the file away to start fresh, or set checkpoint.on_corrupt = "fresh"'
            ) from exc
        moved = quarantine(path)
        log.warning(
            "unusable checkpoint moved aside; starting fresh",
            extra={"error": str(exc), "moved_to": str(moved)},
        )
        return None
    if checkpoint.protocol != config.protocol.name:
        log.warning(
            "checkpoint was written by another protocol; resuming its model and round anyway",
            extra={"checkpoint_protocol": checkpoint.protocol, "protocol": config.protocol.name},
        )
    log.info("resuming from checkpoint", extra={"round": checkpoint.round, "path": str(path)})
    return checkpoint


def _snapshot_from_thread(handle: NodeHandle, token: trio.lowlevel.TrioToken) -> dict[str, Any]:
    try:
        return trio.from_thread.run_sync(handle.status, trio_token=token)
    except trio.RunFinishedError:
        raise StatusUnavailable("the node has stopped") from None


@contextlib.contextmanager
def _lock_data_dir(data_dir: Path):  # type: ignore[no-untyped-def]
    """Hold an exclusive lock on the data dir, so two nodes never share a key and a checkpoint."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirInUse(
                f"data dir {data_dir} is in use by another node ({_owner(data_dir)})"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _owner(data_dir: Path) -> str:
    try:
        return f"pid {json.loads((data_dir / STATUS_FILE).read_text())['pid']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


def _remove_own_status_file(status_file: Path) -> None:
    """Remove status.json if this process wrote it (a second daemon refused the data dir did not)."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(status_file.read_text()).get("pid") == os.getpid():
            status_file.unlink()


def _write_json_atomic(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, path)


@asynccontextmanager
async def open_node(config: NodeConfig, *, learner: Learner | None = None) -> AsyncIterator[NodeHandle]:
    """Run a node for the duration of the block; stop it (final checkpoint included) on exit.

    `learner` replaces the configured task (the digits data and MLP) with the application's own model
    and data; checkpoints, protocol and aggregation still follow `config`. The block may end on its
    own, after `handle.wait_done()`, or be cancelled; either way the node is stopped.
    """
    data_dir = Path(config.data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    learner = learner if learner is not None else build_learner(config)
    with _lock_data_dir(data_dir):
        async with _open_node(config, data_dir, learner) as handle:
            yield handle


@asynccontextmanager
async def _open_node(config: NodeConfig, data_dir: Path, learner: Learner) -> AsyncIterator[NodeHandle]:
    restored = _restore(config, learner)
    if config.compression.codec == "topk":
        log.warning(
            "compression topk sends only the largest entries of each model: gossip and MoDeST send whole"
            " models, so peers receive mostly-zero models; prefer int8 or fp16"
        )
    server: StatusServer | None = None
    if config.status.enabled:
        # Bound before the transport opens: a status port in use then fails the start as a plain
        # OSError, not wrapped in the ExceptionGroups of the transport's nurseries. It serves only
        # once `handle`, which the snapshot reads, exists.
        token = trio.lowlevel.current_trio_token()
        server = StatusServer(
            lambda: _snapshot_from_thread(handle, token), host=config.status.host, port=config.status.port
        )
    try:
        async with _open_node_transport(config, data_dir, learner, restored, server) as handle:
            yield handle
    finally:
        if server is not None:
            server.stop()  # closes the socket if the transport never opened; else stopped already


@asynccontextmanager
async def _open_node_transport(
    config: NodeConfig,
    data_dir: Path,
    learner: Learner,
    restored: Checkpoint | None,
    server: StatusServer | None,
) -> AsyncIterator[NodeHandle]:
    """The transport and the node on it; starts `server` (bound already) and stops it before the transport."""
    async with open_libp2p_transport(
        key_dir=data_dir,
        listen=config.listen,
        announce=config.announce,
        bootstrap=config.bootstrap,
        max_connections=config.max_connections,
        handshake_timeout=config.handshake_timeout,
        discovery=config.discovery.enabled,
        discovery_interval=config.discovery.interval,
        discovery_target=config.discovery.target,
        compression=config.compression.transport(),
        penalties=config.penalties.transport(),
    ) as transport:
        handle = NodeHandle(config, transport, learner, restored)
        status_file = data_dir / STATUS_FILE
        try:
            async with trio.open_nursery() as nursery:
                if server is not None:
                    handle.status_url = server.start().url
                _write_json_atomic(
                    status_file,
                    {
                        "pid": os.getpid(),
                        "peer_id": handle.peer_id,
                        "addrs": handle.addrs,
                        "url": handle.status_url,
                        "started_at": time.time(),
                    },
                )
                nursery.start_soon(handle._run)
                if config.checkpoint.enabled:
                    nursery.start_soon(handle._write_checkpoints)
                log.info(
                    "node started",
                    extra={
                        "peer_id": handle.peer_id,
                        "addrs": handle.addrs,
                        "status_url": handle.status_url,
                        "start_round": handle.started_round,
                    },
                )
                try:
                    yield handle
                finally:
                    handle.state = "stopping"
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if config.checkpoint.enabled and handle._stop_checkpoint_due():
                    await handle._save(handle._snapshot(handle.round))
                if server is not None:
                    await trio.to_thread.run_sync(server.stop)
                _remove_own_status_file(status_file)


async def run_daemon(config: NodeConfig) -> None:
    """Run a node until SIGINT or SIGTERM (or, with `exit_when_done`, its last round), then stop it.

    The first signal starts the clean stop (final checkpoint, status server, transport). A second
    one while that runs ends the process at once with exit code `EXIT_FORCED` (see `_force_exit`),
    for an operator who will not wait, instead of trio re-raising it after the stop: a SIGTERM then
    killed the process (143), a SIGINT became a KeyboardInterrupt traceback.

    Signals are handled in trio's main thread, so call this from `trio.run` in the main thread.
    """
    stop_started: float | None = None
    status_file = Path(config.data_dir) / STATUS_FILE
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # The watcher lives outside `open_node`, so it still reads signals while the node stops.
        async with trio.open_nursery() as watcher:
            stop = trio.CancelScope()

            async def watch_signals() -> None:
                nonlocal stop_started
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if stop_started is not None:
                        _force_exit(name, status_file)
                    stop_started = time.monotonic()
                    log.info("stopping; send the signal again to force", extra={"signal": name})
                    stop.cancel()

            with stop:
                async with open_node(config) as handle:
                    watcher.start_soon(watch_signals)
                    if not config.exit_when_done:
                        await trio.sleep_forever()
                    await handle.wait_done()
                    log.info("stopping", extra={"reason": "last round done"})
            elapsed = time.monotonic() - stop_started if stop_started is not None else None
            log.info(
                "stopped",
                extra={"round": handle.round, "stop_s": None if elapsed is None else round(elapsed, 3)},
            )
            watcher.cancel_scope.cancel()


def _force_exit(signal_name: str, status_file: Path) -> NoReturn:
    """End the process now, with `EXIT_FORCED` and one log line.

    The clean stop runs shielded in the main task, and a transport close can take 5 s: only ending
    the process cuts it short. No checkpoint is left half-written: they are replaced atomically (a
    write cut short leaves at most its temp file), so a restart resumes from the last one completed,
    which may not be the final one; the data dir lock goes with the process. status.json is removed,
    as a clean stop does, so that `p2pfl status` does not report a daemon that is gone.
    """
    log.warning(
        "forced stop: second signal during the clean stop",
        extra={"signal": signal_name, "exit_code": EXIT_FORCED},
    )
    _remove_own_status_file(status_file)
    exit_now(EXIT_FORCED)


def exit_now(code: int) -> NoReturn:
    """End the process with `code` once the logs and standard streams are flushed, skipping the
    interpreter's teardown (1-3 s of C-level cleanup with torch loaded, on a busy machine)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
